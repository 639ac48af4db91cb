"""The comparison's report: the study's table, honest about seed noise, plus the figures.

Reads only what the runs left on disk (`summary.json`, `metrics.jsonl`), so a report can be
regenerated at any time, also from a partly finished comparison; and imports no torch, so it
starts fast. Damaged files are UserErrors that name the file and the fix.
"""

from __future__ import annotations

import csv
import html
import io
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from layerwise.cells import Cell, ComparisonPlan, plan_cells, read_plan
from layerwise.errors import UserError
from layerwise.fsutil import atomic_write_text
from layerwise.plots import (
    moving_average,
    plot_allocation,
    plot_bars,
    plot_curves,
    smoothing_window,
)
from layerwise.profiles import LayerSpec, ModelShape
from layerwise.rundir import SUMMARY_FILE, RunSummary
from layerwise.runs import Curve, curve, required_metrics


@dataclass(frozen=True)
class RunResult:
    cell: Cell
    summary: RunSummary
    train_loss: Curve
    val_ppl: Curve

    @property
    def profile(self) -> str:
        return self.cell.profile


@dataclass(frozen=True)
class ProfileRow:
    """One line of the study's table, aggregated over seeds."""

    profile: str
    seeds: int
    params: int
    val_ppl_mean: float
    val_ppl_std: float | None
    val_ppl_delta_pct: float | None
    tokens_per_s: float | None
    tokens_per_s_delta_pct: float | None
    mfu: float | None
    verdict: str


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    csv: Path
    runs_csv: Path
    html: Path
    plots: tuple[Path, ...]


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
    return RunResult(
        cell=cell,
        summary=summary,
        train_loss=[(x / 1e6, y) for x, y in curve(records, "train", "loss", x="tokens")],
        val_ppl=[(x / 1e6, y) for x, y in curve(records, "val", "ppl", x="tokens")],
    )


def load_results(out: Path) -> tuple[ComparisonPlan, list[RunResult]]:
    plan = read_plan(out)
    results = [result for cell in plan_cells(plan) if (result := load_run(cell)) is not None]
    if not results:
        raise UserError(f"no finished runs under {out} yet: run `layerwise compare` first")
    return plan, results


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _pct(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return 100.0 * (value - reference) / reference


def verdict(row_runs: Sequence[RunResult], ref_runs: Sequence[RunResult], reference: str) -> str:
    """Whether the gap to the reference exceeds what changing the seed alone does."""
    profile = row_runs[0].profile
    if profile == reference:
        return "reference"
    ppl = [r.summary.final_val_ppl for r in row_runs]
    ref = [r.summary.final_val_ppl for r in ref_runs]
    if len(ppl) < 2 or len(ref) < 2:
        return (
            f"{profile}: one seed only, so the seed-to-seed spread is unknown and the difference "
            f"from {reference} cannot be judged; run with --seeds 0,1,2"
        )
    gap = statistics.fmean(ppl) - statistics.fmean(ref)
    spread = max(statistics.stdev(ppl), statistics.stdev(ref))
    direction = "lower" if gap < 0 else "higher"
    judged = "larger than" if abs(gap) > spread else "within"
    return (
        f"{profile}: validation perplexity {abs(gap):.3f} {direction} than {reference}, "
        f"{judged} the seed-to-seed spread (largest std {spread:.3f} over "
        f"{min(len(ppl), len(ref))} seeds)"
    )


def table_rows(
    results: Sequence[RunResult], profiles: Sequence[str], reference: str
) -> list[ProfileRow]:
    by_profile = {p: [r for r in results if r.profile == p] for p in profiles}
    by_profile = {p: runs for p, runs in by_profile.items() if runs}
    ref_runs = by_profile.get(reference, [])
    ref_ppl = _mean([r.summary.final_val_ppl for r in ref_runs])
    ref_tps = _mean([r.summary.mean_tokens_per_s for r in ref_runs])
    rows = []
    for profile, runs in by_profile.items():
        ppl = [r.summary.final_val_ppl for r in runs if r.summary.final_val_ppl is not None]
        tps = _mean([r.summary.mean_tokens_per_s for r in runs])
        rows.append(
            ProfileRow(
                profile=profile,
                seeds=len(runs),
                params=runs[0].summary.params,
                val_ppl_mean=statistics.fmean(ppl) if ppl else math.nan,
                val_ppl_std=statistics.stdev(ppl) if len(ppl) > 1 else None,
                val_ppl_delta_pct=None if profile == reference else _pct(_mean(ppl), ref_ppl),
                tokens_per_s=tps,
                tokens_per_s_delta_pct=None if profile == reference else _pct(tps, ref_tps),
                mfu=_mean([r.summary.mean_mfu for r in runs]),
                verdict=verdict(runs, ref_runs, reference) if ref_runs else "no reference run yet",
            )
        )
    return rows


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _ppl_cell(row: ProfileRow) -> str:
    std = "" if row.val_ppl_std is None else f" ± {row.val_ppl_std:.3f}"
    return f"{row.val_ppl_mean:.3f}{std}"


TABLE_HEADER = ("Profile", "Params", "Val PPL", "vs ref", "Tokens/s", "Throughput vs ref", "MFU")


def table_cells(row: ProfileRow) -> tuple[str, ...]:
    return (
        row.profile,
        f"{row.params / 1e6:.2f}M",
        _ppl_cell(row),
        _fmt(row.val_ppl_delta_pct, "+.1f", "%"),
        _fmt(row.tokens_per_s, ",.0f"),
        _fmt(row.tokens_per_s_delta_pct, "+.1f", "%"),
        _fmt(None if row.mfu is None else 100 * row.mfu, ".1f", "%"),
    )


def markdown_table(rows: Sequence[ProfileRow]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(table_cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(records: Sequence[Mapping[str, Any]]) -> str:
    """One row per record, the keys as header; None becomes an empty cell (NaN in pandas)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def profile_record(row: ProfileRow) -> dict[str, Any]:
    """A line of results.csv: the table's numbers; the verdict is prose for the report."""
    return {k: v for k, v in asdict(row).items() if k != "verdict"}


def run_record(result: RunResult) -> dict[str, Any]:
    """A line of runs.csv: one run's final numbers; `run_dir` is relative to the report's
    directory, so the file stays valid when the comparison is moved."""
    summary = result.summary
    return {
        **result.cell.axes,
        "params": summary.params,
        "steps": summary.steps,
        "tokens": summary.tokens,
        "final_train_loss": summary.final_train_loss,
        "final_val_loss": summary.final_val_loss,
        "final_val_ppl": summary.final_val_ppl,
        "tokens_per_s": summary.mean_tokens_per_s,
        "mfu": summary.mean_mfu,
        "wall_time_s": summary.wall_time_s,
        "run_dir": result.cell.run_id,
    }


def _mean_curve(curves: Sequence[Curve]) -> tuple[Curve, list[tuple[float, float, float]]]:
    """Mean over seeds at the x values all seeds reached, and the min-max band."""
    length = min(len(c) for c in curves)
    mean, band = [], []
    for i in range(length):
        ys = [c[i][1] for c in curves]
        mean.append((curves[0][i][0], statistics.fmean(ys)))
        band.append((curves[0][i][0], min(ys), max(ys)))
    return mean, band


def write_plots(
    results: Sequence[RunResult], profiles: Sequence[str], out: Path
) -> tuple[Path, ...]:
    present = [p for p in profiles if any(r.profile == p for r in results)]
    runs = {p: [r for r in results if r.profile == p] for p in present}
    window = smoothing_window(r.train_loss for r in results)
    train = {
        p: _mean_curve([moving_average(r.train_loss, window) for r in rs]) for p, rs in runs.items()
    }
    val = {p: _mean_curve([r.val_ppl for r in rs]) for p, rs in runs.items()}
    shapes = {
        p: ModelShape(
            d_model=rs[0].summary.d_model,
            head_dim=rs[0].summary.head_dim,
            vocab_size=rs[0].summary.vocab_size,
            layers=tuple(LayerSpec(**layer) for layer in rs[0].summary.layers),
        )
        for p, rs in runs.items()
    }
    throughput = {p: _mean([r.summary.mean_tokens_per_s for r in rs]) for p, rs in runs.items()}
    figures = out / "figures"
    loss_label = "training loss" + (f" (moving average of {window} steps)" if window > 1 else "")
    paths = [
        plot_curves(
            {p: c for p, (c, _) in train.items()},
            figures / "train_loss.png",
            spread={p: b for p, (_, b) in train.items()},
            title="Training loss",
            xlabel="tokens (millions)",
            ylabel=loss_label,
        ),
        plot_curves(
            {p: c for p, (c, _) in train.items()},
            figures / "train_loss_zoom.png",
            spread={p: b for p, (_, b) in train.items()},
            zoom_last=0.3,
            title="Training loss, last 30% of tokens",
            xlabel="tokens (millions)",
            ylabel=loss_label,
        ),
        plot_curves(
            {p: c for p, (c, _) in val.items()},
            figures / "val_ppl.png",
            spread={p: b for p, (_, b) in val.items()},
            title="Validation perplexity",
            xlabel="tokens (millions)",
            ylabel="perplexity",
            log_y=True,
        ),
        plot_curves(
            {p: c for p, (c, _) in val.items()},
            figures / "val_ppl_zoom.png",
            spread={p: b for p, (_, b) in val.items()},
            zoom_last=0.5,
            title="Validation perplexity, second half",
            xlabel="tokens (millions)",
            ylabel="perplexity",
        ),
        plot_allocation(shapes, figures / "allocation.png"),
    ]
    if all(v is not None for v in throughput.values()):
        paths.append(
            plot_bars(
                {p: v for p, v in throughput.items() if v is not None},
                figures / "throughput.png",
                title="Training throughput (after warm-up)",
                ylabel="tokens/s",
            )
        )
    return tuple(paths)


def run_details(results: Sequence[RunResult]) -> list[str]:
    first = results[0].summary
    hardware = first.hardware
    mfu_note = f" {first.mfu_note}." if first.mfu_note else ""
    return [
        f"Each run: {first.steps:,} steps, {first.tokens / 1e6:.2f}M training tokens; "
        f"{len(results)} finished run(s). Hardware: {hardware['device_name']} "
        f"x{hardware['device_count']}; torch {first.versions['torch']}.{mfu_note}",
    ]


def render_markdown(
    rows: Sequence[ProfileRow],
    results: Sequence[RunResult],
    reference: str,
    plots: Sequence[Path],
    out: Path,
) -> str:
    verdicts = [f"- {row.verdict}" for row in rows if row.verdict != "reference"]
    images = [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in plots]
    return (
        "\n\n".join(
            [
                "# Layer-wise scaling comparison",
                f"Final validation perplexity (mean ± std over seeds) and training throughput; "
                f"changes are relative to `{reference}`.",
                markdown_table(rows),
                "\n".join(verdicts) if verdicts else "",
                "\n".join(run_details(results)),
                "## Figures",
                "\n\n".join(images),
            ]
        )
        + "\n"
    )


def render_html(
    rows: Sequence[ProfileRow],
    results: Sequence[RunResult],
    reference: str,
    plots: Sequence[Path],
    out: Path,
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEADER)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in table_cells(row)) + "</tr>"
        for row in rows
    )
    verdicts = "".join(
        f"<li>{html.escape(r.verdict)}</li>" for r in rows if r.verdict != "reference"
    )
    details = "".join(f"<p>{html.escape(line)}</p>" for line in run_details(results))
    images = "".join(
        f'<figure><img src="{html.escape(p.relative_to(out).as_posix())}" '
        f'alt="{html.escape(p.stem)}"></figure>'
        for p in plots
    )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>layerwise comparison</title>"
        f"<style>{style}</style></head><body><h1>Layer-wise scaling comparison</h1>"
        f"<p>Changes relative to <code>{html.escape(reference)}</code>.</p>"
        f"<table><tr>{head}</tr>{body}</table><ul>{verdicts}</ul>{details}{images}"
        "</body></html>\n"
    )


def write_report(out: str | Path) -> tuple[ReportFiles, list[ProfileRow]]:
    """(Re)generate report.md, results.csv (per profile), runs.csv (per run), report.html and
    figures/ from the runs on disk."""
    out = Path(out)
    plan, results = load_results(out)
    profiles = plan.profiles
    reference = plan.match or ("isotropic" if "isotropic" in profiles else profiles[0])
    rows = table_rows(results, profiles, reference)
    plots = write_plots(results, profiles, out)
    files = ReportFiles(
        markdown=atomic_write_text(
            out / "report.md", render_markdown(rows, results, reference, plots, out)
        ),
        csv=atomic_write_text(out / "results.csv", csv_text([profile_record(r) for r in rows])),
        runs_csv=atomic_write_text(out / "runs.csv", csv_text([run_record(r) for r in results])),
        html=atomic_write_text(
            out / "report.html", render_html(rows, results, reference, plots, out)
        ),
        plots=plots,
    )
    return files, rows
