"""A checkpoint every `interval` steps, at the steps in `protect` (kept from pruning), when a
signal stops the run, and at the end.

It asks the trainer for the save, which happens once every callback has handled the step, so
the checkpoint holds every callback's state as of that step.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import ClassVar

from layerwise.training.callbacks.base import Callback, StepRecord, TrainerView


class Checkpointing(Callback):
    priority: ClassVar[int] = -100  # last: it only asks; the save follows every other hook

    def __init__(self, interval: int, keep: int, protect: Collection[int] = ()) -> None:
        self.interval, self.keep, self.protect = interval, keep, frozenset(protect)
        self.saved_step: int | None = None

    def on_train_start(self, trainer: TrainerView) -> None:
        if trainer.resumed:
            self.saved_step = trainer.state.step

    def on_step_end(self, trainer: TrainerView, record: StepRecord) -> None:
        step = trainer.state.step
        if trainer.stop_signal_received or step in self.protect or step % self.interval == 0:
            trainer.request_checkpoint(self.keep, self.protect)

    def on_train_end(self, trainer: TrainerView) -> None:
        if self.saved_step != trainer.state.step:
            trainer.request_checkpoint(self.keep, self.protect)

    def on_checkpoint_saved(self, trainer: TrainerView, path: Path) -> None:
        self.saved_step = trainer.state.step
