"""The training loop's events, and the built-in callbacks that listen to them.

The loop in `layerwise.training` only steps the optimizer; everything else a run does on the way
(validation, checkpoints, the metrics log, the progress display, throughput) is a `Callback`
reacting to its events, and so is whatever a user or a later feature adds: downstream
evaluation, pruning an unpromising trial (`trainer.request_stop`), exporting on every save.

A callback with state (counters, best scores) returns it from `state_dict`; it is saved in every
checkpoint under the callback's `name` and given back through `load_state_dict` before
`on_train_start` when the run resumes, so a resumed run's callbacks continue exactly.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from layerwise.metrics import MetricsWriter, truncate_log
from layerwise.rundir import METRICS_FILE

if TYPE_CHECKING:
    from layerwise.training import Trainer

THROUGHPUT_WARMUP_STEPS = 10
"""Steps at the start of each process left out of mean throughput (compilation, allocator)."""


class Callback:
    """Hooks the loop calls; override the ones you need. Every rank calls every hook.

    - `on_train_start`: the model, optimizer and data are ready (resumed, if resuming);
    - `on_step_end`: after each optimizer step, with the step's record (what metrics.jsonl gets);
    - `on_evaluation`: after each validation pass, with its record;
    - `on_checkpoint_saved`: after a checkpoint is complete on disk;
    - `on_train_end`: after the last step (or a stop request), before the summary is written;
    - `close`: always, also after an error or a signal, to release files and displays.
    """

    @property
    def name(self) -> str:
        """Key of this callback's state in checkpoints; unique among a run's callbacks."""
        return type(self).__name__

    def on_train_start(self, trainer: Trainer) -> None:
        """The run is ready to take its first (or next, when resumed) step."""

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """Step `record["step"]` is done; `trainer.state` already counts it."""

    def on_evaluation(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """A validation pass finished; `record` has its loss and perplexity."""

    def on_checkpoint_saved(self, trainer: Trainer, path: Path) -> None:
        """A checkpoint of the current step is complete at `path`."""

    def on_train_end(self, trainer: Trainer) -> None:
        """No step follows; the summary is written next."""

    def close(self) -> None:
        """Release resources; called whatever happened."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state to checkpoint; empty when there is none."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned when the run resumes."""


class Validation(Callback):
    """Validation loss on the run's fixed windows: at the start, every `interval` steps, at the end."""

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.state.step == 0:
            trainer.evaluate()

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.is_last_step or trainer.state.step % self.interval == 0:
            trainer.evaluate()


class Checkpointing(Callback):
    """A checkpoint every `interval` steps, at the steps in `protect` (kept from pruning), when
    a signal stops the run, and at the end.

    It asks the trainer for the save, which happens once every callback has handled the step,
    so the checkpoint holds every callback's state as of that step.
    """

    def __init__(self, interval: int, keep: int, protect: Collection[int] = ()) -> None:
        self.interval, self.keep, self.protect = interval, keep, frozenset(protect)
        self.saved_step: int | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.resumed:
            self.saved_step = trainer.state.step

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        step = trainer.state.step
        if trainer.signal_received or step in self.protect or step % self.interval == 0:
            trainer.request_checkpoint(self.keep, self.protect)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.saved_step != trainer.state.step:
            trainer.request_checkpoint(self.keep, self.protect)

    def on_checkpoint_saved(self, trainer: Trainer, path: Path) -> None:
        self.saved_step = trainer.state.step


class ThroughputMeter(Callback):
    """Mean tokens/s of the whole run, leaving out each process's warm-up steps.

    Those include compilation and allocator warm-up, again after each resume, but at most half
    of what a process runs is left out, so a short resumed run is still measured. A ratio of
    totals, not a mean of per-step rates, so slow steps weigh as much as they cost; the totals
    of a resumed run's earlier processes come back through the callback's state.
    """

    def __init__(self, warmup_steps: int = THROUGHPUT_WARMUP_STEPS) -> None:
        self.warmup_steps = warmup_steps
        self.skip = warmup_steps
        self.seen = 0
        self.tokens = 0
        self.seconds = 0.0

    def on_train_start(self, trainer: Trainer) -> None:
        self.skip = min(self.warmup_steps, (trainer.steps - trainer.state.step) // 2)

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.seen += 1
        if self.seen > self.skip:
            self.tokens += record["tokens_per_step"]
            self.seconds += record["step_time_s"]

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokens, self.seconds = state["tokens"], state["seconds"]


class MetricsLog(Callback):
    """Rank 0 appends every step and evaluation record to metrics.jsonl (and TensorBoard).

    A resumed run first drops the records after its checkpoint, so the log reads as one
    uninterrupted run.
    """

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.run_dir, self.tensorboard = run_dir, tensorboard
        self.writer: MetricsWriter | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        truncate_log(self.run_dir / METRICS_FILE, trainer.state.step if trainer.resumed else -1)
        self.writer = MetricsWriter(self.run_dir, self.tensorboard)

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.write(record)

    def on_evaluation(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.write(record)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressDisplay(Callback):
    """Rank 0's stderr: a progress bar (step, loss, tokens/s, ETA) and a line per log interval."""

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

    def on_train_start(self, trainer: Trainer) -> None:
        self.task = self.progress.add_task(
            "train", total=trainer.steps, completed=trainer.state.step, loss="-", speed="-"
        )
        self.progress.start()

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.progress.update(
            self.task,
            completed=record["step"],
            loss=f"{record['loss']:.4f}",
            speed=f"{record['tokens_per_s']:,.0f}",
        )
        if trainer.is_last_step or record["step"] % self.log_interval == 0:
            mfu = "" if record["mfu"] is None else f" | mfu {record['mfu']:.1%}"
            self.print(
                f"step {record['step']:>{len(str(trainer.steps))}}/{trainer.steps} | loss "
                f"{record['loss']:.4f} | lr {record['lr']:.2e} | grad norm "
                f"{record['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s{mfu}"
            )

    def on_evaluation(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.print(
            f"step {record['step']} | val loss {record['loss']:.4f} | val ppl {record['ppl']:.2f}"
        )

    def close(self) -> None:
        self.progress.stop()

    def print(self, text: str) -> None:
        self.console.print(text, markup=False)
