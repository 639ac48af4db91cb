"""Each built-in callback against a small fake trainer that records what it is asked to do:
the callbacks see only the declared surface (`TrainerView`), so a fake with that surface is
all they need."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from layerwise.config.loader import load_config
from layerwise.distributed.env import DistInfo
from layerwise.launch import train
from layerwise.runs.files import METRICS_FILE, read_records
from layerwise.training.callbacks.base import Callback, StepRecord, TrainerView
from layerwise.training.callbacks.checkpointing import Checkpointing
from layerwise.training.callbacks.metrics_log import MetricsLog
from layerwise.training.callbacks.progress import ProgressDisplay
from layerwise.training.callbacks.tensorboard import TensorBoardLog
from layerwise.training.callbacks.throughput import ThroughputMeter
from layerwise.training.callbacks.validation import Validation
from layerwise.training.checkpoint import TrainerState
from layerwise.training.metrics import MfuBasis


@dataclass
class FakeTrainer:
    """The TrainerView surface, with every request recorded."""

    steps: int = 10
    resumed: bool = False
    run_dir: Path = Path(".")
    state: TrainerState = field(default_factory=TrainerState)
    stop_signal_received: bool = False
    evaluations: list[int] = field(default_factory=list)
    checkpoints: list[tuple[int, int, frozenset[int]]] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    logged: list[dict[str, Any]] = field(default_factory=list)
    callbacks: list[Callback] = field(default_factory=list)

    @property
    def is_last_step(self) -> bool:
        return self.state.step == self.steps

    @property
    def model(self) -> torch.nn.Module:
        return torch.nn.Linear(1, 1)

    @property
    def dist(self) -> DistInfo:
        return DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return None

    def evaluate(self) -> float:
        self.evaluations.append(self.state.step)
        return 1.0

    def request_checkpoint(self, keep: int, protect: Collection[int] = ()) -> None:
        self.checkpoints.append((self.state.step, keep, frozenset(protect)))

    def request_stop(self, reason: str) -> None:
        self.stops.append(reason)

    def log(self, record: Mapping[str, Any]) -> None:
        self.logged.append(dict(record))
        for callback in self.callbacks:
            callback.on_log(self, record)

    def run(self, callback: Callback, steps: int | None = None) -> None:
        """Start, step to `steps` (default: the end) and end, as the trainer's loop does."""
        callback.on_train_start(self)
        while self.state.step < (steps or self.steps):
            self.state.step += 1
            self.state.tokens += 64
            callback.on_step_end(self, step_record(self.state.step, self.state.tokens))
        if self.state.step == self.steps:
            callback.on_train_end(self)


def step_record(step: int, tokens: int, seconds: float = 0.5) -> StepRecord:
    return StepRecord(
        step=step,
        loss=2.0,
        lr=1e-3,
        grad_norm=0.5,
        tokens=tokens,
        tokens_per_step=64,
        step_time_s=seconds,
        tokens_per_s=64 / seconds,
        mfu=None,
        peak_mem_mib=1.0,
        time_s=float(step),
    )


def test_validation_runs_at_the_start_every_interval_and_at_the_end() -> None:
    trainer = FakeTrainer(steps=10)
    trainer.run(Validation(interval=4))
    assert trainer.evaluations == [0, 4, 8, 10]


def test_validation_skips_step_zero_when_resumed_past_it() -> None:
    trainer = FakeTrainer(steps=10, resumed=True)
    trainer.state.step = 6
    trainer.run(Validation(interval=4))
    assert trainer.evaluations == [8, 10]


def test_checkpointing_asks_at_intervals_protected_steps_and_the_end() -> None:
    trainer = FakeTrainer(steps=10)
    trainer.run(Checkpointing(interval=4, keep=2, protect={7}))
    assert [step for step, _, _ in trainer.checkpoints] == [4, 7, 8, 10]
    assert all(keep == 2 and protect == {7} for _, keep, protect in trainer.checkpoints)


def test_checkpointing_does_not_save_the_end_twice() -> None:
    trainer = FakeTrainer(steps=8)
    callback = Checkpointing(interval=4, keep=1)
    callback.on_train_start(trainer)
    for step in range(1, 9):
        trainer.state.step = step
        callback.on_step_end(trainer, step_record(step, step * 64))
        if trainer.checkpoints and trainer.checkpoints[-1][0] == step:
            callback.on_checkpoint_saved(trainer, Path(f"step_{step}"))
    callback.on_train_end(trainer)
    assert [step for step, _, _ in trainer.checkpoints] == [4, 8]


def test_checkpointing_saves_when_a_signal_arrived() -> None:
    trainer = FakeTrainer(steps=10, stop_signal_received=True)
    trainer.run(Checkpointing(interval=100, keep=1), steps=3)
    assert [step for step, _, _ in trainer.checkpoints] == [1, 2, 3]


def test_throughput_leaves_out_warmup_and_survives_a_resume() -> None:
    basis = MfuBasis(flops_per_token=1000, peak_flops=64_000.0, note=None)
    meter = ThroughputMeter(basis, warmup_steps=2)
    trainer = FakeTrainer(steps=10)
    meter.on_train_start(trainer)
    for step, seconds in enumerate([9.0, 9.0, 1.0, 1.0, 2.0], start=1):
        meter.on_step_end(trainer, step_record(step, step * 64, seconds))
    assert meter.tokens_per_s == pytest.approx(3 * 64 / 4.0)
    resumed = ThroughputMeter(basis, warmup_steps=2)
    resumed.load_state_dict(json.loads(json.dumps(meter.state_dict())))
    assert resumed.summary() == meter.summary()
    assert meter.summary()["mean_mfu"] == pytest.approx(basis.mfu(3 * 64 / 4.0))


def test_throughput_of_a_short_resumed_segment_keeps_half_its_steps() -> None:
    trainer = FakeTrainer(steps=10)
    trainer.state.step = 6
    meter = ThroughputMeter(MfuBasis(1, None, "cpu"), warmup_steps=10)
    meter.on_train_start(trainer)
    assert meter.skip == 2


def test_metrics_log_writes_every_logged_record_and_truncates_on_resume(tmp_path: Path) -> None:
    (tmp_path / METRICS_FILE).write_text(
        "".join(json.dumps({"type": "train", "step": s}) + "\n" for s in range(1, 7))
    )
    trainer = FakeTrainer(steps=10, resumed=True, run_dir=tmp_path)
    trainer.state.step = 4
    log = MetricsLog(tmp_path)
    trainer.callbacks = [log]
    log.on_train_start(trainer)
    trainer.log({"type": "val", "step": 4, "loss": 1.0})
    trainer.log({"type": "downstream", "step": 4, "tasks": {}})
    log.close()
    records = read_records(tmp_path / METRICS_FILE)
    assert [(r["type"], r["step"]) for r in records] == [
        *[("train", s) for s in range(1, 5)],
        ("val", 4),
        ("downstream", 4),
    ]


def test_progress_display_prints_log_lines_and_validation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    trainer = FakeTrainer(steps=4)
    display = ProgressDisplay(log_interval=2)
    trainer.run(display)
    display.on_evaluation(trainer, {"step": 4, "loss": 1.5, "ppl": 4.48})
    display.close()
    err = capsys.readouterr().err
    assert "step 2/4 | loss 2.0000" in err and "step 4/4" in err and "step 1/4" not in err
    assert "val loss 1.5000 | val ppl 4.48" in err


def test_builtin_priorities_order_the_hooks() -> None:
    """Throughput and the log hear a step first, validation before checkpointing."""
    order = [ThroughputMeter, MetricsLog, ProgressDisplay, Validation, Callback, Checkpointing]
    priorities = [cls.priority for cls in order]
    assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == len(order)


def test_step_record_is_the_metrics_line() -> None:
    record = step_record(3, 192).to_dict()
    assert record["type"] == "train" and record["step"] == 3 and record["tokens"] == 192


class Failing(Callback):
    """Raises at step 3; records the hooks that the trainer calls on the way out."""

    def __init__(self) -> None:
        self.logged: list[str] = []
        self.errors: list[BaseException] = []
        self.closed = False

    def on_log(self, trainer: TrainerView, record: Mapping[str, Any]) -> None:
        self.logged.append(f"{record['type']}:{record['step']}")

    def on_step_end(self, trainer: TrainerView, record: StepRecord) -> None:
        if record.step == 3:
            raise RuntimeError("boom")

    def on_error(self, trainer: TrainerView, error: BaseException) -> None:
        self.errors.append(error)

    def close(self) -> None:
        self.closed = True


def test_the_trainer_logs_through_one_channel_and_reports_errors(tiny_run) -> None:  # type: ignore[no-untyped-def]
    callback = Failing()
    with pytest.raises(RuntimeError, match="boom"):
        train(load_config(tiny_run()), [callback])
    assert callback.logged == ["val:0", "train:1", "train:2", "train:3"]
    assert [str(e) for e in callback.errors] == ["boom"] and callback.closed


def test_tensorboard_log_holds_steps_task_scores_and_the_config(tmp_path: Path) -> None:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    trainer = FakeTrainer(steps=10, run_dir=tmp_path)
    board = TensorBoardLog(tmp_path, "model:\n  profile: crown\n")
    trainer.callbacks = [board]
    board.on_train_start(trainer)
    trainer.log({"type": "train", "step": 1, "loss": 3.5, "mfu": None, "lr": float("nan")})
    scores = {"hellaswag": {"acc": 0.25, "n": 40}, "piqa": {"acc": 0.5, "n": 40}}
    trainer.log({"type": "downstream", "step": 2, "tasks": scores, "tokens": 256})
    board.close()
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {
        "train/loss",
        "downstream/tasks/hellaswag/acc",
        "downstream/tasks/hellaswag/n",
        "downstream/tasks/piqa/acc",
        "downstream/tasks/piqa/n",
        "downstream/tokens",
    }
    (acc,) = events.Scalars("downstream/tasks/piqa/acc")
    assert (acc.step, acc.value) == (2, 0.5)
    (text,) = events.Tensors("config/text_summary")
    assert "profile: crown" in text.tensor_proto.string_val[0].decode()
