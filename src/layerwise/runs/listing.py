"""Single runs on their own, without torch: which runs a directory holds, how far each got, and
their training curves in one figure.

A run directory is one holding `config.yaml` (the trainer writes it before the first step). Its
state is read from what it left: `summary.json` once finished, else the last step in
`metrics.jsonl`. A run whose files cannot be read is listed as unreadable with the reason, so one
damaged run does not hide the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerwise.config.loader import load_config
from layerwise.config.schema import total_steps
from layerwise.runs.files import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, RunSummary, read_records
from layerwise.util.errors import UserError

Curve = list[tuple[float, float]]

REQUIRED_KEYS = {
    "train": ("step", "loss", "lr", "tokens", "tokens_per_s"),
    "val": ("step", "loss", "ppl", "tokens"),
}
"""What the readers here use from each record type; other record types pass unchecked."""


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics records, checked; an unreadable log is a UserError naming it."""
    path = run_dir / METRICS_FILE
    try:
        records = read_records(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc})") from None
    for number, record in enumerate(records, 1):
        if not _is_record(record):
            raise UserError(
                f"{path}: record {number} is not a metrics record ({str(record)[:80]}); the file "
                "is damaged or not a layerwise metrics log"
            )
    return records


def required_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run that must have some (one to plot, a finished one to report)."""
    if not (run_dir / METRICS_FILE).is_file():
        raise UserError(f"{run_dir / METRICS_FILE} not found: is {run_dir} a run directory?")
    records = read_metrics(run_dir)
    if not records:
        raise UserError(f"{run_dir / METRICS_FILE} holds no records yet")
    return records


def _is_record(record: Any) -> bool:
    if not isinstance(record, dict):
        return False
    kind = record.get("type")
    required = REQUIRED_KEYS.get(kind, ()) if isinstance(kind, str) else ()
    return all(isinstance(record.get(key), (int, float)) for key in required)


def curve(records: Sequence[dict[str, Any]], kind: str, key: str, x: str = "step") -> Curve:
    """`(x, key)` of every record of type `kind`, e.g. the training loss per step."""
    return [(r[x], r[key]) for r in records if r.get("type") == kind]


@dataclass(frozen=True)
class RunStatus:
    """One line of `layerwise runs`: where a run stands and its latest numbers."""

    run_dir: str
    profile: str | None
    state: str
    """`finished`, `interrupted`, `not started` or `unreadable`."""
    step: int | None
    steps: int | None
    train_loss: float | None
    val_loss: float | None
    val_ppl: float | None
    problem: str | None
    val_sources: dict[str, float] | None = None
    """The latest validation loss per source, for a run on data.sources."""

    @property
    def description(self) -> str:
        """`interrupted at step 7 of 30`, or the state and what is wrong for an unreadable run."""
        if self.state == "interrupted":
            return f"interrupted at step {self.step} of {self.steps}"
        return self.state if self.problem is None else f"{self.state}: {self.problem}"


def find_runs(root: str | Path) -> list[Path]:
    """Every run directory at or under `root`, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory" if root.exists() else f"{root} not found")
    return sorted(path.parent for path in root.rglob(CONFIG_FILE))


def run_status(run_dir: Path) -> RunStatus:
    """Where the run in `run_dir` stands, from its files alone."""
    summary = run_dir / SUMMARY_FILE
    try:
        config = load_config(run_dir / CONFIG_FILE)
        records = read_metrics(run_dir)
        if summary.exists():
            RunSummary.load(summary)  # a damaged summary makes the run unreadable, not finished
    except UserError as exc:
        return RunStatus(str(run_dir), None, "unreadable", None, None, None, None, None, str(exc))
    train = curve(records, "train", "loss")
    val = [r for r in records if r.get("type") == "val"]
    state = "finished" if summary.exists() else "interrupted" if train else "not started"
    return RunStatus(
        run_dir=str(run_dir),
        profile=config.model.profile,
        state=state,
        step=int(train[-1][0]) if train else 0,
        steps=total_steps(config),
        train_loss=train[-1][1] if train else None,
        val_loss=val[-1]["loss"] if val else None,
        val_ppl=val[-1]["ppl"] if val else None,
        problem=None,
        val_sources=(
            {name: scores["loss"] for name, scores in val[-1]["sources"].items()}
            if val and "sources" in val[-1]
            else None
        ),
    )


def list_runs(root: str | Path) -> list[RunStatus]:
    return [run_status(run_dir) for run_dir in find_runs(root)]


def plot_runs(run_dirs: Sequence[str | Path], path: str | Path | None = None) -> Path:
    """Training loss, validation loss (with perplexity on a second axis), learning rate and
    tokens/s of each run against its step, one figure of four panels, one line per run labelled
    by its directory; written to `path`, by default `curves.png` in the first run directory."""
    from matplotlib.figure import Figure  # only the plot command pays for matplotlib
    from matplotlib.ticker import MaxNLocator

    from layerwise.util.plots import draw_curves, moving_average, save_figure, smoothing_window

    if not run_dirs:
        raise UserError("give at least one run directory")
    runs = {str(run_dir): required_metrics(Path(run_dir)) for run_dir in run_dirs}
    train_loss = {name: curve(records, "train", "loss") for name, records in runs.items()}
    window = smoothing_window(train_loss.values())
    panels = {
        "Training loss": (
            {name: moving_average(points, window) for name, points in train_loss.items()},
            "loss" + (f" (moving average of {window} steps)" if window > 1 else ""),
        ),
        "Validation loss": (
            {name: curve(records, "val", "loss") for name, records in runs.items()},
            "loss",
        ),
        "Learning rate": (
            {name: curve(records, "train", "lr") for name, records in runs.items()},
            "learning rate",
        ),
        "Throughput": (
            {name: curve(records, "train", "tokens_per_s") for name, records in runs.items()},
            "tokens/s",
        ),
    }
    fig = Figure(figsize=(13, 8), layout="constrained")
    axes = list(fig.subplots(2, 2, sharex=True).flat)
    for ax, (title, (series, ylabel)) in zip(axes, panels.items(), strict=True):
        xlabel = "step" if ax.get_subplotspec().is_last_row() else ""
        draw_curves(ax, series, title=title, xlabel=xlabel, ylabel=ylabel, legend=False)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].secondary_yaxis("right", functions=(_exp, _log)).set_ylabel("perplexity")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3))
    return save_figure(fig, Path(run_dirs[0]) / "curves.png" if path is None else path)


def _exp(loss: np.ndarray) -> np.ndarray:
    """Perplexity from loss, clipped so matplotlib's search for axis ticks cannot overflow."""
    return np.exp(np.clip(loss, -50, 50))


def _log(ppl: np.ndarray) -> np.ndarray:
    return np.log(np.clip(ppl, math.exp(-50), None))
