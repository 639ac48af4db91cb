"""What a shape-learning run found, in words, tables and two figures: the learned shape beside
the study's five (all at the same target), how the gates moved the width over training, and,
after `--confirm`, whether the learned shape beat isotropic when retrained from scratch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from layerwise.compare.report import ProfileRow, sentence, write_report
from layerwise.learn.run import (
    CONFIRM_DIR,
    GATES_FIGURE,
    REPORT_FILE,
    RUN_DIR,
    SHAPES_FIGURE,
    LearnedShape,
    LearnPlan,
    gates_records,
)
from layerwise.profiles.budget import solve_budget
from layerwise.profiles.plot import plot_allocation
from layerwise.profiles.recipes import SHAPES, lookup_spec
from layerwise.profiles.shape import ModelShape, measure
from layerwise.training.shape import profile_spec
from layerwise.util.errors import UserError
from layerwise.util.files import atomic_write_text
from layerwise.util.plots import save_figure
from layerwise.util.render import Figures, Paragraph, Section, Table, render_markdown

TITLE = "Learned shape"


def study_shapes(plan: LearnPlan) -> dict[str, ModelShape | str]:
    """The study's five on the config's base, each landed on the learned shape's target, or
    why it cannot land there (a framed shape on a base too small for its frame layers)."""
    base = profile_spec(plan.config.model, plan.supernet.vocab_size)
    shapes: dict[str, ModelShape | str] = {}
    for name in SHAPES:
        try:
            spec = lookup_spec(name, base)
            shapes[name] = solve_budget(spec, plan.target, plan.metric, plan.seq_len).shape
        except UserError as exc:
            shapes[name] = str(exc)
    return shapes


def plot_trajectory(records: Sequence[dict[str, Any]], fix_step: int, path: Path) -> Path:
    """Expected FFN width and heads of every layer, and the expected size, over the steps."""
    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3)
    steps = [r["step"] for r in records]
    n_layers = len(records[0]["ffn"])
    for ax, key, title, ylabel in (
        (axes[0], "ffn", "Expected FFN width", "d_ffn"),
        (axes[1], "heads", "Expected attention", "query heads"),
    ):
        for layer in range(n_layers):
            colour = colormaps["viridis"](layer / max(1, n_layers - 1))
            ax.plot(steps, [r[key][layer] for r in records], color=colour, label=f"layer {layer}")
        ax.set(title=title, xlabel="step", ylabel=ylabel)
    axes[2].plot(steps, [r["expected"] / 1e6 for r in records], label="expected size")
    axes[2].plot(steps, [r["target"] / 1e6 for r in records], linestyle="--", label="target")
    axes[2].set(title="Size under the constraint", xlabel="step", ylabel="millions")
    for ax in axes:
        ax.axvline(fix_step, color="grey", linewidth=0.8, linestyle=":")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small", frameon=False)
    axes[2].legend(frameon=False)
    return save_figure(fig, path)


def _gap(value: float, target: float) -> str:
    return f"{value:,.0f} ({(value - target) / target:+.2%})"


def _widths(shape: ModelShape, layer: int) -> str:
    spec = shape.layers[layer]
    return f"{spec.d_ffn} / {spec.n_heads}"


def confirm_rows(out: Path) -> list[ProfileRow] | None:
    """The confirmation's rows (its report rewritten), or None before `--confirm`."""
    if not (out / CONFIRM_DIR / "comparison.json").exists():
        return None
    return write_report(out / CONFIRM_DIR)[1]


def verdict_text(rows: Sequence[ProfileRow], name: str) -> str:
    """Whether the learned shape beat isotropic at 95%, plainly, with the numbers."""
    row = next((r for r in rows if r.profile == name), None)
    if row is None or row.val_loss_diff is None:
        return f"Retrained from scratch: no finished {name} runs to compare with isotropic yet."
    beat = "yes" if row.verdict == "better" else "no"
    return (
        f"**Did the learned shape beat isotropic at 95%? {beat}.** Retrained from scratch: "
        f"{sentence(row, 'isotropic')}."
    )


def summary_section(
    plan: LearnPlan, learned: LearnedShape, rows: Sequence[ProfileRow] | None
) -> Section:
    widest, target = plan.supernet.layers[0], plan.target
    kept_size = measure(learned.kept, plan.metric, plan.seq_len)
    text = (
        f"Learned from `{plan.config_path}`: a supernet of {plan.supernet.n_layers} layers at "
        f"d_ffn {widest.d_ffn} and {widest.n_heads} query heads, gated in blocks of "
        f"{plan.costs.ffn_channels} FFN channels and GQA groups of {plan.costs.group} heads, "
        f"trained {learned.summary.steps} steps with its gates fixed after step {plan.fix_step}. "
        f"Target {plan.metric} {target:,}: expected size at fixing "
        f"{_gap(learned.expected_at_fix, target)}; the kept widths {_gap(kept_size, target)}; "
        f"landed by the budget solver at {_gap(learned.landed.achieved, target)}."
    )
    final = learned.summary.final_val_loss
    blocks = [Paragraph(text)]
    if final is not None:
        blocks.append(
            Paragraph(
                f"The supernet run's final validation loss (the kept model, after "
                f"{learned.summary.steps - plan.fix_step} steps with fixed gates): {final:.4f}. "
                "It is not a fair comparison (it started wider); `--confirm` is."
            )
        )
    if rows is not None:
        blocks.append(Paragraph(verdict_text(rows, plan.name)))
    return Section(None, tuple(blocks))


def widths_section(
    plan: LearnPlan, learned: LearnedShape, study: dict[str, ModelShape | str]
) -> Section:
    landed = learned.landed.shape
    shown = {name: shape for name, shape in study.items() if isinstance(shape, ModelShape)}
    rows = tuple(
        (
            str(i),
            _widths(learned.kept, i),
            _widths(landed, i),
            *(_widths(shape, i) for shape in shown.values()),
        )
        for i in range(landed.n_layers)
    )
    header = ("layer", "kept (trained)", f"{plan.name} (landed)", *shown)
    blocks: list[Table | Paragraph] = [Table(header, rows)]
    blocks += [
        Paragraph(f"{name} is left out: {why}")
        for name, why in study.items()
        if isinstance(why, str)
    ]
    blocks.append(Paragraph(f"Shape file: `{learned.shape_file.name}`."))
    return Section("Per-layer widths (d_ffn / query heads)", tuple(blocks))


def confirm_section(rows: Sequence[ProfileRow]) -> Section:
    table = Table(
        ("profile", "seeds", "val ppl", "loss - isotropic (95% CI)", "verdict"),
        tuple(
            (
                r.label,
                str(r.seeds),
                f"{r.val_ppl_mean:.3f}",
                "" if r.val_loss_diff is None else r.val_loss_diff.describe(),
                r.verdict,
            )
            for r in rows
        ),
    )
    return Section(
        "Retrained from scratch (`--confirm`)",
        (table, Paragraph(f"The comparison's own report: `{CONFIRM_DIR}/report.md`.")),
    )


def write_learn_report(plan: LearnPlan, learned: LearnedShape) -> Path:
    """DIR/report.md and its figures, from the run and (if made) the confirmation."""
    out = plan.out
    study = study_shapes(plan)
    drawn = {name: shape for name, shape in study.items() if isinstance(shape, ModelShape)}
    plot_allocation({**drawn, plan.name: learned.landed.shape}, out / SHAPES_FIGURE)
    records = gates_records(out / RUN_DIR)
    plot_trajectory(records, plan.fix_step, out / GATES_FIGURE)
    rows = confirm_rows(out)
    sections = [summary_section(plan, learned, rows), widths_section(plan, learned, study)]
    if rows is not None:
        sections.append(confirm_section(rows))
    sections.append(Section("Figures", (Figures((Path(SHAPES_FIGURE), Path(GATES_FIGURE))),)))
    return atomic_write_text(out / REPORT_FILE, render_markdown(TITLE, sections))
