"""What a callback is, and what it may use of the trainer.

The loop in `layerwise.training.trainer` only steps the optimizer; everything else a run does on
the way (validation, checkpoints, the metrics log, the progress display, throughput) is a
`Callback` reacting to its events, and so is whatever a user or a capability adds (downstream
evaluation, pruning an unpromising trial, exporting on every save).

A callback sees the trainer only through `TrainerView`, a declared surface, so the trainer's
internals can change without breaking callbacks, and a callback can be tested against a small
fake. Records reach every callback through one channel: `trainer.log(record)` calls `on_log`
on each, which is how the metrics log hears validation and downstream scores alike.

Hooks run in order of `priority` (higher first; equal priorities keep the order given). A
callback with state (counters, best scores) returns it from `state_dict`; it is saved in every
checkpoint under the callback's `name` and given back through `load_state_dict` before
`on_train_start` when the run resumes, so a resumed run's callbacks continue exactly.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

    from layerwise.distributed.env import DistInfo
    from layerwise.training.checkpoint import TrainerState


@dataclass(frozen=True)
class StepRecord:
    """One optimizer step as metrics.jsonl records it (`to_dict`, `"type": "train"`)."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int
    tokens_per_step: int
    step_time_s: float
    tokens_per_s: float
    mfu: float | None
    peak_mem_mib: float
    time_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"type": "train", **asdict(self)}


class TrainerView(Protocol):
    """The part of the trainer a callback may use; every rank has one."""

    @property
    def state(self) -> TrainerState:
        """Step, tokens and last losses so far (read; the trainer updates it)."""

    @property
    def steps(self) -> int:
        """The run's last step."""

    @property
    def is_last_step(self) -> bool: ...

    @property
    def resumed(self) -> bool:
        """Whether this process continued a checkpoint rather than starting at step 0."""

    @property
    def stop_signal_received(self) -> bool:
        """SIGINT/SIGTERM arrived during the last step: the run stops after this event."""

    @property
    def run_dir(self) -> Path: ...

    @property
    def model(self) -> nn.Module:
        """The model as trained (wrapped by DDP/FSDP/compile where the run uses them)."""

    @property
    def dist(self) -> DistInfo: ...

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The autocast dtype of the run (None: float32), for scoring in the same precision."""

    def evaluate(self) -> float:
        """Validation loss now; logged as a `"type": "val"` record and heard by `on_evaluation`."""

    def request_checkpoint(self, keep: int, protect: Collection[int] = ()) -> None:
        """Save once every callback has handled the current event."""

    def request_stop(self, reason: str) -> None:
        """End the run cleanly after the current step (checkpoint and summary included)."""

    def log(self, record: Mapping[str, Any]) -> None:
        """Hand `record` (with `type` and `step`) to every callback's `on_log`."""


class Callback:
    """Hooks the loop calls; override the ones you need. Every rank calls every hook.

    - `on_train_start`: the model, optimizer and data are ready (resumed, if resuming);
    - `on_step_end`: after each optimizer step, with its `StepRecord`;
    - `on_evaluation`: after each validation pass, with its record;
    - `on_log`: any record for the metrics log (steps, validation, downstream scores);
    - `on_checkpoint_saved`: after a checkpoint is complete on disk;
    - `on_train_end`: after the last step (or a stop request), before the summary is written;
    - `on_error`: the run is leaving by an exception (a signal's `RunInterrupted` included);
    - `close`: always, last, to release files and displays.
    """

    priority: ClassVar[int] = 0
    """Hooks of higher priority run first; the built-ins leave user callbacks between
    validation (which they may read) and checkpointing (which saves their state)."""

    @property
    def name(self) -> str:
        """Key of this callback's state in checkpoints; unique among a run's callbacks."""
        return type(self).__name__

    def on_train_start(self, trainer: TrainerView) -> None:
        """The run is ready to take its first (or next, when resumed) step."""

    def on_step_end(self, trainer: TrainerView, record: StepRecord) -> None:
        """Step `record.step` is done; `trainer.state` already counts it."""

    def on_evaluation(self, trainer: TrainerView, record: Mapping[str, Any]) -> None:
        """A validation pass finished; `record` has its loss and perplexity."""

    def on_log(self, trainer: TrainerView, record: Mapping[str, Any]) -> None:
        """A record for the metrics log."""

    def on_checkpoint_saved(self, trainer: TrainerView, path: Path) -> None:
        """A checkpoint of the current step is complete at `path`."""

    def on_train_end(self, trainer: TrainerView) -> None:
        """No step follows; the summary is written next."""

    def on_error(self, trainer: TrainerView, error: BaseException) -> None:
        """The run is stopping with `error`; `close` follows."""

    def close(self) -> None:
        """Release resources; called whatever happened."""

    def summary(self) -> dict[str, Any]:
        """Fields this callback adds to summary.json (names of `RunSummary` fields)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state to checkpoint; empty when there is none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned when the run resumes."""
