"""The trainer end to end on a tiny model: what a run writes, resuming, signals and divergence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

import layerwise
from helpers import kill_after_first_checkpoint
from layerwise.cli import main as cli_main
from layerwise.config.loader import load_config
from layerwise.config.schema import Config
from layerwise.data.meta import read_meta
from layerwise.distributed.env import DistInfo
from layerwise.launch import train
from layerwise.profiles.shape import total_params
from layerwise.runs.files import read_records
from layerwise.training import step
from layerwise.training.build import with_data_vocab
from layerwise.training.callbacks.base import Callback, TrainerView
from layerwise.training.checkpoint import list_checkpoints
from layerwise.training.metrics import CPU_MFU_NOTE, mfu_basis, peak_tflops
from layerwise.training.shape import config_shape, resolve_vocab_size
from layerwise.training.step import NonFiniteLoss, evaluate
from layerwise.training.trainer import RunInterrupted, setup_run
from layerwise.util.errors import UserError


@pytest.fixture()
def data_dir(markov_data: Path) -> Path:
    return markov_data


@pytest.fixture()
def config_file(tiny_run: Callable[..., Path]) -> Path:
    return tiny_run()


def tiny_config(config_file: Path, *overrides: str) -> Config:
    return load_config(config_file, overrides)


def losses(run_dir: Path, kind: str = "train") -> list[tuple[int, float]]:
    return [
        (r["step"], r["loss"]) for r in read_records(run_dir / "metrics.jsonl") if r["type"] == kind
    ]


def test_a_run_writes_metrics_checkpoints_config_and_summary(config_file: Path) -> None:
    config = tiny_config(config_file)
    summary = layerwise.train(config)
    run_dir = Path(config.run.dir)

    records = read_records(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if r["type"] == "val"] == [0, 5, 10, 12]
    train_records = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in train_records] == list(range(1, 13))
    first = train_records[0]
    assert first["tokens"] == 8 * 16 and first["mfu"] is None and first["tokens_per_s"] > 0
    assert first["lr"] == pytest.approx(1.5e-3)

    assert [step for step, _ in list_checkpoints(run_dir)] == [8, 12]
    assert load_config(run_dir / "config.yaml").model.vocab_size == 64

    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved == summary.to_dict()
    shape, _ = config_shape(with_data_vocab(config), 64)
    assert summary.params == total_params(shape)
    assert summary.layers == [
        {"d_ffn": layer.d_ffn, "n_heads": layer.n_heads, "n_kv_heads": layer.n_kv_heads}
        for layer in shape.layers
    ]
    assert summary.final_val_loss == records[-1]["loss"]
    assert summary.final_train_loss == train_records[-1]["loss"]
    assert summary.mean_mfu is None and summary.mfu_note == CPU_MFU_NOTE
    assert summary.mean_tokens_per_s > 0 and summary.steps == 12 and summary.tokens == 12 * 128
    assert summary.hardware["device_type"] == "cpu"
    assert set(summary.versions) == {"python", "torch", "layerwise"}


def test_same_seed_same_losses_and_reruns_need_resume(config_file: Path, tmp_path: Path) -> None:
    first = train(tiny_config(config_file, "train.steps=4", "checkpoint.interval=2"))
    second = train(
        tiny_config(
            config_file, "train.steps=4", "checkpoint.interval=2", f"run.dir={tmp_path / 'again'}"
        )
    )
    assert losses(Path(first.run_dir)) == losses(Path(second.run_dir))
    with pytest.raises(UserError, match=r"already holds a run.*--resume"):
        train(tiny_config(config_file, "train.steps=4", "checkpoint.interval=2"))
    again = train(
        tiny_config(config_file, "train.steps=4", "checkpoint.interval=2", "run.resume=auto")
    )
    assert again == first
    with pytest.raises(UserError, match=r"optim\.lr"):
        train(tiny_config(config_file, "train.steps=4", "run.resume=auto", "optim.lr=1e-2"))


def send_signal_at_step(monkeypatch: pytest.MonkeyPatch, signum: int, at_step: int) -> None:
    """Deliver `signum` to this process while step `at_step` is running."""
    real = step.forward_backward
    calls = {"n": 0}

    def forward_backward(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == at_step:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(step, "forward_backward", forward_backward)


def test_sigterm_checkpoints_and_resume_matches_an_uninterrupted_run(
    config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = train(tiny_config(config_file, f"run.dir={tmp_path / 'reference'}"))
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        send_signal_at_step(patch, signal.SIGTERM, at_step=6)
        with pytest.raises(RunInterrupted, match=r"SIGTERM.*step 6") as info:
            train(tiny_config(config_file))
    run_dir = Path(tiny_config(config_file).run.dir)
    assert info.value.checkpoint == run_dir / "checkpoints" / "step_000006"
    assert losses(run_dir)[-1][0] == 6
    assert signal.getsignal(signal.SIGTERM) is handler
    resumed = train(tiny_config(config_file, "run.resume=auto"))
    assert losses(run_dir) == losses(Path(reference.run_dir))
    assert losses(run_dir, "val") == losses(Path(reference.run_dir), "val")
    assert resumed.final_val_loss == reference.final_val_loss


def test_cli_exits_with_the_signal_status(
    config_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    send_signal_at_step(monkeypatch, signal.SIGINT, at_step=2)
    assert cli_main(["train", str(config_file)]) == 128 + signal.SIGINT
    assert "SIGINT received: stopped after step 2" in capsys.readouterr().err
    monkeypatch.undo()
    assert cli_main(["train", str(config_file), "--resume"]) == 0
    assert "final val loss" in capsys.readouterr().out


def test_non_finite_loss_names_the_step_and_keeps_the_last_good_checkpoint(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = step.forward_backward
    calls = {"n": 0}

    def diverging(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(step, "forward_backward", diverging)
    config = tiny_config(config_file)
    with pytest.raises(NonFiniteLoss, match="step 7") as diverged:
        train(config)
    run_dir = Path(config.run.dir)
    assert [step for step, _ in list_checkpoints(run_dir)] == [4]
    assert losses(run_dir)[-1][0] == 6
    assert f"{run_dir / 'checkpoints' / 'step_000004'} is the last good checkpoint" in str(
        diverged.value
    )


def test_a_divergence_before_any_checkpoint_says_there_is_none(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = step.forward_backward
    monkeypatch.setattr(step, "forward_backward", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(NonFiniteLoss, match=r"step 1: .*\(no checkpoint was saved yet\)"):
        train(tiny_config(config_file))


def test_resume_after_sigkill_reproduces_the_uninterrupted_losses_exactly(
    config_file: Path, tmp_path: Path
) -> None:
    """A real `python -m layerwise train` process, killed without warning after a checkpoint."""
    settings = ["train.steps=60", "checkpoint.interval=10", "train.val_interval=20"]
    command = [sys.executable, "-m", "layerwise", "train", str(config_file), *settings]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference_dir = tmp_path / "reference"
    subprocess.run([*command, f"run.dir={reference_dir}"], check=True, env=env, capture_output=True)

    run_dir = Path(tiny_config(config_file).run.dir)
    killed_at = kill_after_first_checkpoint(command, env, run_dir)
    assert killed_at < 60, "the run finished before it could be killed"

    subprocess.run([*command, "--resume"], check=True, env=env, capture_output=True)
    assert losses(run_dir) == losses(reference_dir)
    assert losses(run_dir, "val") == losses(reference_dir, "val")
    steps = [r["step"] for r in read_records(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert steps == list(range(1, 61))


def test_vocab_and_shape_come_from_the_config(config_file: Path, data_dir: Path) -> None:
    config = tiny_config(config_file)
    assert resolve_vocab_size(config.model, read_meta(data_dir)) == 64
    explicit = tiny_config(config_file, "model.vocab_size=100")
    assert with_data_vocab(explicit).model.vocab_size == 100
    with pytest.raises(UserError, match="61 ids"):
        with_data_vocab(tiny_config(config_file, "model.vocab_size=32"))

    shape, budget = config_shape(config, 64)
    assert budget is None and shape.n_layers == 3
    vanilla = tiny_config(config_file, "model.profile=vanilla", "model.match=isotropic")
    matched, budget = config_shape(vanilla, 64)
    isotropic, _ = config_shape(tiny_config(config_file, "model.profile=isotropic"), 64)
    assert budget is not None and total_params(matched) == pytest.approx(
        total_params(isotropic), rel=0.01
    )
    _, budget = config_shape(tiny_config(config_file, "model.target_params=40k"), 64)
    assert budget is not None and abs(budget.relative_error) < 0.05
    anchored, _ = config_shape(
        tiny_config(config_file, "model.ffn=[1, 1]", "model.frame=false"), 64
    )
    assert {layer.d_ffn for layer in anchored.layers} == {32}
    with pytest.raises(UserError, match=r"preset with its own base.*n_layers=3"):
        config_shape(tiny_config(config_file, "model.profile=paper-18l-crown"), 64)


def test_evaluation_splits_windows_across_ranks(config_file: Path) -> None:
    config = with_data_vocab(tiny_config(config_file, "data.val_windows=7", "batch.micro_batch=2"))
    cpu = torch.device("cpu")
    run = setup_run(config, DistInfo(0, 0, 1, cpu), None)
    _, windows, indices = run.val_sets[0]
    whole = evaluate(run.model, windows, indices, 2, DistInfo(0, 0, 1, cpu), None)
    parts = [evaluate(run.model, windows, indices, 2, DistInfo(r, r, 2, cpu), None) for r in (0, 1)]
    assert whole == pytest.approx((4 * parts[0] + 3 * parts[1]) / 7, rel=1e-6)


def test_tensorboard_without_the_package_is_a_user_error(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match=r"pip install 'layerwise\[tensorboard\]'"):
        train(tiny_config(config_file, "run.tensorboard=true", "train.steps=3"))


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA A10G", None),
        ("AMD EPYC 7B13", None),
    ],
)
def test_peak_flops_by_device_name(name: str, tflops: float | None) -> None:
    assert peak_tflops(name) == tflops


def test_mfu_needs_a_peak() -> None:
    cpu = torch.device("cpu")
    assert mfu_basis(1000, cpu, 1, None).mfu(1e6) is None
    basis = mfu_basis(6_000_000, cpu, 4, override_tflops=100.0)
    assert basis.note is None
    assert basis.mfu(10_000.0) == pytest.approx(6e6 * 1e4 / 4e14)
    assert replace(basis, peak_flops=None).mfu(1.0) is None


def test_each_run_reports_its_own_peak_memory(config_file: Path) -> None:
    """Runs in one process (a comparison, a search) once reported the maximum of all before."""
    import numpy as np

    from layerwise.training.metrics import peak_memory_mib, reset_peak_memory

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the peak resident memory cannot be reset here")
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    ballast = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
    earlier_peak = peak_memory_mib(cpu)
    del ballast
    summary = train(tiny_config(config_file, "train.steps=3"))
    assert summary.peak_memory_mib is not None
    assert summary.peak_memory_mib < earlier_peak - 200


PINNED_LOSSES = [
    4.146638, 4.162753, 4.152317, 4.155676, 4.155124, 4.130658,
    4.138232, 4.11382, 4.121655, 4.113487, 4.104727, 4.162629,
]  # fmt: skip
"""The tiny run's per-step training losses on CPU (float32, one thread), as measured when the
trainer was reorganised into packages: any change to the model, the data order, the optimizer
or the schedule moves them. The tolerance allows for other CPUs' kernels, not for changes."""


def test_the_tiny_run_reproduces_its_pinned_losses(config_file: Path) -> None:
    config = tiny_config(config_file)
    layerwise.train(config)
    measured = [loss for _, loss in losses(Path(config.run.dir))]
    assert measured == pytest.approx(PINNED_LOSSES, rel=1e-4)


def test_a_second_process_on_a_run_is_refused_and_a_killed_ones_lock_is_taken_over(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21.1: two trainers on one run directory used to corrupt each other's files."""
    settings = ["train.steps=400", "checkpoint.interval=10", "train.val_interval=1000"]
    command = [sys.executable, "-m", "layerwise", "train", str(config_file), *settings]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir = Path(tiny_config(config_file).run.dir)
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list_checkpoints(run_dir) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert cli_main(["train", str(config_file), *settings, "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"run directory {run_dir} is in use by pid {first.pid}" in err
        assert first.poll() is None, "the refused process must not disturb the running one"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert cli_main(["train", str(config_file), "train.steps=400", "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"took over the lock of {run_dir} from pid {first.pid}" in err
    steps = [r["step"] for r in read_records(run_dir / "metrics.jsonl") if r["type"] == "train"]
    assert steps == list(range(1, 401))


class SignalDuringFinalValidation(Callback):
    """Sends SIGTERM to this process while the last step's validation is reported."""

    def on_evaluation(self, trainer: TrainerView, record: Mapping[str, Any]) -> None:
        if trainer.is_last_step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_after_the_last_step_still_stops_the_command(config_file: Path) -> None:
    """Issue 21.5: a SIGTERM during the final validation used to be swallowed, so a comparison
    went on to train every remaining cell."""
    config = tiny_config(config_file)
    with pytest.raises(RunInterrupted) as stopped:
        train(config, [SignalDuringFinalValidation()])
    run_dir = Path(config.run.dir)
    assert stopped.value.signum == signal.SIGTERM and stopped.value.step == 12
    assert list_checkpoints(run_dir)[-1][0] == 12 and not (run_dir / "summary.json").exists()
    summary = train(tiny_config(config_file, "run.resume=auto"))  # the rerun finishes it
    assert summary.steps == 12 and (run_dir / "summary.json").exists()
    assert [s for s, _ in losses(run_dir)] == list(range(1, 13))
