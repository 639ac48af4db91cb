"""Training on data.sources: per-source validation in metrics.jsonl and summary.json."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import TINY_RUN, kill_after_first_checkpoint, markov_tokens, write_token_dir
from layerwise.cli import main as cli_main
from layerwise.config.loader import config_from_dict
from layerwise.launch import train
from layerwise.runs.files import RunSummary, read_records
from layerwise.runs.listing import list_runs
from layerwise.util.errors import UserError


def tiny(run_dir: Path, data: dict) -> dict:
    sections = {name: dict(body) for name, body in TINY_RUN.items()}
    sections["data"].update(data)
    sections["train"].update(steps=6)
    sections["run"]["dir"] = str(run_dir)
    return sections


def test_one_source_validates_exactly_as_data_dir(markov_data: Path, tmp_path: Path) -> None:
    plain = train(config_from_dict(tiny(tmp_path / "plain", {"dir": str(markov_data)})))
    source = [{"dir": str(markov_data), "weight": 1, "name": "markov"}]
    mixed = train(config_from_dict(tiny(tmp_path / "mixed", {"sources": source})))
    assert mixed.final_val_loss == plain.final_val_loss
    assert mixed.final_val_sources == {
        "markov": {"loss": plain.final_val_loss, "ppl": plain.final_val_ppl}
    }
    records = [r for r in read_records(tmp_path / "mixed" / "metrics.jsonl") if r["type"] == "val"]
    assert all(r["sources"]["markov"]["loss"] == r["loss"] for r in records)
    assert RunSummary.load(tmp_path / "plain" / "summary.json").final_val_sources is None


def test_two_sources_are_validated_each_and_weighted(markov_data: Path, tmp_path: Path) -> None:
    other = write_token_dir(
        tmp_path / "other", {"train": markov_tokens(3000, 7), "val": markov_tokens(400, 8)}, 61
    )
    sources = [{"dir": str(markov_data), "weight": 3}, {"dir": str(other), "weight": 1}]
    summary = train(config_from_dict(tiny(tmp_path / "run", {"sources": sources})))
    per_source = summary.final_val_sources
    assert per_source is not None and set(per_source) == {markov_data.name, "other"}
    weighted = 0.75 * per_source[markov_data.name]["loss"] + 0.25 * per_source["other"]["loss"]
    assert summary.final_val_loss == pytest.approx(weighted, rel=1e-12)
    (status,) = list_runs(tmp_path / "run")
    assert status.val_sources == {name: scores["loss"] for name, scores in per_source.items()}


def test_a_bad_source_exits_2_and_writes_nothing(
    markov_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        f"data: {{sources: [{{dir: {markov_data}, weight: 1}}, {{dir: {tmp_path / 'no'}, weight: 1}}]}}\n"
        f"batch: {{global_batch: 8, micro_batch: 4}}\ntrain: {{steps: 2}}\n"
        f"run: {{dir: {tmp_path / 'run'}, device: cpu}}\n"
    )
    assert cli_main(["train", str(config)]) == 2
    assert "data.sources[1].dir" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_resume_checks_every_source_it_recorded(markov_data: Path, tmp_path: Path) -> None:
    def other(seed: int) -> Path:
        splits = {"train": markov_tokens(3000, seed), "val": markov_tokens(400, 8)}
        return write_token_dir(tmp_path / "other", splits, 61)

    sources = [{"dir": str(markov_data), "weight": 1}, {"dir": str(other(7)), "weight": 1}]
    sections = tiny(tmp_path / "run", {"sources": sources})
    train(config_from_dict(sections))
    assert (tmp_path / "run" / "tokenizer" / "sources" / "other" / "meta.json").is_file()
    sections["run"]["resume"] = "auto"
    assert train(config_from_dict(sections)).steps == 6  # the same data: finished, as it was
    other(9)  # the second source re-prepared with other tokens of the same size
    with pytest.raises(UserError, match=r"cannot resume .*source 'other': split train"):
        train(config_from_dict(sections))


def test_a_mixture_killed_mid_run_resumes_to_the_uninterrupted_losses(
    markov_data: Path, tmp_path: Path
) -> None:
    """kill -9 after a checkpoint, then --resume: the sampler's mixed position was saved."""
    other = write_token_dir(
        tmp_path / "other", {"train": markov_tokens(3000, 7), "val": markov_tokens(400, 8)}, 61
    )
    sources = [{"dir": str(markov_data), "weight": 2}, {"dir": str(other), "weight": 1}]
    sections = tiny(tmp_path / "run", {"sources": sources})
    sections["train"].update(steps=40, val_interval=20)
    sections["checkpoint"].update(interval=5)
    config = tmp_path / "mix.yaml"
    config.write_text(yaml.safe_dump(sections))
    command = [sys.executable, "-m", "layerwise", "train", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run([*command, f"run.dir={reference}"], check=True, env=env, capture_output=True)

    run_dir = tmp_path / "run"
    killed_at = kill_after_first_checkpoint(command, env, run_dir)
    assert killed_at < 40, "the run finished before it could be killed"
    subprocess.run([*command, "--resume"], check=True, env=env, capture_output=True)

    def records(directory: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in read_records(directory / "metrics.jsonl")]

    assert records(run_dir) == records(reference)
