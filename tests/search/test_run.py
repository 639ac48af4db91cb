"""Profile search end to end on a tiny model: baselines first, pruning, reuse, resuming, and
the messages for bad input. Trials are 18 steps with rungs at 2, 6 and 18 steps."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from helpers import markov_tokens, write_token_dir
from layerwise.cli import main as cli_main
from layerwise.profiles.shape import LayerSpec, ModelShape
from layerwise.profiles.shapefile import write_shape_file
from layerwise.runs.files import read_records
from layerwise.search import objective
from layerwise.search.fidelity import check_fidelity
from layerwise.search.objective import TrialInterrupted
from layerwise.search.plan import BASELINES, SearchPlan
from layerwise.search.run import SearchResult, run_search
from layerwise.search.space import SearchSpace, baseline_params, shape_of
from layerwise.search.study import open_study
from layerwise.training.callbacks.base import Callback, StepRecord, TrainerView
from layerwise.training.trainer import RunInterrupted
from layerwise.util.errors import UserError
from layerwise.util.signals import sigterm_raises

pytestmark = pytest.mark.slow

TINY = """
model:
  n_layers: 4
  d_model: 32
  head_dim: 8
  gqa_group: 2
  ffn_divisor: 16
  vocab_size: null
  match: isotropic
data:
  seq_len: 16
  val_windows: 10
batch:
  global_batch: 8
  micro_batch: 8
optim:
  lr: 3.0e-3
  warmup_steps: 1
train:
  steps: 18
  seed: 3
checkpoint:
  interval: 100
  keep: 1
run:
  device: cpu
  progress: false
"""


def write_config(directory: Path, data: Path, text: str = TINY, name: str = "tiny") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text.replace("data:\n", f"data:\n  dir: {data}\n", 1))
    return path


@pytest.fixture(scope="module")
def searched(
    tmp_path_factory: pytest.TempPathFactory, markov_data: Path
) -> tuple[Path, Path, SearchResult]:
    """An 8-trial search (random sampler): five baselines and three sampled shapes."""
    root = tmp_path_factory.mktemp("search")
    config = write_config(root, markov_data)
    result = run_search(SearchPlan(str(config)), root / "out", 8, sampler="random", seed=0)
    return config, root / "out", result


def trials_of(out: Path) -> list[optuna.trial.FrozenTrial]:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))
    )
    return optuna.load_study(study_name="layerwise-search", storage=storage).trials


def test_the_five_baselines_come_first_and_pruning_happens(
    searched: tuple[Path, Path, SearchResult],
) -> None:
    _, out, result = searched
    trials = trials_of(out)
    assert [t.user_attrs["source"] for t in trials[:5]] == list(BASELINES)
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in trials) >= 1
    # the baselines compete at every rung: successive halving recorded their first rung
    trained = [t for t in trials[:5] if "reused_from" not in t.user_attrs]
    assert trained and all("completed_rung_0" in t.system_attrs for t in trained)
    # the overhead figure counts pruned trials' training as training
    trained = sum(t.user_attrs.get("train_s", 0.0) for t in trials)
    assert result.timing.train_s == pytest.approx(trained)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["source"] for r in rows[:5]] == list(BASELINES)
    assert {"trial", "state", "source", "d_ffn", "heads", "params", "tokens", "val_loss"} <= set(
        rows[0]
    )
    report = (out / "report.md").read_text()
    assert "isotropic" in report and "Compute:" in report
    assert (out / "figures" / "shapes.png").exists() and (out / "figures" / "history.png").exists()


def test_a_repeated_rounded_shape_reuses_its_result(
    searched: tuple[Path, Path, SearchResult],
) -> None:
    config, out, _ = searched
    plan = SearchPlan(str(config))
    study = open_study(plan, out, None, "random", 1, "sha")
    nudged = {
        k: v * 1.001 if isinstance(v, float) else v
        for k, v in baseline_params("isotropic", plan.space, 4).items()
    }
    study.enqueue_trial(nudged)
    result = run_search(plan, out, 9, sampler="random", seed=1, say=print)
    last = result.study.trials[-1]
    assert last.user_attrs["reused_from"] == 0
    assert last.value == result.study.trials[0].value
    assert not (out / "trials" / f"trial-{last.number:04d}").exists()


class SignalAt(Callback):
    """Sends SIGINT to this process at `step` of the run in `run_dir`, as Ctrl-C would."""

    def __init__(self, run_dir: Path, step: int) -> None:
        self.run_dir, self.step = run_dir, step

    def on_step_end(self, trainer: TrainerView, record: StepRecord) -> None:
        if trainer.run_dir == self.run_dir and trainer.state.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_search_resumes_with_no_trial_lost_or_repeated(
    tmp_path: Path, markov_data: Path
) -> None:
    plan = SearchPlan(str(write_config(tmp_path, markov_data)))
    out = tmp_path / "out"
    stop = SignalAt(out / "trials" / "trial-0001", step=10)  # vanilla, in its last rung
    with pytest.raises(RunInterrupted):
        run_search(plan, out, 8, sampler="random", seed=0, callbacks=[stop], say=print)
    run_search(plan, out, 8, sampler="random", seed=0, say=print)
    trials = trials_of(out)
    done = [t for t in trials if t.state.is_finished() and t.state.name != "FAIL"]
    assert len(done) == 8
    resumed = [t for t in trials if t.user_attrs.get("resume_of") == 1]
    assert len(resumed) == 1 and resumed[0].params == trials[1].params
    # the resumed trial continued trial 5's run: its steps after the interruption come once
    records = read_records(out / "trials" / "trial-0001" / "metrics.jsonl")
    steps = [r["step"] for r in records if r["type"] == "train" and r["step"] > 6]
    assert steps.count(11) == 1
    keys = [t.user_attrs["key"] for t in done if "reused_from" not in t.user_attrs]
    assert len(keys) == len(set(keys))


def test_bad_input_gets_clear_messages(
    tmp_path: Path, markov_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, markov_data)
    two_layers = write_config(
        tmp_path, markov_data, TINY.replace("n_layers: 4", "n_layers: 2"), "two"
    )
    with pytest.raises(UserError, match="search space cannot meet the budget with frame=on"):
        run_search(SearchPlan(str(two_layers), space=SearchSpace(frame="on")), tmp_path / "a", 6)
    with pytest.raises(UserError, match="cannot open the database"):
        run_search(SearchPlan(str(config)), tmp_path / "b", 6, "sqlite:////no/such/dir/s.db")
    with pytest.raises(UserError, match="does not exist or is unreachable"):
        run_search(SearchPlan(str(config)), tmp_path / "c", 6, "/no/such/dir/study.journal")
    train_only = write_token_dir(tmp_path / "noval", {"train": markov_tokens(2000, 0)}, 61)
    args = ["search", str(config), f"data.dir={train_only}", "--out", str(tmp_path / "d")]
    assert cli_main(args) == 2
    assert "no validation split" in capsys.readouterr().err


def test_the_cli_continues_a_finished_study_without_training(
    searched: tuple[Path, Path, SearchResult], capsys: pytest.CaptureFixture[str]
) -> None:
    config, out, _ = searched
    assert cli_main(["search", str(config), "--out", str(out), "--trials", "8"]) == 0
    printed = capsys.readouterr().out
    assert "Profile search" in printed and "trials.csv" in printed
    assert cli_main(["search", str(config), "--out", str(out), "--anchors", "3"]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize("damaged", [False, True])
def test_a_search_after_an_interrupted_fidelity_check_reports_it_unfinished(
    searched: tuple[Path, Path, SearchResult], damaged: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """An interrupted --check-fidelity leaves the shapes done so far and no correlations; the
    report says so (a later --check-fidelity finishes it), and a file that is not JSON at all is
    named with the fix."""
    config, out, _ = searched
    partial = {
        "short_steps": 18,
        "long_steps": 54,
        "shapes": {"isotropic": {"short": 4, "long": 3}},
    }
    fidelity = out / "fidelity.json"
    fidelity.write_text("{not json" if damaged else json.dumps(partial))
    try:
        code = cli_main(["search", str(config), "--out", str(out), "--trials", "8"])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if damaged:
            assert code == 2 and str(fidelity) in err and "--check-fidelity" in err
        else:
            assert code == 0
            report = (out / "report.md").read_text()
            assert "unfinished" in report and "after 1 shape(s)" in report
    finally:
        fidelity.unlink()


def test_fidelity_check_reports_rank_correlation(tmp_path: Path, markov_data: Path) -> None:
    plan = SearchPlan(str(write_config(tmp_path, markov_data)), trial_steps=4, rungs=1)
    result = check_fidelity(plan, tmp_path, n_random=1, factor=2, seeds=2, seed=0, say=print)
    assert len(result["shapes"]) == 6 and result["long_steps"] == 8
    assert -1 <= result["spearman"] <= 1 and -1 <= result["kendall"] <= 1
    assert len(result["seed_losses"]) == 2 and np.isfinite(result["seed_std"])


def test_confirm_retrains_the_found_shape_beside_the_baselines(
    tmp_path: Path, markov_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # without pruning, so that a sampled shape finishes: with the baselines in the halving, the
    # tiny fixture search prunes every sampled one
    config, out = write_config(tmp_path, markov_data), tmp_path / "out"
    run_search(SearchPlan(str(config)), out, 6, sampler="random", seed=0, pruner="none")
    args = ["search", str(config), "--out", str(out), "--trials", "6", "--pruner", "none"]
    args += ["--confirm", "1"]
    assert cli_main([*args, "train.steps=6"]) == 2  # a changed experiment is refused
    assert cli_main(args) == 0
    results = list(csv.DictReader((out / "confirm" / "results.csv").open()))
    assert {r["profile"] for r in results} == {*BASELINES, "found-1"}
    assert "found-1" in capsys.readouterr().out


def test_a_sigterm_between_rungs_fails_the_trial_so_the_next_start_runs_it_again(
    tmp_path: Path, markov_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 21.5: a SIGTERM between rungs used to end the search with no message and leave the
    trial RUNNING for good."""
    plan = SearchPlan(str(write_config(tmp_path, markov_data)))
    out = tmp_path / "out"
    real, calls = objective.train, []

    def sigterm_after_the_third_run(config, callbacks=()):  # type: ignore[no-untyped-def]
        summary = real(config, callbacks)
        calls.append(config.run.dir)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return summary

    monkeypatch.setattr(objective, "train", sigterm_after_the_third_run)
    with sigterm_raises(), pytest.raises(TrialInterrupted, match="SIGTERM received between"):
        run_search(plan, out, 6, sampler="random", seed=0, say=print)
    failed = [t for t in trials_of(out) if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and "error" not in failed[0].user_attrs
    monkeypatch.undo()
    run_search(plan, out, 6, sampler="random", seed=0, say=print)
    trials = trials_of(out)
    assert any(t.user_attrs.get("resume_of") == failed[0].number for t in trials)
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]


KILLED_WORKER = """
import os, signal, sys
from pathlib import Path
from layerwise.search.plan import SearchPlan
from layerwise.search.run import run_search
from layerwise.training.callbacks.base import Callback

class KillAt(Callback):
    def on_step_end(self, trainer, record):
        if trainer.run_dir.name == "trial-0005" and trainer.state.step == 10:
            os.kill(os.getpid(), signal.SIGKILL)

run_search(SearchPlan(sys.argv[1]), sys.argv[2], 8, sampler="random", seed=0, pruner="none",
           callbacks=[KillAt()])
"""


def test_a_trial_whose_worker_was_killed_is_run_again_with_its_finished_rungs(
    tmp_path: Path, markov_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21: with journal storage, a trial whose worker died by SIGKILL stayed RUNNING for
    good, and the rungs it had finished were trained again by nobody or from scratch."""
    config, out = write_config(tmp_path, markov_data), tmp_path / "out"
    worker = subprocess.run([sys.executable, "-c", KILLED_WORKER, str(config), str(out)],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert worker.returncode == -signal.SIGKILL, worker.stderr
    killed = trials_of(out)[5]
    assert killed.state == optuna.trial.TrialState.RUNNING
    assert sorted(killed.intermediate_values) == [2, 6]  # two rungs finished before the kill
    real, trained = objective.train, []

    def counting(config, callbacks=()):  # type: ignore[no-untyped-def]
        trained.append((config.run.dir, config.train.steps))
        return real(config, callbacks)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(objective, "train", counting)
        run_search(
            SearchPlan(str(config)), out, 8, sampler="random", seed=0, pruner="none", say=print
        )
    assert "trial 5 was left running" in capsys.readouterr().err
    trials = trials_of(out)
    assert trials[5].state == optuna.trial.TrialState.FAIL and "error" not in trials[5].user_attrs
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    again = [t for t in trials if t.user_attrs.get("resume_of") == 5]
    assert len(again) == 1 and again[0].params == killed.params
    assert {s: again[0].intermediate_values[s] for s in (2, 6)} == killed.intermediate_values
    trial5 = str(out / "trials" / "trial-0005")
    assert [steps for run, steps in trained if run == trial5] == [18], "rungs 1-2 were reused"
    records = read_records(out / "trials" / "trial-0001" / "metrics.jsonl")
    steps = [r["step"] for r in records if r["type"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 18  # each step once, in order


def test_a_continued_search_does_not_propose_the_shapes_it_already_drew(
    tmp_path: Path, markov_data: Path
) -> None:
    """Issue 21: restarted with the same --seed, the sampler drew the same parameters again."""
    plan = SearchPlan(str(write_config(tmp_path, markov_data)))
    out = tmp_path / "out"
    first = run_search(plan, out, 6, sampler="random", seed=0, say=print).study.trials
    later = run_search(plan, out, 7, sampler="random", seed=0, say=print).study.trials
    assert [t.params for t in later[:6]] == [t.params for t in first]
    assert later[6].params != first[5].params
    again = run_search(plan, tmp_path / "again", 6, sampler="random",
                       seed=0, say=print).study.trials  # fmt: skip
    assert [t.params for t in again] == [t.params for t in first], "a new study is reproducible"


def test_a_shape_file_starts_the_search_once_after_the_baselines(
    tmp_path: Path, markov_data: Path
) -> None:
    config = write_config(tmp_path, markov_data)
    shape = ModelShape(
        d_model=32,
        head_dim=8,
        vocab_size=64,
        layers=tuple(LayerSpec(16 * (k + 1), 2, 1) for k in range(4)),
    )
    shape_file = str(write_shape_file(tmp_path / "learned.yaml", "learned", shape, {}, {}))
    plan = SearchPlan(str(config), space=SearchSpace(frame="off"))
    study = open_study(plan, tmp_path / "out", None, "random", 0, "none", [shape_file])
    open_study(plan, tmp_path / "out", None, "random", 0, "none", [shape_file])  # continued
    queued = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]
    assert [t.user_attrs["source"] for t in queued][5:] == ["shape file learned"]
    point = shape_of(queued[5].system_attrs["fixed_params"], plan.space, 4)
    assert point.ffn == pytest.approx([0.5, 1.0, 1.5, 2.0])  # d_ffn / d_model, read back
    assert point.qkv == pytest.approx([0.5] * 4) and not point.frame
