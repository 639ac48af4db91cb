"""`layerwise compare` end to end on tiny models: the table, the CSV, the figures, resuming, and
refusing to mix runs of other settings into one comparison."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import MARKOV_VOCAB, PNG_MAGIC, TINY_COMPARE, markov_tokens, write_token_dir
from layerwise.cli import main
from layerwise.compare.cells import plan_cells
from layerwise.compare.run import make_plan, prepare
from layerwise.config.loader import config_value, load_config
from layerwise.profiles.shape import total_params
from layerwise.runs.files import RunSummary, read_records
from layerwise.runs.lock import DirectoryLock
from layerwise.training.shape import config_shape
from layerwise.util.errors import UserError

PROFILES = "isotropic,vanilla,crown"


@pytest.fixture()
def config(tiny_config_file) -> Path:  # type: ignore[no-untyped-def]
    return tiny_config_file(TINY_COMPARE)


def test_compare_writes_the_table_csv_and_figures(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", str(config), "--profiles", PROFILES, "--seeds", "0,1", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| isotropic |" in printed and "| crown |" in printed

    summaries = {
        (p, s): RunSummary.load(out / p / f"seed{s}" / "summary.json")
        for p in PROFILES.split(",")
        for s in (0, 1)
    }
    reference = summaries["isotropic", 0].params
    for summary in summaries.values():
        assert abs(summary.params - reference) <= 0.05 * reference  # matched to isotropic
        assert summary.steps == 12
    # Same seed -> same data order and validation windows for every profile: the step-0
    # validation losses differ only through the model, and all runs saw the same tokens.
    assert len({s.tokens for s in summaries.values()}) == 1

    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["profile"] for r in rows] == PROFILES.split(",")
    for row in rows:
        expected = [summaries[row["profile"], s].final_val_ppl for s in (0, 1)]
        assert float(row["val_ppl_mean"]) == pytest.approx(sum(expected) / 2)
        assert row["seeds"] == "2"
    assert rows[0]["val_ppl_delta_pct"] == ""
    crown_delta = float(rows[2]["val_ppl_delta_pct"])
    assert crown_delta == pytest.approx(
        100 * (float(rows[2]["val_ppl_mean"]) / float(rows[0]["val_ppl_mean"]) - 1)
    )

    report = (out / "report.md").read_text()
    assert "± " in report and "95% Student-t interval" in report
    for name in (
        "train_loss",
        "train_loss_zoom",
        "val_ppl",
        "val_ppl_zoom",
        "allocation",
        "throughput",
    ):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5_000, name
        assert f"figures/{name}.png" in report
    assert "<table>" in (out / "report.html").read_text()

    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report


def test_one_seed_says_the_spread_is_unknown(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", str(config), "--profiles", "isotropic,reverse", "--out", str(out)]) == 0
    assert "one seed only" in (out / "report.md").read_text()


def test_paper_anchors_keep_the_hand_tuned_shapes(config: Path, tmp_path: Path) -> None:
    plan = make_plan(str(config), ["isotropic", "crown"], [0], tmp_path, match=None)
    assert all("model.match=null" in cell.overrides for cell in plan_cells(plan))
    matched = make_plan(str(config), ["isotropic", "crown"], [0], tmp_path, match="isotropic")
    crown = next(cell for cell in plan_cells(matched) if cell.profile == "crown")
    assert "model.match=isotropic" in crown.overrides


def test_bad_requests_fail_before_training(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", str(config), "--profiles", "isotropic,diamond", "--out", str(out)]) == 2
    assert "unknown profile 'diamond'" in capsys.readouterr().err
    assert main(["compare", str(config), "--profiles", "isotropic,crwn", "--out", str(out)]) == 2
    assert "unknown profile 'crwn' (did you mean 'crown'?)" in capsys.readouterr().err
    # A preset brings its own base, which the tiny config contradicts: found before isotropic
    # trains, not after.
    argv = ["compare", str(config), "--profiles", "isotropic,paper-18l-crown", "--out", str(out)]
    assert main(argv) == 2
    assert "paper-18l-crown seed 0 cannot run" in capsys.readouterr().err
    assert not (out / "isotropic").exists()
    assert (
        main(
            [
                "compare",
                str(config),
                "--profiles",
                "crown",
                "--match-params",
                "isotropic",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "not among --profiles" in capsys.readouterr().err
    assert main(["compare", str(config), "--seeds", "0,x", "--out", str(out)]) == 2
    assert not (out / "crown").exists()
    with pytest.raises(UserError, match="not found"):
        make_plan(str(tmp_path / "missing.yaml"), ["crown"], [0], out)


def test_rerun_after_a_kill_finishes_only_the_missing_runs(config: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    command = [
        sys.executable,
        "-m",
        "layerwise",
        "compare",
        str(config),
        "--profiles",
        PROFILES,
        "--out",
        str(out),
        "train.steps=30",
        "checkpoint.interval=5",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = out / "isotropic" / "seed0"
    second = out / "vanilla" / "seed0"
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not list((second / "checkpoints").glob("step_*[0-9]")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert (first / "summary.json").exists(), "the first run should have finished before the kill"
    assert not (second / "summary.json").exists(), "the kill should have hit the second run"
    finished_log = (first / "metrics.jsonl").read_bytes()

    rerun = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=True
    )
    assert "isotropic seed 0: finished earlier, skipped" in rerun.stdout
    assert (first / "metrics.jsonl").read_bytes() == finished_log
    steps = [r["step"] for r in read_records(second / "metrics.jsonl") if r["type"] == "train"]
    assert steps == list(range(1, 31)), "the resumed run's log reads as one run"
    assert all((out / p / "seed0" / "summary.json").exists() for p in PROFILES.split(","))


def short_comparison(config: Path, out: Path, *options: str) -> list[str]:
    """A `compare` command line of 4-step runs, for tests that only need finished runs."""
    return ["compare", str(config), "--out", str(out), "train.steps=4", *options]


@pytest.mark.parametrize(
    ("override", "difference"),
    [("optim.lr=1e-3", "optim.lr: 0.003 -> 0.001"), ("train.steps=6", "train.steps: 4 -> 6")],
)
def test_a_rerun_with_other_settings_is_refused_before_training(
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    override: str,
    difference: str,
) -> None:
    out = tmp_path / "cmp"
    command = short_comparison(config, out, "--profiles", "isotropic,crown")
    assert main(command) == 0
    manifest = (out / "comparison.json").read_text()
    finished = (out / "isotropic" / "seed0" / "summary.json").read_bytes()
    (out / "crown" / "seed0" / "summary.json").unlink()  # crown now looks interrupted
    capsys.readouterr()

    assert main([*command, override]) == 2
    err = " ".join(capsys.readouterr().err.split())
    for cell in ("isotropic seed 0", "crown seed 0"):
        assert f"{cell} ({out / cell.split()[0] / 'seed0'}): {difference}" in err
    assert "new --out" in err and "--rerun-changed" in err
    assert (out / "comparison.json").read_text() == manifest
    assert (out / "isotropic" / "seed0" / "summary.json").read_bytes() == finished
    assert not (out / "crown" / "seed0" / "summary.json").exists()


def test_rerun_changed_retrains_exactly_the_changed_cells(
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "cmp"
    anchors = short_comparison(config, out, "--profiles", "isotropic,crown", "--paper-anchors")
    assert main(anchors) == 0
    reference = (out / "isotropic" / "seed0" / "summary.json").read_bytes()
    capsys.readouterr()

    # Matching budgets changes crown's config (model.match) but not the reference's.
    matched = short_comparison(config, out, "--profiles", "isotropic,crown", "--rerun-changed")
    assert main(matched) == 0
    printed = " ".join(capsys.readouterr().out.split())  # undo the console's line wrapping
    assert "crown seed 0: settings changed (model.match: None -> 'isotropic'): deleted" in printed
    assert "isotropic seed 0: finished earlier, skipped" in printed
    assert "crown seed 0: training" in printed
    assert (out / "isotropic" / "seed0" / "summary.json").read_bytes() == reference
    crown = RunSummary.load(out / "crown" / "seed0" / "summary.json")
    assert crown.budget is not None and crown.budget["target"] > 0
    assert '"match": "isotropic"' in (out / "comparison.json").read_text()


def test_dropping_a_cell_cannot_hide_its_other_settings(
    config: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run left in OUT must still fit the manifest a narrower rerun would write."""
    out = tmp_path / "cmp"
    assert main(short_comparison(config, out, "--profiles", "isotropic,crown")) == 0
    manifest = (out / "comparison.json").read_text()
    capsys.readouterr()

    narrower = short_comparison(config, out, "--profiles", "isotropic", "optim.lr=1e-3")
    assert main([*narrower, "--rerun-changed"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "crown seed 0" in err and "optim.lr: 0.003 -> 0.001" in err
    assert "not in this command's grid" in err
    assert (out / "comparison.json").read_text() == manifest
    assert (out / "isotropic" / "seed0" / "summary.json").exists()


def test_a_cell_is_finished_only_if_its_summary_matches_the_plan(
    config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    assert main(short_comparison(config, out, "--profiles", "isotropic")) == 0
    plan = make_plan(str(config), ["isotropic"], [0], out, overrides=["train.steps=4"])
    [run], _ = prepare(plan, world_size=1, rerun_changed=False)
    assert run.finished_summary() is not None

    path = out / "isotropic" / "seed0" / "summary.json"
    path.write_text(path.read_text().replace(run.finished_summary().config_hash, "0" * 16))
    assert run.finished_summary() is None


VARIANTS = ["--variant", "3l:model.n_layers=3", "--variant", "4l:model.n_layers=4"]


@pytest.fixture(scope="module")
def variant_grid(tmp_path_factory: pytest.TempPathFactory, markov_data: Path) -> Path:
    """2 variants x 2 profiles x 2 seeds, 4 steps each, matched to 4l's isotropic model."""
    root = tmp_path_factory.mktemp("variants")
    config = root / "tiny.yaml"
    config.write_text(TINY_COMPARE.replace("data:\n", f"data:\n  dir: {markov_data}\n", 1))
    argv = ["compare", str(config), "--profiles", "isotropic,crown", "--seeds", "0,1", *VARIANTS]
    steps = ["train.steps=4", "train.val_interval=2"]
    assert main([*argv, "--match-variant", "4l", "--out", str(root / "cmp"), *steps]) == 0
    return root / "cmp"


def test_a_variant_grid_runs_end_to_end(variant_grid: Path) -> None:
    runs = {
        (v, p, s): RunSummary.load(variant_grid / v / p / f"seed{s}" / "summary.json")
        for v in ("3l", "4l")
        for p in ("isotropic", "crown")
        for s in (0, 1)
    }
    assert {len(r.layers) for k, r in runs.items() if k[0] == "3l"} == {3}
    with open(variant_grid / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], r["profile"]) for r in rows] == [
        ("3l", "isotropic"),
        ("3l", "crown"),
        ("4l", "isotropic"),
        ("4l", "crown"),
    ]
    assert rows[2]["verdict"] == "reference"
    for row in rows[:2] + rows[3:]:
        diffs = [
            runs[row["variant"], row["profile"], s].final_val_loss
            - runs["4l", "isotropic", s].final_val_loss
            for s in (0, 1)
        ]
        assert float(row["val_loss_diff"]) == pytest.approx(sum(diffs) / 2)
        assert float(row["val_loss_diff_low"]) < float(row["val_loss_diff"])
        assert row["verdict"] in ("better", "worse", "not distinguishable at 95%")
    report = (variant_grid / "report.md").read_text()
    assert "| 3l | crown |" in report and "4l/isotropic" in report
    png = variant_grid / "figures" / "val_ppl_variants.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and "figures/val_ppl_variants.png" in report


def test_budgets_match_across_variants_within_half_a_percent(
    tiny_config_file, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The study's 12- vs 18-layer case at its width, the variants given as a YAML block: every
    cell is rescaled to the 18-layer isotropic model's parameter count."""
    block = "compare:\n  variants:\n    12l: {model.n_layers: 12}\n    18l: {model.n_layers: 18}\n"
    wide = ["model.d_model=768", "model.head_dim=64", "model.gqa_group=3", "model.ffn_divisor=256"]
    config = tiny_config_file(TINY_COMPARE + block)
    cells = ["isotropic", "crown"], [0], tmp_path
    plan = make_plan(str(config), *cells, overrides=wide, match_variant="18l")
    assert list(plan.variants) == ["12l", "18l"]
    runs, _ = prepare(plan, world_size=1, rerun_changed=False)
    target = total_params(config_shape(runs[2].config, 64)[0])  # 18l isotropic
    for run in runs:
        shape, _ = config_shape(run.config, 64)
        assert abs(total_params(shape) / target - 1) <= 0.005, run.cell.label
    assert {run.config.model.n_layers for run in runs} == {12, 18}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--variant", "a b:model.n_layers=3"], "variant name"),
        (["--variant", "3l"], "NAME:section.key=value"),
        (["--variant", "3l:train.seed=3"], "set by the grid"),
        (["--variant", "3l:model.n_layer=3"], "did you mean 'n_layers'"),
        (["--variant", "3l:model.n_layers=3", "--match-variant", "9l"], "--match-variant"),
        (
            ["--variant", "3l:model.n_layers=3", "--variant", "3l:optim.lr=1e-3"],
            "--variant 3l is given twice",
        ),
    ],
)
def test_bad_variants_fail_before_training(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", str(config), "--profiles", "isotropic", *flags, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--profiles", "isotropic,,crown"), ("--profiles", "crown,"), ("--seeds", "0,,1")],
)
def test_an_empty_name_in_a_list_is_refused(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", str(config), flag, value, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {value!r} has an empty entry" in err and "Traceback" not in err
    assert not out.exists()


def test_fine_tuning_into_the_source_comparison_is_refused(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "cmp"
    steps = ["train.steps=2", "train.val_interval=2", "optim.warmup_steps=0"]
    assert (
        main(["compare", str(config), "--profiles", "isotropic", "--out", str(source), *steps]) == 0
    )
    before = (source / "isotropic" / "seed0" / "summary.json").read_bytes()
    capsys.readouterr()
    for out in (source, source / "isotropic"):
        argv = ["compare", str(config), "--init-from", str(source), "--out", str(out), *steps]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"--out {out}" in err and f"--init-from {source}" in err
        assert "choose another --out" in err and "Traceback" not in err
    assert (source / "isotropic" / "seed0" / "summary.json").read_bytes() == before


def test_fine_tuning_transfer_starts_every_cell_from_its_source(
    variant_grid: Path, tiny_config_file, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    config = tiny_config_file(TINY_COMPARE)
    out = tmp_path / "ft"
    argv = ["compare", str(config), "--init-from", str(variant_grid), "--out", str(out)]
    assert main([*argv, "train.steps=2", "train.val_interval=2", "optim.warmup_steps=0"]) == 0
    saved = load_config(out / "3l" / "crown" / "seed1" / "config.yaml")
    assert saved.init.from_ == str((variant_grid / "3l" / "crown" / "seed1").resolve())
    assert saved.model.n_layers == 3 and saved.model.target_params is not None
    report = (out / "report.md").read_text()
    assert "## Fine-tuning transfer" in report and "| 3l/crown |" in report
    assert main([*argv, "--seeds", "0"]) == 2  # the grid comes from the source


def test_a_comparison_in_use_is_refused_before_any_training(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    with DirectoryLock(out, "comparison"):
        assert main(["compare", str(config), "--profiles", "isotropic", "--out", str(out)]) == 2
    assert f"comparison {out} is in use by pid {os.getpid()}" in capsys.readouterr().err
    assert not out.exists(), "no cell was started, and the lock went with its directory"


@pytest.mark.parametrize("change", ["tokens", "tokenizer"])
def test_a_comparison_refuses_to_mix_runs_of_other_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str
) -> None:
    """Issue 21.2: data re-prepared at the same path (other tokens, or another tokenizer of the
    same size) used to count the old cells as finished and compare them with new ones."""
    data = tmp_path / "data"
    splits = {"train": markov_tokens(4000, 0), "val": markov_tokens(600, 1)}
    write_token_dir(data, splits, MARKOV_VOCAB)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_COMPARE.replace("data:\n", f"data:\n  dir: {data}\n", 1))
    out = tmp_path / "cmp"
    assert main(short_comparison(config, out, "--profiles", "isotropic")) == 0
    if change == "tokens":
        write_token_dir(data, {**splits, "train": markov_tokens(4000, 7)}, MARKOV_VOCAB)
        expected = "data split train: 4,000 tokens, sha256"
    else:
        meta = json.loads((data / "meta.json").read_text())
        meta["tokenizer"]["sha256"] = "f" * 64
        (data / "meta.json").write_text(json.dumps(meta))
        expected = "data tokenizer: test-tokens (sha256 000000000000) -> test-tokens (sha256 ffff"
    capsys.readouterr()
    both = short_comparison(config, out, "--profiles", "isotropic,crown")
    assert main(both) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "isotropic seed 0" in err and expected in err
    assert not (out / "crown").exists(), "nothing was trained"
    assert main([*both, "--rerun-changed"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "isotropic seed 0: settings changed (data" in printed


def test_settings_are_read_by_the_keys_users_write(config: Path) -> None:
    """`init.from` is the field `from_`: naming it in a change used to be an AttributeError."""
    loaded = load_config(config, ["init.from=runs/source"])
    assert config_value(loaded, "init.from") == "runs/source"
    assert config_value(loaded, "optim.lr") == loaded.optim.lr
    nested = load_config(config, ["run.wandb.project=p"])
    assert config_value(nested, "run.wandb.project") == "p"


def test_sigterm_at_any_moment_stops_the_comparison_and_a_rerun_continues(
    config: Path, tmp_path: Path
) -> None:
    """Issue 21.5: SIGTERM between or inside cells stops `compare` with 143 and a message; the
    rerun finishes the comparison without retraining what was done."""
    out = tmp_path / "cmp"
    command = [
        sys.executable,
        "-m",
        "layerwise",
        *short_comparison(config, out, "--profiles", PROFILES),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)  # fmt: skip
    first = out / "isotropic" / "seed0" / "summary.json"
    deadline = time.monotonic() + 120
    while not first.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGTERM)
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM received" in err and "Traceback" not in err
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    assert "isotropic seed 0: finished earlier, skipped" in " ".join(done.stdout.split())
    assert all((out / p / "seed0" / "summary.json").exists() for p in PROFILES.split(","))
