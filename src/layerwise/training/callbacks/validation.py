"""Validation loss on the run's fixed windows: at the start, every `interval` steps, at the end."""

from __future__ import annotations

from typing import ClassVar

from layerwise.training.callbacks.base import Callback, StepRecord, TrainerView


class Validation(Callback):
    priority: ClassVar[int] = 50

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def on_train_start(self, trainer: TrainerView) -> None:
        if trainer.state.step == 0:
            trainer.evaluate()

    def on_step_end(self, trainer: TrainerView, record: StepRecord) -> None:
        if trainer.is_last_step or trainer.state.step % self.interval == 0:
            trainer.evaluate()
