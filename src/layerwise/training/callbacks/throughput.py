"""Mean tokens/s (and MFU) of the whole run, leaving out each process's warm-up steps.

Those include compilation and allocator warm-up, again after each resume, but at most half of
what a process runs is left out, so a short resumed run is still measured. A ratio of totals,
not a mean of per-step rates, so slow steps weigh as much as they cost; the totals of a resumed
run's earlier processes come back through the callback's state.
"""

from __future__ import annotations

from typing import Any, ClassVar

from layerwise.training.callbacks.base import Callback, StepRecord, TrainerView
from layerwise.training.metrics import MfuBasis

THROUGHPUT_WARMUP_STEPS = 10
"""Steps at the start of each process left out of mean throughput (compilation, allocator)."""


class ThroughputMeter(Callback):
    priority: ClassVar[int] = 100

    def __init__(self, mfu: MfuBasis, warmup_steps: int = THROUGHPUT_WARMUP_STEPS) -> None:
        self.mfu = mfu
        self.warmup_steps = warmup_steps
        self.skip = warmup_steps
        self.seen = 0
        self.tokens = 0
        self.seconds = 0.0

    def on_train_start(self, trainer: TrainerView) -> None:
        self.skip = min(self.warmup_steps, (trainer.steps - trainer.state.step) // 2)

    def on_step_end(self, trainer: TrainerView, record: StepRecord) -> None:
        self.seen += 1
        if self.seen > self.skip:
            self.tokens += record.tokens_per_step
            self.seconds += record.step_time_s

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None

    def summary(self) -> dict[str, Any]:
        rate = self.tokens_per_s
        return {"mean_tokens_per_s": rate, "mean_mfu": None if rate is None else self.mfu.mfu(rate)}

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokens, self.seconds = state["tokens"], state["seconds"]
