"""`layerwise eval`: a tokenizer that does not belong to the run's model is refused by size."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from layerwise.cli import main
from layerwise.data.tokenizer import train_bpe


def write_arc_easy(evals: Path) -> Path:
    evals.mkdir()
    with gzip.open(evals / "arc_easy.validation.jsonl.gz", "wt", encoding="utf-8") as file:
        for i in range(2):
            row = {
                "question": f"What colour is thing {i}?",
                "choices": {"text": ["red", "blue", "gray", "white"], "label": list("ABCD")},
                "answerKey": "AB"[i],
            }
            file.write(json.dumps(row) + "\n")
    return evals


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused_naming_both_sizes(
    tmp_path: Path, tiny_run: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(tiny_run())]) == 0
    run_dir = tmp_path / "run"  # a model of 64 ids (the Markov data's 61, rounded up)
    texts = [f"the quick brown fox jumps over the lazy dog {i}" for i in range(100)]
    foreign = tmp_path / "foreign.json"
    train_bpe(300, texts).tokenizer.save(str(foreign))
    shutil.copyfile(foreign, run_dir / "tokenizer" / "tokenizer.json")
    capsys.readouterr()
    evals = write_arc_easy(tmp_path / "evals")
    argv = [
        "eval",
        str(run_dir),
        "--tasks",
        "arc_easy",
        "--evals-dir",
        str(evals),
        "--device",
        "cpu",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert str(run_dir / "tokenizer" / "tokenizer.json") in err
    assert "300" in err and "64" in err
    assert not (run_dir / "eval").exists()
