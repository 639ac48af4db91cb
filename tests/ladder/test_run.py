"""`layerwise ladder` end to end on the smoke preset: every budget trained and tabled, a branched
budget equal to an independent run of its length, a killed ladder resumed to the same table, and
the settings a rerun may not change refused before anything trains."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (
    CONFIGS,
    MARKOV_VOCAB,
    kill_after_first_checkpoint,
    markov_tokens,
    write_token_dir,
)
from layerwise.config.loader import load_config
from layerwise.distributed.env import init_distributed
from layerwise.ladder.plan import OLMO_LR, make_ladder_plan
from layerwise.ladder.results import write_ladder_report_of
from layerwise.ladder.run import prepare, run_ladder, sweep_edges, sweep_lr, train_runs
from layerwise.launch import train
from layerwise.profiles.shape import LayerSpec, ModelShape
from layerwise.profiles.shapefile import write_shape_file
from layerwise.training.shape import config_shape
from layerwise.util.errors import UserError

SMOKE = CONFIGS / "ladder-smoke.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough Markov tokens that the smoke ladder's largest run sees each about once."""
    splits = {"train": markov_tokens(60_000, 0), "val": markov_tokens(2_000, 1)}
    return write_token_dir(tmp_path_factory.mktemp("ladder-data"), splits, MARKOV_VOCAB)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """The smoke ladder trained once, uninterrupted: OUT."""
    out = tmp_path_factory.mktemp("ladder") / "out"
    plan = make_ladder_plan(SMOKE, out, [f"data.dir={data}"])
    run_ladder(plan)
    write_ladder_report_of(plan)
    return out


def table(out: Path) -> list[dict[str, str]]:
    with (out / "ladder.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_size_profile_seed_and_budget_is_a_row_at_the_rungs_size(smoke: Path) -> None:
    rows = table(smoke)
    assert len(rows) == 3 * 2 * 2 * 2
    for row in rows:
        assert int(row["D"]) == int(row["steps"]) * 8 * 16  # whole steps of 8 x 16 tokens
        assert float(row["D"]) / float(row["N"]) == pytest.approx(
            float(row["tokens_per_param"]), rel=0.05
        )
    for rung in ("d16", "d32", "d48"):
        at_rung = [row for row in rows if row["rung"] == rung]
        reference = {int(r["N"]) for r in at_rung if r["profile"] == "isotropic"}
        crown = {int(r["N"]) for r in at_rung if r["profile"] == "crown"}
        (n_ref,), (n_crown,) = reference, crown
        assert n_crown == pytest.approx(n_ref, rel=0.01)  # matched by the budget solver
        assert {row["lr"] for row in at_rung} == {"0.003"}


def test_a_branched_budget_equals_an_independent_run_of_its_length(
    smoke: Path, tmp_path: Path
) -> None:
    """The larger budget continued the smaller one's run from its decay start; a fresh run of
    the same config reaches the same loss, so the branch is the run of its length."""
    record = smoke / "d32" / "crown" / "seed1" / "budgets" / "tpp0.5.json"
    config = load_config(record.with_suffix(".yaml"), [f"run.dir={tmp_path / 'fresh'}"])
    fresh = train(config)
    kept = json.loads(record.read_text())["row"]
    assert fresh.final_val_loss == pytest.approx(kept["loss"], rel=1e-6)
    assert fresh.tokens == kept["D"]


def test_a_killed_ladder_resumes_to_the_same_table(smoke: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "layerwise", "ladder", str(SMOKE), f"data.dir={data}"]
    command += ["--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # killed inside the larger budget of a middle size, with earlier runs finished
    kill_after_first_checkpoint(command, env, out / "d32" / "crown" / "seed0")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "finished earlier, skipped" in done.stdout
    resumed = {
        (r["rung"], r["profile"], r["seed"], r["tokens_per_param"]): r["loss"] for r in table(out)
    }
    straight = {
        (r["rung"], r["profile"], r["seed"], r["tokens_per_param"]): r["loss"] for r in table(smoke)
    }
    assert resumed == straight


def test_a_rerun_with_another_setting_is_refused_naming_runs_and_keys(
    smoke: Path, data: Path
) -> None:
    before = (smoke / "ladder.csv").read_bytes()
    plan = make_ladder_plan(SMOKE, smoke, [f"data.dir={data}", "optim.lr=1e-3"])
    with pytest.raises(UserError, match=r"optim\.lr: 0\.003 -> 0\.001") as caught:
        run_ladder(plan)
    assert "d16 isotropic seed 0" in str(caught.value)
    assert (smoke / "ladder.csv").read_bytes() == before


def test_a_smaller_budget_changes_the_warmup_and_is_refused(smoke: Path, data: Path) -> None:
    """The branched runs' warmup is a share of the smallest budget: a new smallest budget
    changes every run, and the refusal says so."""
    plan = make_ladder_plan(SMOKE, smoke, [f"data.dir={data}"], tokens_per_param=[0.1, 0.25, 0.5])
    with pytest.raises(UserError, match=r"optim\.warmup_steps: 3 -> 1(.|\n)*and \d+ more"):
        run_ladder(plan)


def test_a_branched_run_cannot_go_back_to_a_smaller_budget(data: Path, tmp_path: Path) -> None:
    fixed = [f"data.dir={data}", "optim.warmup_fraction=null", "optim.warmup_steps=2"]
    plan = make_ladder_plan(SMOKE, tmp_path, fixed)
    _, runs = prepare(plan, 1)
    first = [p for p in runs if p.run.cell.run_dir == runs[0].run.cell.run_dir]
    train_runs(plan, first, init_distributed("cpu"), lambda *_: None)
    smaller = make_ladder_plan(SMOKE, tmp_path, fixed, tokens_per_param=[0.1, 0.25, 0.5])
    with pytest.raises(UserError, match="cannot go back to a smaller one"):
        prepare(smaller, 1)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"sizes": [16, 32]}, "a scaling law needs at least 3"),
        ({"tokens_per_param": [0.5]}, "one token budget"),
        ({"profiles": ["crown", "vanilla"]}, "the reference 'isotropic' is not trained"),
        ({"sizes": [16, 32, "48y4"]}, "D_MODELxN_LAYERS"),
        ({"targets": ["180M"]}, "PARAMS:TOKENS"),
        ({"lr_sweep": [1.0]}, "at least two multipliers"),
    ],
)
def test_a_ladder_that_cannot_be_fitted_is_refused_before_training(
    data: Path, tmp_path: Path, flags: dict, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        make_ladder_plan(SMOKE, tmp_path / "out", [f"data.dir={data}"], **flags)
    assert not (tmp_path / "out").exists()


def test_an_unknown_profile_is_refused_with_a_hint(data: Path, tmp_path: Path) -> None:
    plan = make_ladder_plan(SMOKE, tmp_path, [f"data.dir={data}"], profiles=["isotropic", "crwn"])
    with pytest.raises(UserError, match="did you mean 'crown'"):
        prepare(plan, 1)


def test_a_shape_file_is_a_profile_named_by_its_shape_at_every_rung(
    data: Path, tmp_path: Path
) -> None:
    shape = ModelShape(
        d_model=32, head_dim=8, vocab_size=64, layers=(LayerSpec(32, 2, 1), LayerSpec(96, 4, 2))
    )
    path = str(write_shape_file(tmp_path / "mine.yaml", "learned", shape, {}, {}))
    plan = make_ladder_plan(
        SMOKE, tmp_path / "out", [f"data.dir={data}"], profiles=["isotropic", path]
    )
    _, runs = prepare(plan, 1)
    learned = [p for p in runs if p.run.profile == "learned"]
    assert learned and all(p.run.cell.run_dir.parts[-2] == "learned" for p in learned)
    for planned in learned:  # two anchors stretched over each rung's depth, matched to isotropic
        assert planned.config.model.ffn == [1.0, 3.0] and planned.config.model.match == "isotropic"
        widths = [layer.d_ffn for layer in config_shape(planned.config, 64)[0].layers]
        assert widths == sorted(widths) and widths[0] < widths[-1]


def test_separate_budgets_are_runs_of_their_own_with_the_configs_schedule(
    data: Path, tmp_path: Path
) -> None:
    plan = make_ladder_plan(SMOKE, tmp_path, [f"data.dir={data}"], schedule="separate")
    _, runs = prepare(plan, 1)
    cell = [p for p in runs if p.run.cell.run_dir.parent.name == "seed0"]
    assert len({p.run.cell.run_dir for p in runs}) == len(runs)
    assert {p.config.optim.schedule for p in cell} == {"cosine"}
    assert {p.config.optim.warmup_fraction for p in cell} == {0.1}


def test_branched_budgets_share_one_run_and_its_warmup(data: Path, tmp_path: Path) -> None:
    plan = make_ladder_plan(SMOKE, tmp_path, [f"data.dir={data}"])
    sizes, runs = prepare(plan, 1)
    for size in sizes:
        mine = [
            p for p in runs if p.run.size == size and p.run.profile == "crown" and p.run.seed == 0
        ]
        assert len({p.run.cell.run_dir for p in mine}) == 1
        assert {p.config.optim.schedule for p in mine} == {"wsd"}
        assert {p.config.optim.warmup_steps for p in mine} == {round(0.1 * size.steps[0])}


def test_the_olmo_rule_sets_each_rungs_lr_from_its_n(data: Path, tmp_path: Path) -> None:
    plan = make_ladder_plan(SMOKE, tmp_path, [f"data.dir={data}"], lr_rule="olmo")
    sizes, runs = prepare(plan, 1)
    scale, at = OLMO_LR
    for size in sizes:
        assert size.lr == pytest.approx(scale * (size.n / at) ** (-1 / 3))
        assert all(p.config.optim.lr == pytest.approx(size.lr) for p in runs if p.run.size == size)
    assert sizes[0].lr > sizes[-1].lr


def test_the_lr_sweep_picks_each_profiles_best_multiplier(data: Path, tmp_path: Path) -> None:
    plan = make_ladder_plan(SMOKE, tmp_path, [f"data.dir={data}"], lr_sweep=[0.1, 1.0, 3.0])
    sizes, _ = prepare(plan, 1)
    best = sweep_lr(plan, sizes[0], init_distributed("cpu"), lambda *_: None)
    saved = json.loads((tmp_path / "lr-sweep" / "sweep.json").read_text())
    assert saved["best"] == best
    for profile, losses in saved["losses"].items():
        assert set(losses) == {"0.1", "1", "3"}
        assert best[profile] == float(min(losses, key=losses.get))
    # a rerun plans the main runs at the LR the sweep chose, so their records are not refused
    _, runs = prepare(plan, 1)
    for planned in runs:
        wanted = planned.run.size.lr * best[planned.run.profile]
        assert planned.config.optim.lr == pytest.approx(wanted)
    edges = sweep_edges(plan, {"crown": 3.0, "isotropic": 1.0})
    assert len(edges) == 1 and "crown" in edges[0] and "widen" in edges[0]


def test_ladder_report_rebuilds_the_table_and_report_from_the_runs(smoke: Path) -> None:
    from layerwise.cli import main

    (smoke / "ladder.csv").unlink()
    (smoke / "report.md").unlink()
    assert main(["ladder", "report", str(smoke)]) == 0
    assert len(table(smoke)) == 24
    report = (smoke / "report.md").read_text()
    assert "How the ladder was trained" in report
    assert "| d48 | crown |" in report


def test_the_cli_refuses_a_changed_setting_with_exit_2(
    smoke: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from layerwise.cli import main

    code = main(["ladder", str(SMOKE), f"data.dir={data}", "--out", str(smoke), "--optim.lr=1e-3"])
    assert code == 2
    assert "optim.lr: 0.003 -> 0.001" in capsys.readouterr().err


def test_plan_ladder_prints_every_size_and_the_total(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from layerwise.cli import main

    assert main(["plan", str(SMOKE), "--ladder", f"data.dir={data}", "--mfu", "0.5"]) == 0
    text = capsys.readouterr().out
    assert all(f"| d{d} |" in text for d in (16, 32, 48))
    assert "at 50% MFU" in text and "FLOPs" in text


def test_plan_ladder_plans_a_preset_whose_data_is_not_here(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from layerwise.cli import main

    assert main(["plan", str(CONFIGS / "ladder-gpu.yaml"), "--ladder"]) == 0
    text = capsys.readouterr().out
    assert "| d192x6 | 12,021,696 |" in text and "| d960x18 |" in text
