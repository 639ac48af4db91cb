"""Downstream scores during training: at step 0, every `eval.interval` steps and at the end.

The tasks are read and tokenized once, at the start of the run, so a bad task name or a
missing file stops the run before its first step rather than hours in. Each evaluation is a
`"type": "downstream"` record logged through the trainer (rank 0 writes it to metrics.jsonl),
so a resumed run drops the records after its checkpoint like every other record; the last one
goes into summary.json (`RunSummary.downstream`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from layerwise.config.schema import EvalConfig
from layerwise.evaluation.evaluator import (
    PreparedTask,
    prepare_tasks,
    results_json,
    score_tasks,
    tokenizer_in,
)
from layerwise.evaluation.metrics import RECORD_TYPE
from layerwise.evaluation.tasks import select_tasks
from layerwise.runs.files import METRICS_FILE, read_records
from layerwise.training.callbacks.base import Callback, StepRecord, TrainerView


class DownstreamEval(Callback):
    """Scores `config.tasks` at step 0, every `interval` steps (default: the validation
    interval) and at the last step; every rank takes part, rank 0 logs."""

    priority: ClassVar[int] = 40  # after validation, so both scores are of the same step

    def __init__(
        self, config: EvalConfig, data_dir: str | Path, seq_len: int, default_interval: int
    ) -> None:
        if not config.tasks:
            raise ValueError("DownstreamEval needs eval.tasks")
        self.tasks = select_tasks(config.tasks)
        self.config, self.data_dir, self.seq_len = config, Path(data_dir), seq_len
        self.interval = config.interval or default_interval
        self.prepared: list[PreparedTask] = []
        self.run_dir: Path | None = None

    def on_train_start(self, trainer: TrainerView) -> None:
        self.run_dir = trainer.run_dir
        self.prepared = prepare_tasks(
            self.tasks,
            self.config.dir,
            tokenizer_in(self.data_dir),
            self.seq_len,
            self.config.limit,
        )
        if trainer.state.step == 0:
            self.evaluate(trainer)

    def on_step_end(self, trainer: TrainerView, record: StepRecord) -> None:
        if trainer.is_last_step or trainer.state.step % self.interval == 0:
            self.evaluate(trainer)

    def evaluate(self, trainer: TrainerView) -> dict[str, Any]:
        """Score now and log the record."""
        results = score_tasks(trainer.model, self.prepared, trainer.dist, trainer.compute_dtype)
        record = {"type": RECORD_TYPE, **results_json(trainer.state.step, results)}
        record["tokens"] = trainer.state.tokens
        trainer.log(record)
        return record

    def summary(self) -> dict[str, Any]:
        return {"downstream": None if self.run_dir is None else latest_downstream(self.run_dir)}


def latest_downstream(run_dir: str | Path) -> dict[str, Any] | None:
    """The last downstream record of a run's metrics log (None without any): what the summary
    keeps, read back from the log so a resumed run's summary has the scores of every segment."""
    records = read_records(Path(run_dir) / METRICS_FILE)
    found = [r for r in records if r.get("type") == RECORD_TYPE]
    if not found:
        return None
    return {key: found[-1][key] for key in ("step", "tokens", "tasks")}
