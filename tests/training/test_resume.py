"""Run-directory policy end to end: damaged checkpoints, extending runs, starting over."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import (
    CONFIGS,
    MARKOV_VOCAB,
    markov_tokens,
    tiny_run_config,
    train_losses,
    write_token_dir,
)
from layerwise.cli import main as cli_main
from layerwise.config.loader import load_config
from layerwise.launch import train
from layerwise.training import checkpoint as checkpointing
from layerwise.training.checkpoint import CHECKPOINT_DIR, list_checkpoints
from layerwise.training.resume import first_divergence
from layerwise.util.errors import UserError


@pytest.fixture()
def config_file(tiny_run: Callable[..., Path]) -> Path:
    return tiny_run()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, markov_data: Path) -> Path:
    """One finished 12-step run (checkpoints at 8 and 12), copied by the tests that damage it."""
    root = tmp_path_factory.mktemp("finished")
    train(load_config(tiny_run_config(root / "tiny.yaml", markov_data, root / "run")))
    return root


def copy_run(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished run and a config file pointing at it."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished / "run", run_dir)
    text = (finished / "tiny.yaml").read_text().replace(str(finished / "run"), str(run_dir))
    config = tmp_path / "tiny.yaml"
    config.write_text(text)
    return run_dir, config


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damaged", ["__0_0.distcp", "rng_rank0.pt", ".metadata"])
def test_a_damaged_latest_checkpoint_is_skipped_and_the_older_one_resumes_exactly(
    finished_run: Path, tmp_path: Path, damaged: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, config = copy_run(finished_run, tmp_path)
    truncate(run_dir / CHECKPOINT_DIR / "step_000012" / damaged)
    (run_dir / "summary.json").unlink()
    summary = train(load_config(config, ["run.resume=auto"]))
    err = capsys.readouterr().err
    assert f"skipped step_000012: {damaged}" in err
    assert "resuming" in err and "from step 8 (step_000008)" in err
    assert train_losses(run_dir) == train_losses(finished_run / "run")
    assert summary.steps == 12


def test_no_valid_checkpoint_is_a_clear_error_with_exit_2(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, config = copy_run(finished_run, tmp_path)
    truncate(run_dir / CHECKPOINT_DIR / "step_000012" / "__0_0.distcp")
    (run_dir / CHECKPOINT_DIR / "step_000008" / "manifest.json").unlink()
    assert cli_main(["train", str(config), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no usable checkpoint" in err and "Traceback" not in err
    assert "step_000012: __0_0.distcp has" in err and "step_000008: no manifest.json" in err


def test_empty_and_unfinished_checkpoint_directories_are_reported(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, config = copy_run(finished_run, tmp_path)
    root = run_dir / CHECKPOINT_DIR
    (root / "step_000016").mkdir()
    shutil.copytree(root / "step_000012", root / "step_000020.tmp")
    train(load_config(config, ["run.resume=auto"]))
    err = capsys.readouterr().err
    assert "skipped step_000020.tmp: an unfinished save" in err
    assert "skipped step_000016: the directory is empty" in err


def test_resume_without_a_checkpoint_says_it_starts_at_step_0(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that stopped before its first checkpoint leaves a directory to resume from."""
    run_dir = Path(load_config(config_file).run.dir)
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"type": "val", "step": 0, "loss": 4.0}\n')
    train(load_config(config_file, ["run.resume=auto", "train.steps=3"]))
    assert "starting at step 0" in capsys.readouterr().err


def test_a_failed_save_removes_its_temporary_directory_and_keeps_the_previous_checkpoint(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = checkpointing.write_manifest
    calls = {"n": 0}

    def disk_fills_up(path: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path / "manifest.json"))
        real(path)

    monkeypatch.setattr(checkpointing, "write_manifest", disk_fills_up)
    assert cli_main(["train", str(config_file)]) == 2
    err = capsys.readouterr().err
    assert "could not save checkpoint" in err and "No space left on device" in err
    assert "step_000004 is intact" in err and "Traceback" not in err
    run_dir = Path(load_config(config_file).run.dir)
    assert [p.name for p in (run_dir / CHECKPOINT_DIR).iterdir()] == ["step_000004"]
    monkeypatch.undo()
    assert cli_main(["train", str(config_file), "--resume"]) == 0
    assert "from step 4" in capsys.readouterr().err


@pytest.mark.parametrize("schedule", ["constant", "wsd"])
def test_a_finished_run_extends_to_exactly_the_longer_run(
    config_file: Path, tmp_path: Path, schedule: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = [f"optim.schedule={schedule}", "checkpoint.interval=100", "checkpoint.keep=1"]
    longer = train(load_config(config_file, [*settings, f"run.dir={tmp_path / 'longer'}"]))
    short = train(load_config(config_file, [*settings, "train.steps=10"]))
    run_dir = Path(short.run_dir)
    branch = 10 if schedule == "constant" else 8  # WSD's decay starts at step 8 of 10
    assert [step for step, _ in list_checkpoints(run_dir)] == sorted({branch, 10})
    capsys.readouterr()

    extended = train(load_config(config_file, [*settings, "run.resume=auto"]))
    err = capsys.readouterr().err
    assert "length changes from 10 to 12 steps" in err
    assert f"from step {branch}" in err
    assert train_losses(run_dir) == train_losses(Path(longer.run_dir))
    assert extended.final_val_loss == longer.final_val_loss
    if schedule == "wsd":
        assert (run_dir / CHECKPOINT_DIR / "superseded" / "step_000010").is_dir()


def test_a_cosine_run_cannot_be_extended(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, config = copy_run(finished_run, tmp_path)
    assert cli_main(["train", str(config), "--resume", "train.steps=20"]) == 2
    err = capsys.readouterr().err
    assert "no usable checkpoint" in err and "20-step cosine schedule" in err


def test_other_changes_still_refuse_to_resume(finished_run: Path, tmp_path: Path) -> None:
    _, config = copy_run(finished_run, tmp_path)
    with pytest.raises(UserError, match=r"differs .* in optim.lr"):
        train(load_config(config, ["run.resume=auto", "optim.lr=1e-3"]))


def test_schedules_agree_until_the_longer_one_diverges() -> None:
    optim = load_config(CONFIGS / "tiny-base.yaml").optim
    assert first_divergence(optim, 300, 600) == 0  # warmup as a fraction differs at once
    constant = type(optim)(schedule="constant", warmup_steps=5)
    assert first_divergence(constant, 300, 600) == 300
    wsd = type(optim)(schedule="wsd", warmup_steps=5, decay_fraction=0.2)
    assert first_divergence(wsd, 300, 600) == 240


def test_overwrite_starts_over_and_leaves_other_files(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, config = copy_run(finished_run, tmp_path)
    (run_dir / "notes.txt").write_text("mine")
    assert cli_main(["train", str(config), "train.steps=3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["train", str(config), "train.steps=3", "--overwrite"]) == 0
    assert [step for step, _ in train_losses(run_dir)] == [1, 2, 3]
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert cli_main(["train", str(config), "--overwrite", "--resume"]) == 2


def test_overwrite_refuses_a_directory_that_holds_no_run(config_file: Path) -> None:
    run_dir = Path(load_config(config_file).run.dir)
    run_dir.mkdir()
    (run_dir / "data.bin").write_bytes(b"precious")
    with pytest.raises(UserError, match="holds no run"):
        train(load_config(config_file, ["run.overwrite=true"]))
    assert (run_dir / "data.bin").read_bytes() == b"precious"


def test_a_short_resumed_run_still_reports_throughput(config_file: Path) -> None:
    assert train(load_config(config_file, ["train.steps=3"])).mean_tokens_per_s is not None


def markov_data_of(finished: Path) -> Path:
    return Path(load_config(finished / "tiny.yaml").data.dir)


def test_resume_on_changed_data_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run continued on other tokens would mix two data sets in one run, in silence."""
    data = tmp_path / "data"
    splits = {"train": markov_tokens(4000, 0), "val": markov_tokens(600, 1)}
    write_token_dir(data, splits, MARKOV_VOCAB)
    config = tiny_run_config(
        tmp_path / "tiny.yaml", data, tmp_path / "run", {"train": {"steps": 4}}
    )
    assert cli_main(["train", str(config)]) == 0
    write_token_dir(data, {**splits, "val": markov_tokens(600, 9)}, MARKOV_VOCAB)
    capsys.readouterr()
    assert cli_main(["train", str(config), "--resume", "train.steps=8"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{data} is not the data it was trained on (split val: 600 tokens, sha256" in err
    assert list_checkpoints(tmp_path / "run")[-1][0] == 4


def test_resuming_a_copied_run_acts_on_the_copy(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21: `train COPY/config.yaml --resume` used to act on the original (its config.yaml
    records the original's absolute run.dir)."""
    copy = tmp_path / "copy"
    shutil.copytree(finished_run / "run", copy)
    shutil.rmtree(copy / CHECKPOINT_DIR / "step_000012")  # the copy stopped at step 8
    (copy / "summary.json").unlink()
    original = (finished_run / "run" / "metrics.jsonl").read_bytes()
    assert cli_main(["train", str(copy / "config.yaml"), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"acting on {copy}" in err and "from step 8" in err
    assert (finished_run / "run" / "metrics.jsonl").read_bytes() == original
    assert train_losses(copy) == train_losses(finished_run / "run")
