"""`layerwise generate`: sampling settings that cannot mean anything are refused by flag, and the
default number of new tokens is what fits in the model's training context after the prompt; more
is generated past it, with a warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import random_run
from layerwise.cli import main
from layerwise.data.tokenizer import train_bpe

CONTEXT = 16
PROMPT = "the quick brown fox"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of a random 2-layer model with a context of CONTEXT tokens and a BPE tokenizer."""
    root = tmp_path_factory.mktemp("generate")
    texts = [f"the quick brown fox jumps over the lazy dog {i}" for i in range(100)]
    train_bpe(300, texts).save(root / "tokenizer.json")
    model = {"n_layers": 2, "d_model": 32, "head_dim": 8, "gqa_group": 2, "ffn_divisor": 16}
    random_run(root / "run", {**model, "vocab_size": 320}, root / "tokenizer.json", CONTEXT)
    return root / "run"


def refused(capsys: pytest.CaptureFixture[str], argv: list[str], *expected: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    for text in expected:
        assert text in captured.err, captured.err
    assert captured.out == "", "nothing is generated (or echoed) before the refusal"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
def test_a_temperature_that_is_not_a_finite_number_at_least_0_is_refused(
    run_dir: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", str(run_dir), "--prompt", PROMPT, f"--temperature={value}"]
    refused(capsys, argv, f"--temperature {value}")


@pytest.mark.parametrize(("flag", "value"), [("--top-k", "5"), ("--top-p", "0.9")])
def test_a_filter_at_temperature_0_is_refused_as_meaningless(
    run_dir: Path, flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", str(run_dir), "--prompt", PROMPT, "--temperature", "0", flag, value]
    refused(capsys, argv, f"{flag} {value}", "greedy")


def test_by_default_as_many_new_tokens_as_fit_are_generated(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", str(run_dir), "--prompt", PROMPT, "--temperature", "0", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert 1 <= len(printed["ids"]) <= CONTEXT - len(printed["prompt_ids"])


def test_asking_for_more_than_fits_generates_past_the_context_with_a_warning(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", str(run_dir), "--prompt", PROMPT, "--max-new-tokens", str(CONTEXT)]
    assert main([*argv, "--temperature", "0", "--json"]) == 0
    captured = capsys.readouterr()
    assert f"run past the model's training context of {CONTEXT} tokens" in captured.err
    assert 1 <= len(json.loads(captured.out)["ids"]) <= CONTEXT


def test_a_prompt_that_fills_the_context_is_refused(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_prompt = " ".join(["the quick brown fox"] * CONTEXT)
    refused(capsys, ["generate", str(run_dir), "--prompt", long_prompt], "shorten --prompt")
