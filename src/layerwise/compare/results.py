"""A comparison's finished runs read back from disk: each cell's summary and curves.

What the report, its figures and the layer analysis of a comparison share; torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from layerwise.compare.cells import Cell, ComparisonPlan, plan_cells, read_plan
from layerwise.runs.files import SUMMARY_FILE, RunSummary
from layerwise.runs.listing import Curve, curve, required_metrics
from layerwise.util.errors import UserError


@dataclass(frozen=True)
class RunResult:
    cell: Cell
    summary: RunSummary
    train_loss: Curve
    val_ppl: Curve
    val_loss: Curve

    @property
    def profile(self) -> str:
        return self.cell.profile


def load_run(cell: Cell) -> RunResult | None:
    """A finished run's summary and curves (x in millions of tokens); None if not finished."""
    if not (cell.run_dir / SUMMARY_FILE).exists():
        return None
    summary = RunSummary.load(cell.run_dir / SUMMARY_FILE)
    try:
        records = required_metrics(cell.run_dir)
    except UserError as exc:
        raise UserError(
            f"{exc}. The run's summary is intact but its curves are not: delete {cell.run_dir} "
            "and rerun the compare command to train it again"
        ) from None

    def millions(kind: str, key: str) -> Curve:
        return [(x / 1e6, y) for x, y in curve(records, kind, key, x="tokens")]

    return RunResult(
        cell, summary, millions("train", "loss"), millions("val", "ppl"), millions("val", "loss")
    )


def load_results(out: Path) -> tuple[ComparisonPlan, list[RunResult]]:
    plan = read_plan(out)
    results = [result for cell in plan_cells(plan) if (result := load_run(cell)) is not None]
    if not results:
        raise UserError(f"no finished runs under {out} yet: run `layerwise compare` first")
    return plan, results
