"""The learning of a shape, as a training callback: each step it moves the constraint's target
and, every few steps, records where the width is going; at the fixing step it fixes the gates.
Everything it changes lives in the model's parameters or follows from the step, so a resumed
run continues exactly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any, ClassVar

import torch

from layerwise.learn.supernet import GatedTransformer, kept_shape
from layerwise.training.callbacks.base import Callback, StepRecord, TrainerView

GATES_RECORD = "gates"
"""metrics.jsonl records of the gates' state: `ffn` and `heads` per layer (expected d_ffn and
query heads), `expected` size, `target`, `lambda`; the one at the fixing step has `fixed`."""


class ShapeLearning(Callback):
    priority: ClassVar[int] = 60  # before validation, so the fixing step validates the fixed model

    def __init__(
        self,
        fix_step: int,
        target_at: Callable[[int], float],
        log_interval: int,
    ) -> None:
        self.fix_step = fix_step
        self.target_at = target_at
        self.log_interval = log_interval

    def on_train_start(self, trainer: TrainerView) -> None:
        model = supernet(trainer)
        if trainer.state.step >= self.fix_step:
            model.stop_learning()
        else:
            model.target = self.target_at(trainer.state.step)
            if trainer.state.step == 0:
                trainer.log(gates_record(model, 0))

    def on_step_end(self, trainer: TrainerView, record: StepRecord) -> None:
        model, step = supernet(trainer), trainer.state.step
        if not model.constrained:
            return
        if step == self.fix_step:
            before = gates_record(model, step)
            model.fix()
            kept = [asdict(layer) for layer in kept_shape(model).layers]
            trainer.log({**before, "fixed": True, "kept": kept})
            return
        model.target = self.target_at(step)
        if step % self.log_interval == 0:
            trainer.log(gates_record(model, step))


def supernet(trainer: TrainerView) -> GatedTransformer:
    model = trainer.model
    assert isinstance(model, GatedTransformer), "learn-shape trains a GatedTransformer"
    return model


@torch.no_grad()
def gates_record(model: GatedTransformer, step: int) -> dict[str, Any]:
    """Where the width is going: expected d_ffn and query heads per layer, size and target."""
    ffn, heads = model.expected_units()
    costs = model.costs
    return {
        "type": GATES_RECORD,
        "step": step,
        "expected": float(model.expected_size()),
        "target": model.target,
        "lambda": [float(v) for v in model.lagrange.values],
        "ffn": [float(v) * costs.ffn_channels for v in ffn],
        "heads": [float(v) * costs.group for v in heads],
    }
