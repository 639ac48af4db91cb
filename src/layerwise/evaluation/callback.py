"""Downstream scores during training: at step 0, every `eval.interval` steps and at the end.

The tasks are read and tokenized once, at the start of the run, so a bad task name or a
missing file stops the run before its first step rather than hours in. Each evaluation is a
`"type": "downstream"` record in metrics.jsonl, written through the run's metrics log (rank 0),
so a resumed run drops the records after its checkpoint like every other record; the last one
goes into summary.json (`RunSummary.downstream`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerwise.callbacks import Callback, MetricsLog
from layerwise.config import EvalConfig
from layerwise.evaluation.evaluator import (
    PreparedTask,
    prepare_tasks,
    results_json,
    score_tasks,
    tokenizer_in,
)
from layerwise.evaluation.metrics import RECORD_TYPE
from layerwise.evaluation.tasks import select_tasks
from layerwise.rundir import METRICS_FILE, read_records

if TYPE_CHECKING:
    from layerwise.training import Trainer


class DownstreamEval(Callback):
    """Scores `config.tasks` at step 0, every `interval` steps (default: the validation
    interval) and at the last step; every rank takes part, rank 0 logs."""

    def __init__(self, config: EvalConfig, default_interval: int) -> None:
        if not config.tasks:
            raise ValueError("DownstreamEval needs eval.tasks")
        self.tasks = select_tasks(config.tasks)
        self.config = config
        self.interval = config.interval or default_interval
        self.prepared: list[PreparedTask] = []

    def on_train_start(self, trainer: Trainer) -> None:
        run = trainer.run
        self.prepared = prepare_tasks(
            self.tasks,
            self.config.dir,
            tokenizer_in(run.config.data.dir),
            run.config.data.seq_len,
            self.config.limit,
        )
        if trainer.state.step == 0:
            self.evaluate(trainer)

    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.is_last_step or trainer.state.step % self.interval == 0:
            self.evaluate(trainer)

    def evaluate(self, trainer: Trainer) -> dict[str, Any]:
        """Score now; rank 0 appends the record to metrics.jsonl."""
        run = trainer.run
        results = score_tasks(run.model, self.prepared, run.dist, run.dtype)
        record = {"type": RECORD_TYPE, **results_json(trainer.state.step, results)}
        record["tokens"] = trainer.state.tokens
        log = next((cb for cb in trainer.callbacks if isinstance(cb, MetricsLog)), None)
        if log is not None and log.writer is not None:
            log.writer.write(record)
        return record


def latest_downstream(run_dir: str | Path) -> dict[str, Any] | None:
    """The last downstream record of a run's metrics log (None without any): what the summary
    keeps, read back from the log so a resumed run's summary has the scores of every segment."""
    records = read_records(Path(run_dir) / METRICS_FILE)
    found = [r for r in records if r.get("type") == RECORD_TYPE]
    if not found:
        return None
    return {key: found[-1][key] for key in ("step", "tokens", "tasks")}
