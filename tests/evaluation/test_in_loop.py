"""Downstream evaluation of a trained run: in-loop scores, summary.json, and `layerwise eval`.

A tiny model is trained on a synthetic question-answer text it can learn, with the questions
also written as an ARC-Easy-format task file; it must end well above chance there.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import write_token_dir
from layerwise.cli import main as cli_main
from layerwise.config.loader import load_config
from layerwise.data.tokenizer import train_bpe
from layerwise.launch import train
from layerwise.runs.files import RunSummary, read_records

THINGS = ["apple", "river", "stone", "cloud", "maple", "tiger", "piano", "lemon"]
COLOURS = ["red", "blue", "gray", "white", "orange", "striped", "black", "yellow"]
STEPS, INTERVAL = 120, 40


def question(i: int) -> str:
    return f"What colour is the {THINGS[i]}?"


def write_task(evals: Path) -> None:
    """Each question with its colour and three others, the gold at a rotating position."""
    evals.mkdir()
    with gzip.open(evals / "arc_easy.validation.jsonl.gz", "wt", encoding="utf-8") as file:
        for i in range(len(THINGS)):
            others = [c for c in COLOURS if c != COLOURS[i]][i % 5 : i % 5 + 3]
            choices = [*others[: i % 4], COLOURS[i], *others[i % 4 :]]
            row = {
                "question": question(i),
                "choices": {"text": choices, "label": list("ABCD")},
                "answerKey": "ABCD"[i % 4],
            }
            file.write(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, RunSummary]:
    root = tmp_path_factory.mktemp("downstream")
    docs = [
        f"Question: {question(i)}\nAnswer: {COLOURS[i]}"
        for i in np.random.default_rng(0).integers(0, len(THINGS), 3000)
    ]
    tokenizer = train_bpe(300, docs)
    ids = np.array(
        [t for doc in docs for t in [*tokenizer.tokenizer.encode(doc).ids, tokenizer.eos_id]],
        dtype=np.uint16,
    )
    data = write_token_dir(
        root / "data", {"train": ids[:-2000], "val": ids[-2000:]}, tokenizer.vocab_size
    )
    tokenizer.save(data / "tokenizer.json")
    write_task(root / "evals")
    config = root / "tiny.yaml"
    config.write_text(
        f"""
model: {{profile: isotropic, n_layers: 2, d_model: 32, head_dim: 8, gqa_group: 1,
         ffn_divisor: 16, vocab_size: null}}
data: {{dir: {data}, seq_len: 32, val_windows: 4}}
batch: {{global_batch: 8, micro_batch: 8}}
optim: {{lr: 1.0e-2, warmup_steps: 5}}
train: {{steps: {STEPS}, seed: 0, val_interval: 60}}
checkpoint: {{interval: 1000, keep: 1}}
eval: {{tasks: [arc_easy], interval: {INTERVAL}, dir: {root / "evals"}}}
run: {{device: cpu, progress: false, dir: {root / "run"}}}
"""
    )
    return root / "run", root / "evals", train(load_config(config))


def test_in_loop_scores_at_start_interval_and_end(trained: tuple[Path, Path, RunSummary]) -> None:
    run_dir, _, summary = trained
    records = [r for r in read_records(run_dir / "metrics.jsonl") if r["type"] == "downstream"]
    assert [r["step"] for r in records] == [0, 40, 80, 120]
    assert records[-1]["tokens"] == STEPS * 8 * 32
    assert summary.downstream is not None
    assert summary.downstream["step"] == STEPS
    assert summary.downstream["tasks"] == records[-1]["tasks"]
    assert RunSummary.load(run_dir / "summary.json").downstream == summary.downstream
    scores = summary.downstream["tasks"]["arc_easy"]
    assert scores["chance"] == 0.25 and scores["n"] == 8
    assert scores["acc"] >= 0.75, "the learnable task is scored well above chance"
    assert scores["bpb"] < records[0]["tasks"]["arc_easy"]["bpb"] / 4


def test_cli_eval_json_and_file_match_the_in_loop_scores(
    trained: tuple[Path, Path, RunSummary], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, evals, summary = trained
    argv = ["eval", str(run_dir), "--tasks", "arc_easy", "--evals-dir", str(evals), "--json"]
    assert cli_main([*argv, "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert summary.downstream is not None
    assert printed == {"step": STEPS, "tasks": summary.downstream["tasks"]}
    assert json.loads((run_dir / "eval" / f"step{STEPS}.json").read_text()) == printed


def test_cli_eval_table_shows_the_untrained_score(
    trained: tuple[Path, Path, RunSummary], capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, evals, _ = trained
    argv = ["eval", str(run_dir), "--tasks", "arc_easy", "--evals-dir", str(evals)]
    assert cli_main([*argv, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    records = [r for r in read_records(run_dir / "metrics.jsonl") if r["type"] == "downstream"]
    untrained = records[0]["tasks"]["arc_easy"]["acc"]
    assert "arc_easy" in out
    assert f"│ {100 * untrained:5.1f} │ 8 │" in out, "the step-0 score sits beside n"


def test_cli_eval_bad_input_exits_2(
    trained: tuple[Path, Path, RunSummary], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _, _ = trained
    assert cli_main(["eval", str(run_dir), "--tasks", "arc_eazy"]) == 2
    assert "unknown task 'arc_eazy' (did you mean 'arc_easy'?)" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert cli_main(["eval", str(run_dir), "--evals-dir", str(missing), "--device", "cpu"]) == 2
    assert f"evals directory {missing} not found" in capsys.readouterr().err
