"""Rank 0 mirrors every logged record to TensorBoard (`run.tensorboard=true`).

It hears the same channel as the metrics log (`on_log`): steps, validation and downstream
scores. Nested records (a downstream record's per-task scores) are flattened into tags such as
`downstream/tasks/hellaswag/acc`, so every number the log holds has a curve. The resolved config
is written once as text, so the board says what each run was.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from layerwise.training.callbacks.base import Callback, TrainerView
from layerwise.util.errors import UserError

TENSORBOARD_DIR = "tensorboard"


def scalars(record: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, float]]:
    """Every finite number in `record` (nested mappings included) as (`prefix/key/...`, value)."""
    for key, value in record.items():
        tag = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            yield from scalars(value, tag)
        elif (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ):
            yield tag, float(value)


def record_scalars(record: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """A logged record's numbers tagged by its type (`val/loss`, `downstream/tasks/piqa/acc`):
    the names TensorBoard and W&B both show."""
    body = {k: v for k, v in record.items() if k not in ("type", "step")}
    return scalars(body, str(record["type"]))


class TensorBoardLog(Callback):
    priority: ClassVar[int] = 89  # beside the metrics log, before anything else logs

    def __init__(self, run_dir: Path, config_text: str) -> None:
        self.run_dir, self.config_text = run_dir, config_text
        self.writer: Any = None

    def on_train_start(self, trainer: TrainerView) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "run.tensorboard=true needs the tensorboard package: "
                "pip install 'layerwise[tensorboard]' (or set run.tensorboard=false)"
            ) from None
        self.writer = SummaryWriter(log_dir=os.fspath(self.run_dir / TENSORBOARD_DIR))
        self.writer.add_text("config", f"```yaml\n{self.config_text}\n```", trainer.state.step)

    def on_log(self, trainer: TrainerView, record: Mapping[str, Any]) -> None:
        if self.writer is None:
            return
        for tag, value in record_scalars(record):
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
