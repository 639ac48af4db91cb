"""The comparison report's downstream section, from what the runs left on disk; no torch.

For each task: the primary score of every profile (mean ± std over seeds, change vs the
reference in percentage points), beside chance, the majority class and the untrained (step-0)
score; a figure of the core tasks' scores against training tokens; and which tasks any profile
scores above chance at this scale. A task is "above chance" when a profile's mean beats the
better of chance and the majority class by more than two binomial standard errors at the
task's size: below that, differences between profiles are noise, whatever the table shows.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerwise.evaluation.metrics import RECORD_TYPE
from layerwise.evaluation.tasks import CORE
from layerwise.runs.files import METRICS_FILE, SUMMARY_FILE, RunSummary, read_records
from layerwise.util.plots import plot_panels
from layerwise.util.render import Block, Figures, Paragraph, Section, Table

FIGURE_NAME = "downstream_core.png"


@dataclass(frozen=True)
class RunRef:
    """A finished run of the comparison, as the report knows it."""

    run_dir: Path
    profile: str
    seed: int


@dataclass(frozen=True)
class RunScores:
    """One run's downstream records: `final` from summary.json (else the last record),
    `history` every record in metrics.jsonl, oldest first."""

    ref: RunRef
    final: Mapping[str, Any]
    history: Sequence[Mapping[str, Any]]

    def initial(self, task: str, n: int | None = None) -> float | None:
        """The step-0 (untrained) primary score of `task`, when one was measured (on `n`
        examples, if given)."""
        for record in self.history:
            scores = record["tasks"].get(task)
            if record["step"] == 0 and scores and n in (None, scores["n"]):
                return primary_value(scores)
        return None


@dataclass(frozen=True)
class DownstreamRow:
    """One profile on one task, over seeds; scores are fractions (0.41 = 41%)."""

    profile: str
    task: str
    primary: str
    seeds: int
    n: int
    mean: float
    std: float | None
    delta_points: float | None
    """Mean minus the reference's mean, in percentage points; None for the reference itself."""
    chance: float
    majority: float
    untrained: float | None
    above_chance: bool


@dataclass(frozen=True)
class DownstreamSection:
    rows: list[DownstreamRow]
    section: Section
    """The report's "Downstream tasks" section: summary, table, figure (layerwise.report_render)."""
    figure: Path | None
    above_chance: list[str]
    """Tasks on which some profile scores above chance (see the module docstring)."""


def primary_value(scores: Mapping[str, Any]) -> float:
    return float(scores[scores["primary"]])


def load_scores(ref: RunRef) -> RunScores | None:
    """A run's downstream scores; None if it has none (eval.tasks was not set)."""
    history = [r for r in read_records(ref.run_dir / METRICS_FILE) if r.get("type") == RECORD_TYPE]
    summary_path = ref.run_dir / SUMMARY_FILE
    final = RunSummary.load(summary_path).downstream if summary_path.exists() else None
    if final is None and history:
        final = history[-1]
    return None if final is None else RunScores(ref, final, history)


def above_chance_threshold(chance: float, majority: float, n: int) -> float:
    """The score a task must beat to count as learned: the better trivial baseline plus two
    binomial standard errors at `n` examples."""
    base = max(chance, majority)
    return base + 2 * math.sqrt(base * (1 - base) / n)


def table_rows(
    scores: Sequence[RunScores], profiles: Sequence[str], reference: str
) -> list[DownstreamRow]:
    """Rows task by task (in the order first met), profile by profile (in `profiles` order)."""
    tasks = list(dict.fromkeys(task for s in scores for task in s.final["tasks"]))
    ref_means = {
        task: statistics.fmean(values)
        for task in tasks
        if (values := _finals(scores, reference, task))
    }
    rows = []
    for task in tasks:
        for profile in profiles:
            values = _finals(scores, profile, task)
            if not values:
                continue
            first = next(s.final["tasks"][task] for s in scores if task in s.final["tasks"])
            chance, n = float(first["chance"]), int(first["n"])
            majority = float(first.get("majority", chance))
            untrained = [
                v for s in scores if s.ref.profile == profile and (v := s.initial(task)) is not None
            ]
            mean = statistics.fmean(values)
            delta = None
            if profile != reference and task in ref_means:
                delta = 100 * (mean - ref_means[task])
            rows.append(
                DownstreamRow(
                    profile=profile,
                    task=task,
                    primary=first["primary"],
                    seeds=len(values),
                    n=n,
                    mean=mean,
                    std=statistics.stdev(values) if len(values) > 1 else None,
                    delta_points=delta,
                    chance=chance,
                    majority=majority,
                    untrained=statistics.fmean(untrained) if untrained else None,
                    above_chance=mean > above_chance_threshold(chance, majority, n),
                )
            )
    return rows


def _finals(scores: Sequence[RunScores], profile: str, task: str) -> list[float]:
    return [
        primary_value(s.final["tasks"][task])
        for s in scores
        if s.ref.profile == profile and task in s.final["tasks"]
    ]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def score_cell(row: DownstreamRow) -> str:
    std = "" if row.std is None else f" ± {100 * row.std:.1f}"
    delta = "" if row.delta_points is None else f" ({row.delta_points:+.1f})"
    return f"{100 * row.mean:.1f}{std}{delta}"


def table_grid(rows: Sequence[DownstreamRow], profiles: Sequence[str]) -> list[list[str]]:
    """Header then one line per task: task, metric, chance, majority, untrained, profiles."""
    present = [p for p in profiles if any(r.profile == p for r in rows)]
    header = ["Task", "Metric", "Chance", "Majority", "Untrained", *present]
    grid = [header]
    for task in dict.fromkeys(r.task for r in rows):
        cells = {r.profile: r for r in rows if r.task == task}
        first = next(iter(cells.values()))
        untrained = [r.untrained for r in cells.values() if r.untrained is not None]
        mark = "" if any(r.above_chance for r in cells.values()) else " (at chance)"
        grid.append(
            [
                f"{task}{mark}",
                first.primary,
                _pct(first.chance),
                _pct(first.majority),
                _pct(statistics.fmean(untrained) if untrained else None),
                *(score_cell(cells[p]) if p in cells else "-" for p in present),
            ]
        )
    return grid


def above_chance_tasks(rows: Sequence[DownstreamRow]) -> list[str]:
    return list(dict.fromkeys(r.task for r in rows if r.above_chance))


def summary_line(rows: Sequence[DownstreamRow], reference: str) -> str:
    tasks = list(dict.fromkeys(r.task for r in rows))
    above = above_chance_tasks(rows)
    verdict = (
        f"Above chance at this scale: {', '.join(above)}."
        if above
        else "No task is above chance at this scale: the downstream scores do not separate "
        "the profiles; compare them on validation perplexity."
    )
    at_chance = [t for t in tasks if t not in above]
    rest = f" At chance (differences are noise): {', '.join(at_chance)}." if at_chance else ""
    return (
        f"Primary metric per task in % (mean ± std over seeds; in brackets the change vs "
        f"`{reference}` in points). {verdict}{rest}"
    )


def core_curves(
    scores: Sequence[RunScores], profiles: Sequence[str]
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Per core task, per profile: (tokens in millions, primary score) averaged over seeds at
    the steps every seed reached."""
    panels: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for task in CORE:
        series = {}
        for profile in profiles:
            runs = [
                [(r["tokens"] / 1e6, primary_value(r["tasks"][task])) for r in s.history]
                for s in scores
                if s.ref.profile == profile and all(task in r["tasks"] for r in s.history)
            ]
            runs = [run for run in runs if run]
            if runs:
                length = min(map(len, runs))
                series[profile] = [
                    (runs[0][i][0], statistics.fmean(run[i][1] for run in runs))
                    for i in range(length)
                ]
        if series:
            panels[task] = series
    return panels


def downstream_section(
    runs: Sequence[RunRef],
    profiles: Sequence[str],
    reference: str,
    figures_dir: Path,
    report_dir: Path,
) -> DownstreamSection | None:
    """The section for the finished `runs`; None when none has downstream scores.

    The figure goes to `figures_dir`, and the snippets link to it relative to `report_dir`
    (where report.md and report.html live).
    """
    scores = [s for ref in runs if (s := load_scores(ref)) is not None]
    if not scores:
        return None
    rows = table_rows(scores, profiles, reference)
    panels = core_curves(scores, profiles)
    figure = None
    if panels:
        figure = plot_panels(
            panels,
            figures_dir / FIGURE_NAME,
            xlabel="tokens (millions)",
            ylabel="primary score (fraction correct)",
        )
    grid = table_grid(rows, profiles)
    blocks: list[Block] = [
        Paragraph(summary_line(rows, reference)),
        Table(tuple(grid[0]), tuple(tuple(row) for row in grid[1:])),
    ]
    if figure is not None:
        blocks.append(Figures((figure.relative_to(report_dir),)))
    return DownstreamSection(
        rows=rows,
        section=Section("Downstream tasks", tuple(blocks)),
        figure=figure,
        above_chance=above_chance_tasks(rows),
    )
