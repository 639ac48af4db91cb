"""The comparison's report: the study's table, its rows paired by seed against the reference,
and the figures.

Reads only what the runs left on disk (`summary.json`, `metrics.jsonl`), so a report can be
regenerated at any time, also from a partly finished comparison; and imports no torch, so it
starts fast. Damaged files are UserErrors that name the file and the fix.

A row is a profile, or a variant's profile (`12l/crown`). Runs with the same seed share data
order and validation windows, so each row is judged by its paired differences from the reference
row with a Student-t interval (`layerwise.util.stats`). The report is a list of sections
(`SECTION_BUILDERS`); later parts such as downstream scores are appended as builders.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerwise.compare.cells import (
    ANALYSIS_DIR,
    Cell,
    ComparisonPlan,
    row_label,
)
from layerwise.compare.figures import write_plots
from layerwise.compare.results import RunResult, load_results
from layerwise.evaluation.report import RunRef, downstream_section
from layerwise.util.files import atomic_write_text
from layerwise.util.render import (
    Bullets,
    Figures,
    Paragraph,
    Section,
    Table,
    render_html,
    render_markdown,
)
from layerwise.util.stats import LEVEL, PairedDifference, paired_difference

TITLE = "Layer-wise scaling comparison"


@dataclass(frozen=True)
class ProfileRow:
    """One line of the study's table, aggregated over seeds and paired with the reference."""

    variant: str | None
    profile: str
    seeds: int
    params: int
    val_ppl_mean: float
    val_ppl_std: float | None
    val_ppl_delta_pct: float | None
    tokens_per_s: float | None
    tokens_per_s_delta_pct: float | None
    mfu: float | None
    val_loss_diff: PairedDifference | None
    """Paired over seeds: this row's final validation loss minus the reference's."""
    val_ppl_diff: PairedDifference | None
    verdict: str
    """`reference`, `better`, `worse`, `not distinguishable at 95%`, or `no reference run yet`;
    from the interval of the validation-loss difference."""

    @property
    def label(self) -> str:
        return self.profile if self.variant is None else f"{self.variant}/{self.profile}"


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    csv: Path
    runs_csv: Path
    html: Path
    plots: tuple[Path, ...]


@dataclass(frozen=True)
class ReportContext:
    """What a section builder may draw on."""

    out: Path
    plan: ComparisonPlan
    runs: Mapping[str, Sequence[RunResult]]
    """The finished runs of each row, rows in table order."""
    rows: Sequence[ProfileRow]
    reference: str
    plots: tuple[Path, ...]


SectionBuilder = Callable[[ReportContext], Section | None]


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _pct(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return 100.0 * (value - reference) / reference


def by_seed(runs: Sequence[RunResult], value: Callable[[RunResult], float | None]) -> dict:
    """`{seed: value}` over the runs that have the value, for pairing with another row."""
    return {r.cell.seed: v for r in runs if (v := value(r)) is not None}


def _final_loss(run: RunResult) -> float | None:
    return run.summary.final_val_loss


def _final_ppl(run: RunResult) -> float | None:
    return run.summary.final_val_ppl


def make_row(runs: Sequence[RunResult], ref_runs: Sequence[RunResult], is_ref: bool) -> ProfileRow:
    ppl = [r.summary.final_val_ppl for r in runs if r.summary.final_val_ppl is not None]
    ref_ppl = _mean([r.summary.final_val_ppl for r in ref_runs])
    tps, ref_tps = (_mean([r.summary.mean_tokens_per_s for r in rs]) for rs in (runs, ref_runs))
    loss_diff = ppl_diff = None
    if ref_runs and not is_ref:
        loss_diff = paired_difference(by_seed(runs, _final_loss), by_seed(ref_runs, _final_loss))
        ppl_diff = paired_difference(by_seed(runs, _final_ppl), by_seed(ref_runs, _final_ppl))
    if is_ref:
        verdict = "reference"
    elif loss_diff is None:
        verdict = "no reference run yet" if not ref_runs else "no seed shared with the reference"
    else:
        verdict = loss_diff.verdict("lower")
    return ProfileRow(
        variant=runs[0].cell.variant,
        profile=runs[0].profile,
        seeds=len(runs),
        params=runs[0].summary.params,
        val_ppl_mean=statistics.fmean(ppl) if ppl else math.nan,
        val_ppl_std=statistics.stdev(ppl) if len(ppl) > 1 else None,
        val_ppl_delta_pct=None if is_ref else _pct(_mean(ppl), ref_ppl),
        tokens_per_s=tps,
        tokens_per_s_delta_pct=None if is_ref else _pct(tps, ref_tps),
        mfu=_mean([r.summary.mean_mfu for r in runs]),
        val_loss_diff=loss_diff,
        val_ppl_diff=ppl_diff,
        verdict=verdict,
    )


def group_rows(plan: ComparisonPlan, results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    """The finished runs of each row, rows in the plan's order (variant-major)."""
    grouped: dict[str, list[RunResult]] = {}
    for result in sorted(results, key=lambda r: _row_order(plan, r.cell)):
        grouped.setdefault(result.cell.row, []).append(result)
    return grouped


def _row_order(plan: ComparisonPlan, cell: Cell) -> tuple[int, int, int]:
    variants = list(plan.variants)
    variant = variants.index(cell.variant) if cell.variant in variants else -1
    return variant, plan.profiles.index(cell.profile), plan.seeds.index(cell.seed)


def table_rows(runs: Mapping[str, Sequence[RunResult]], reference: str) -> list[ProfileRow]:
    ref_runs = runs.get(reference, [])
    return [make_row(rs, ref_runs, row == reference) for row, rs in runs.items()]


def sentence(row: ProfileRow, reference: str) -> str:
    """The row's verdict in words, with the paired numbers it rests on."""
    if row.val_loss_diff is None:
        return f"{row.label}: {row.verdict}"
    loss, ppl = row.val_loss_diff, row.val_ppl_diff
    if loss.low is None:
        return (
            f"{row.label}: one seed only, so the seed-to-seed spread is unknown and the difference "
            f"from {reference} ({loss.mean:+.4f} in validation loss) is {row.verdict}; run with "
            "--seeds 0,1,2"
        )
    ppl_text = "" if ppl is None else f", perplexity {ppl.describe('+.3f')}"
    return (
        f"{row.label}: {row.verdict} than {reference}"
        if row.verdict in ("better", "worse")
        else f"{row.label}: {row.verdict} from {reference}"
    ) + (
        f" (paired over {loss.pairs} seeds, mean difference with {LEVEL:.0%} CI: validation "
        f"loss {loss.describe()}{ppl_text})"
    )


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _ppl_cell(row: ProfileRow) -> str:
    std = "" if row.val_ppl_std is None else f" ± {row.val_ppl_std:.3f}"
    return f"{row.val_ppl_mean:.3f}{std}"


TABLE_HEADER = (
    "Profile",
    "Params",
    "Val PPL",
    "vs ref",
    f"Δ val loss [{LEVEL:.0%} CI]",
    "Verdict",
    "Tokens/s",
    "Throughput vs ref",
    "MFU",
)


def summary_table(rows: Sequence[ProfileRow]) -> Table:
    """The study's table; with variants the first column names each row's variant."""
    variants = any(row.variant is not None for row in rows)
    header = ("Variant", *TABLE_HEADER) if variants else TABLE_HEADER
    return Table(header, tuple(_cells(row, variants) for row in rows))


def _cells(row: ProfileRow, variants: bool) -> tuple[str, ...]:
    cells = (
        row.profile,
        f"{row.params / 1e6:.2f}M",
        _ppl_cell(row),
        _fmt(row.val_ppl_delta_pct, "+.1f", "%"),
        "-" if row.val_loss_diff is None else row.val_loss_diff.describe(),
        row.verdict,
        _fmt(row.tokens_per_s, ",.0f"),
        _fmt(row.tokens_per_s_delta_pct, "+.1f", "%"),
        _fmt(None if row.mfu is None else 100 * row.mfu, ".1f", "%"),
    )
    return (str(row.variant), *cells) if variants else cells


def csv_text(records: Sequence[Mapping[str, Any]]) -> str:
    """One row per record, the keys as header; None becomes an empty cell (NaN in pandas)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def _difference_columns(name: str, diff: PairedDifference | None) -> dict[str, Any]:
    return {
        name: None if diff is None else diff.mean,
        f"{name}_low": None if diff is None else diff.low,
        f"{name}_high": None if diff is None else diff.high,
    }


def profile_record(row: ProfileRow) -> dict[str, Any]:
    """A line of results.csv: the table's numbers, the paired differences and the verdict; a
    `variant` column leads where the comparison has variants."""
    record: dict[str, Any] = {} if row.variant is None else {"variant": row.variant}
    record |= {
        "profile": row.profile,
        "seeds": row.seeds,
        "params": row.params,
        "val_ppl_mean": row.val_ppl_mean,
        "val_ppl_std": row.val_ppl_std,
        "val_ppl_delta_pct": row.val_ppl_delta_pct,
        "tokens_per_s": row.tokens_per_s,
        "tokens_per_s_delta_pct": row.tokens_per_s_delta_pct,
        "mfu": row.mfu,
        "paired_seeds": None if row.val_loss_diff is None else row.val_loss_diff.pairs,
        **_difference_columns("val_loss_diff", row.val_loss_diff),
        **_difference_columns("val_ppl_diff", row.val_ppl_diff),
        "verdict": row.verdict,
    }
    return record


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


def run_details(results: Sequence[RunResult]) -> list[str]:
    first = results[0].summary
    hardware = first.hardware
    mfu_note = f" {first.mfu_note}." if first.mfu_note else ""
    return [
        f"Each run: {first.steps:,} steps, {first.tokens / 1e6:.2f}M training tokens; "
        f"{len(results)} finished run(s). Hardware: {hardware['device_name']} "
        f"x{hardware['device_count']}; torch {first.versions['torch']}.{mfu_note}",
    ]


def summary_section(context: ReportContext) -> Section:
    budget = (
        f" Every cell was rescaled to {context.plan.target_params:,} parameters "
        f"(`{context.reference}`)."
        if context.plan.target_params is not None
        else ""
    )
    intro = (
        "Final validation perplexity (mean ± std over seeds) and training throughput; changes "
        f"are relative to `{context.reference}`. Δ val loss is the mean paired difference over "
        f"seeds (same seed, same data order) with its {LEVEL:.0%} Student-t interval; the "
        f"verdict says whether that interval excludes zero.{budget}"
    )
    verdicts = tuple(
        sentence(row, context.reference) for row in context.rows if row.verdict != "reference"
    )
    return Section(
        None,
        (
            Paragraph(intro),
            summary_table(context.rows),
            Bullets(verdicts),
        ),
    )


def details_section(context: ReportContext) -> Section:
    results = [r for rs in context.runs.values() for r in rs]
    return Section(None, tuple(Paragraph(line) for line in run_details(results)))


def figures_section(context: ReportContext) -> Section:
    return Section("Figures", (Figures(tuple(p.relative_to(context.out) for p in context.plots)),))


def transfer_section(context: ReportContext) -> Section | None:
    """For a fine-tuning comparison: each row's validation loss on the new data before (step 0,
    the source weights) and after fine-tuning, and its change paired against the reference's."""
    if context.plan.init_from is None:
        return None

    def change(run: RunResult) -> float | None:
        after = run.summary.final_val_loss
        return None if after is None or not run.val_loss else after - run.val_loss[0][1]

    ref_change = by_seed(context.runs.get(context.reference, []), change)
    table_rows = []
    for row, runs in context.runs.items():
        before = _mean([r.val_loss[0][1] if r.val_loss else None for r in runs])
        diff = (
            None
            if row == context.reference
            else paired_difference(by_seed(runs, change), ref_change)
        )
        table_rows.append(
            (
                row,
                _fmt(before, ".4f"),
                _fmt(_mean([r.summary.final_val_loss for r in runs]), ".4f"),
                _fmt(_mean([change(r) for r in runs]), "+.4f"),
                "-" if diff is None else diff.describe(),
                "reference" if diff is None else diff.verdict("lower"),
            )
        )
    header = (
        "Row",
        "Val loss before",
        "after",
        "Change",
        f"Change vs ref [{LEVEL:.0%} CI]",
        "Verdict",
    )
    return Section(
        "Fine-tuning transfer",
        (
            Paragraph(
                f"Each run of {context.plan.init_from} fine-tuned on this comparison's data "
                "(fresh optimizer and schedule). Validation loss on the new data before (the "
                "source weights, step 0) and after; the change is paired by seed against "
                f"`{context.reference}`'s change (negative: it gained more)."
            ),
            Table(header, tuple(table_rows)),
        ),
    )


def sources_section(context: ReportContext) -> Section | None:
    """Each row's final validation loss on each source of a `data.sources` mixture (the mean
    over seeds), when the runs trained on more than one source."""
    sources = [
        name
        for runs in context.runs.values()
        for run in runs[:1]
        for name in (run.summary.final_val_sources or {})
    ]
    names = list(dict.fromkeys(sources))
    if len(names) < 2:
        return None

    def loss(run: RunResult, name: str) -> float | None:
        scores = (run.summary.final_val_sources or {}).get(name)
        return None if scores is None else scores["loss"]

    table_rows = tuple(
        (
            row,
            _fmt(_mean([r.summary.final_val_loss for r in runs]), ".4f"),
            *(_fmt(_mean([loss(r, name) for r in runs]), ".4f") for name in names),
        )
        for row, runs in context.runs.items()
    )
    text = (
        "Final validation loss on each source's own windows (mean over seeds); the mixture's "
        "is their mean at the sources' weights."
    )
    header = ("Row", "Mixture", *names)
    return Section("Validation by source", (Paragraph(text), Table(header, table_rows)))


def downstream_report_section(context: ReportContext) -> Section | None:
    """Downstream task scores per row (layerwise.evaluation), when the runs measured any."""
    refs = [
        RunRef(result.cell.run_dir, row, result.cell.seed)
        for row, results in context.runs.items()
        for result in results
    ]
    found = downstream_section(
        refs, list(context.runs), context.reference, context.out / "figures", context.out
    )
    return None if found is None else found.section


def analysis_report_section(context: ReportContext) -> Section | None:
    """The layer analysis (`--analyze`, layerwise.analysis), when OUT/analysis/ holds one."""
    directory = context.out / ANALYSIS_DIR
    if not (directory / "analysis.json").exists():
        return None
    text = (
        f"What each layer does, every run against its seed's `{context.reference}` run: "
        f"{ANALYSIS_DIR}/analysis.md says it in words, {ANALYSIS_DIR}/analysis.json has the "
        "numbers."
    )
    figures = tuple(p.relative_to(context.out) for p in sorted(directory.glob("*.png")))
    return Section("Layer analysis", (Paragraph(text), Figures(figures)))


SECTION_BUILDERS: list[SectionBuilder] = [
    summary_section,
    sources_section,
    transfer_section,
    downstream_report_section,
    analysis_report_section,
    details_section,
    figures_section,
]
"""The report's sections in order; a later part (downstream scores, layer analysis) appends its
builder, which returns None when it has nothing to show for a comparison."""


def write_report(out: str | Path) -> tuple[ReportFiles, list[ProfileRow]]:
    """(Re)generate report.md, results.csv (per row), runs.csv (per run), report.html and
    figures/ from the runs on disk."""
    out = Path(out)
    plan, results = load_results(out)
    reference = row_label(plan.reference)
    runs = group_rows(plan, results)
    rows = table_rows(runs, reference)
    plots = write_plots(runs, out)
    context = ReportContext(out, plan, runs, rows, reference, plots)
    sections = [s for build in SECTION_BUILDERS if (s := build(context)) is not None]
    files = ReportFiles(
        markdown=atomic_write_text(out / "report.md", render_markdown(TITLE, sections)),
        csv=atomic_write_text(out / "results.csv", csv_text([profile_record(r) for r in rows])),
        runs_csv=atomic_write_text(out / "runs.csv", csv_text([run_record(r) for r in results])),
        html=atomic_write_text(out / "report.html", render_html(TITLE, sections)),
        plots=plots,
    )
    return files, rows
