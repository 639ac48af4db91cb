"""`learn-shape` end to end on the tests' tiny run: the constraint lands the expected size, the
shape file goes wherever a profile goes, a killed run resumes exactly, bad targets are refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import PNG_MAGIC, kill_after_first_checkpoint, tiny_run_config
from layerwise.cli import main
from layerwise.compare.cells import plan_cells
from layerwise.compare.run import make_plan, run_comparison
from layerwise.config.loader import load_config
from layerwise.learn.confirm import learned_comparison
from layerwise.learn.report import write_learn_report
from layerwise.learn.run import RUN_DIR, gates_records, learn_shape, make_learn_plan
from layerwise.profiles.shape import total_params
from layerwise.runs.files import read_records
from layerwise.training.build import with_data_vocab
from layerwise.training.shape import config_shape
from layerwise.util.errors import UserError

LEARN = {"gate_lr": 0.2, "log_interval": 5}
"""Faster gates than the default: the tiny run has 56 gated steps, a real one hundreds."""


def learn_config(tmp_path: Path, markov_data: Path, steps: int, **learn: object) -> Path:
    changes = {
        "model": {"profile": "isotropic"},
        "train": {"steps": steps, "val_interval": 20},
        "checkpoint": {"interval": 10, "keep": 3},
        "learn": {**LEARN, **learn},
    }
    return tiny_run_config(tmp_path / "learn.yaml", markov_data, tmp_path / "unused", changes)


def test_the_constraint_lands_the_size_and_the_shape_goes_wherever_a_profile_goes(
    tmp_path: Path, markov_data: Path
) -> None:
    config = learn_config(tmp_path, markov_data, steps=80)
    plan = make_learn_plan(config, tmp_path / "out")
    own, _ = config_shape(with_data_vocab(load_config(config)), plan.supernet.vocab_size)
    assert plan.target == total_params(own) and plan.fix_step == 56
    learned = learn_shape(plan)

    assert abs(learned.expected_at_fix - plan.target) / plan.target < 0.01
    assert abs(learned.landed.relative_error) < 0.01
    for layer in learned.kept.layers:
        assert layer.d_ffn % 16 == 0 and layer.n_heads == 2 * layer.n_kv_heads
    records = gates_records(plan.out / RUN_DIR)
    assert [r["step"] for r in records][:3] == [0, 5, 10] and records[-1].get("fixed")

    # the file trains its widths exactly, on the config's base, under any command
    shape_file = str(learned.shape_file)
    trained = with_data_vocab(load_config(config, [f"model.profile={shape_file}"]))
    assert config_shape(trained, plan.supernet.vocab_size)[0] == learned.landed.shape
    comparison = make_plan(str(config), ["isotropic", shape_file], [0], tmp_path / "cmp")
    assert comparison.profiles == ("isotropic", "learned")
    cell = next(c for c in plan_cells(comparison) if c.axes["profile"] == "learned")
    assert cell.run_dir.parent.name == "learned" and "model.profile=isotropic" in cell.overrides
    assert main(["profile", "show", shape_file]) == 0

    report = write_learn_report(plan, learned)
    assert "expected size at fixing" in report.read_text()
    for figure in ("shapes.png", "gates.png"):
        assert (plan.out / figure).read_bytes().startswith(PNG_MAGIC)


TIMING = ("step_time_s", "tokens_per_s", "time_s", "mfu", "peak_mem_mib")


def test_a_killed_run_resumes_to_exactly_the_uninterrupted_shape(
    tmp_path: Path, markov_data: Path
) -> None:
    config = learn_config(tmp_path, markov_data, steps=40)  # gates fixed at step 28
    command = [sys.executable, "-m", "layerwise", "learn-shape", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run([*command, "--out", str(reference)], check=True, env=env, capture_output=True)
    step = kill_after_first_checkpoint([*command, "--out", str(killed)], env, killed / RUN_DIR)
    assert step < 28, "killed after the gates were fixed: the test would not cross the fix"
    subprocess.run(
        [*command, "--out", str(killed), "--resume"], check=True, env=env, capture_output=True
    )

    def history(out: Path) -> list[dict]:
        """Every record of the run, losses and gates alike, without its timings."""
        records = read_records(out / RUN_DIR / "metrics.jsonl")
        return [{k: v for k, v in r.items() if k not in TIMING} for r in records]

    assert history(killed) == history(reference)
    assert (killed / "learned-shape.yaml").read_text().replace(str(killed), "") == (
        reference / "learned-shape.yaml"
    ).read_text().replace(str(reference), "")


def test_targets_out_of_reach_and_changed_settings_are_refused(
    tmp_path: Path, markov_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = learn_config(tmp_path, markov_data, steps=4)
    out = str(tmp_path / "out")
    assert main(["learn-shape", str(config), "--out", out, "--target-params", "10M"]) == 2
    assert "above the supernet's 50,544" in capsys.readouterr().err
    assert main(["learn-shape", str(config), "--out", out, "--target-params", "4000"]) == 2
    assert "below the embedding and LM head alone (4,096" in capsys.readouterr().err
    with pytest.raises(UserError, match="not both"):
        make_learn_plan(config, out, ["learn.target_params=40k", "learn.target_flops=1M"])

    learn_shape(make_learn_plan(config, out, ["learn.fix_at=0.5"]))
    changed = make_learn_plan(
        config, out, ["learn.fix_at=0.5", "learn.gate_lr=0.1", "run.resume=auto"]
    )
    with pytest.raises(UserError, match=r"other settings.*gate_lr"):
        learn_shape(changed)


def test_confirm_retrains_the_learned_shape_beside_the_five_and_answers_plainly(
    tmp_path: Path, markov_data: Path
) -> None:
    config = learn_config(tmp_path, markov_data, steps=10)
    four_layers = ["model.n_layers=4"]  # the framed shapes need room beside their frames
    plan = make_learn_plan(config, tmp_path / "out", four_layers)
    learned = learn_shape(plan)
    with pytest.raises(UserError, match="at least 2 seeds"):
        learned_comparison(plan, learned, [0])
    comparison = learned_comparison(plan, learned, [0, 1])
    assert comparison.profiles == ("isotropic", "vanilla", "framed", "reverse", "crown", "learned")
    for cell in plan_cells(comparison):
        assert f"model.target_params={plan.target}" in cell.overrides
    summaries = run_comparison(comparison)
    assert all(abs(s.params - plan.target) / plan.target < 0.05 for s in summaries)
    text = write_learn_report(plan, learned).read_text()
    assert re.search(r"Did the learned shape beat isotropic at 95%\? (yes|no)\.", text)
    assert "## Retrained from scratch" in text and "learned" in text.split("## Retrained")[1]
