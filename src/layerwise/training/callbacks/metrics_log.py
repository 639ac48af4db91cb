"""Rank 0 appends every logged record to metrics.jsonl (TensorBoard is `tensorboard`).

It hears steps, validation and downstream scores through the one channel, `on_log`. A resumed
run first drops the records after its checkpoint, so the log reads as one uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from layerwise.runs.files import METRICS_FILE
from layerwise.training.callbacks.base import Callback, TrainerView
from layerwise.training.metrics import MetricsWriter, truncate_log


class MetricsLog(Callback):
    priority: ClassVar[int] = 90  # open before any other callback logs at the start

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.writer: MetricsWriter | None = None

    def on_train_start(self, trainer: TrainerView) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        truncate_log(self.run_dir / METRICS_FILE, trainer.state.step if trainer.resumed else -1)
        self.writer = MetricsWriter(self.run_dir)

    def on_log(self, trainer: TrainerView, record: Mapping[str, Any]) -> None:
        if self.writer is not None:
            self.writer.write(dict(record))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
