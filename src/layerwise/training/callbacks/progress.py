"""Rank 0's stderr: a progress bar (step, loss, tokens/s, ETA) and a line per log interval."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from layerwise.training.callbacks.base import Callback, StepRecord, TrainerView


class ProgressDisplay(Callback):
    priority: ClassVar[int] = 80  # started before validation prints its first line

    def __init__(self, log_interval: int) -> None:
        self.log_interval = log_interval
        self.console = Console(stderr=True, highlight=False)
        self.progress = Progress(
            TextColumn("step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task: Any = None

    def on_train_start(self, trainer: TrainerView) -> None:
        self.task = self.progress.add_task(
            "train", total=trainer.steps, completed=trainer.state.step, loss="-", speed="-"
        )
        self.progress.start()

    def on_step_end(self, trainer: TrainerView, record: StepRecord) -> None:
        self.progress.update(
            self.task,
            completed=record.step,
            loss=f"{record.loss:.4f}",
            speed=f"{record.tokens_per_s:,.0f}",
        )
        if trainer.is_last_step or record.step % self.log_interval == 0:
            mfu = "" if record.mfu is None else f" | mfu {record.mfu:.1%}"
            self.print(
                f"step {record.step:>{len(str(trainer.steps))}}/{trainer.steps} | loss "
                f"{record.loss:.4f} | lr {record.lr:.2e} | grad norm "
                f"{record.grad_norm:.3f} | {record.tokens_per_s:,.0f} tok/s{mfu}"
            )

    def on_evaluation(self, trainer: TrainerView, record: Mapping[str, Any]) -> None:
        self.print(
            f"step {record['step']} | val loss {record['loss']:.4f} | val ppl {record['ppl']:.2f}"
        )

    def close(self) -> None:
        self.progress.stop()

    def print(self, text: str) -> None:
        self.console.print(text, markup=False)
