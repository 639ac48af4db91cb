"""The ladder's report: the answer first, then every number it rests on (the joint law with
its intervals and test, each profile's own law, the measured differences without any law, the
held-out rung) and the figures; fit.json holds the same numbers unrounded.

A report is rebuilt from the table alone, so `layerwise ladder fit` on another tool's runs
writes the same files as a ladder this tool trained; a caller adds its own sections (the
ladder's plan, an LR sweep) through `extra_sections`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerwise.ladder.answer import GUESS_FACTOR, TARGETS, Estimate, size_label
from layerwise.ladder.bootstrap import REPLICATES
from layerwise.ladder.figures import write_figures
from layerwise.ladder.fit import LadderFit, fit_ladder
from layerwise.ladder.law import HUBER_DELTA, LAW, LOCAL_STARTS
from layerwise.ladder.table import Point
from layerwise.util.files import atomic_write_json, atomic_write_text
from layerwise.util.render import (
    Bullets,
    Figures,
    Paragraph,
    Section,
    Table,
    render_html,
    render_markdown,
)
from layerwise.util.stats import LEVEL

TITLE = "Layer-wise scaling ladder"
CI = f"{LEVEL:.0%} CI"


@dataclass(frozen=True)
class LadderFiles:
    fit_json: Path
    markdown: Path
    html: Path
    figures: tuple[Path, ...]


def files_of(out: str | Path) -> LadderFiles:
    """Where `write_ladder_report` puts each file under `out`."""
    out = Path(out)
    names = ("loss_vs_n", "difference", "multiplier", "residuals")
    return LadderFiles(
        out / "fit.json",
        out / "report.md",
        out / "report.html",
        tuple(out / "figures" / f"{name}.png" for name in names),
    )


def write_ladder_report(
    points: Sequence[Point],
    out: str | Path,
    *,
    reference: str = "isotropic",
    targets: Sequence[tuple[float, float]] = TARGETS,
    bootstrap: int = REPLICATES,
    seed: int = 0,
    extra_sections: Sequence[Section] = (),
    source: str = "the table",
) -> LadderFit:
    """Fit the ladder and write fit.json, report.md, report.html and figures/ under `out`."""
    fit = fit_ladder(
        points, reference=reference, targets=targets, bootstrap=bootstrap, seed=seed, source=source
    )
    out = Path(out)
    files = files_of(out)
    figures = write_figures(fit, out)
    assert figures == files.figures, "files_of names what write_figures writes"
    atomic_write_json(files.fit_json, finite(fit.to_json()))
    sections = [*report_sections(fit, out, figures), *extra_sections, method_section(fit)]
    atomic_write_text(files.markdown, render_markdown(TITLE, sections))
    atomic_write_text(files.html, render_html(TITLE, sections))
    return fit


def finite(value: Any) -> Any:
    """`value` with NaN and infinities as null: strict JSON, which every reader of fit.json
    (jq, JavaScript) accepts; a degenerate fit's multiplier is one."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def report_sections(fit: LadderFit, out: Path, figures: Sequence[Path]) -> list[Section]:
    return [
        summary_section(fit),
        answer_section(fit),
        targets_section(fit),
        joint_section(fit),
        free_section(fit),
        differences_section(fit),
        held_out_section(fit),
        Section("Figures", (Figures(tuple(p.relative_to(out) for p in figures)),)),
    ]


def _n(value: float) -> str:
    return f"{value / 1e9:.3g}B" if value >= 1e9 else f"{value / 1e6:.3g}M"


def _ci(value: Estimate, spec: str = ".3f") -> str:
    return value.describe(spec)


def summary_section(fit: LadderFit) -> Section:
    points = fit.points
    rungs = len({p.rung for p in points})
    budgets = len({p.budget for p in points})
    seeds = len({p.seed for p in points})
    intro = (
        f"{len(points)} runs: {len(fit.layout.profiles)} profiles x {rungs} sizes "
        f"({_n(min(p.N for p in points))} to {_n(max(p.N for p in points))} parameters) x "
        f"{budgets} token budgets x up to {seeds} seeds, fitted to {LAW} with E, B and beta "
        f"shared and A and alpha per profile; every interval is the paired bootstrap's {CI} "
        f"over seeds. The effective parameter multiplier says how many times a profile's N a "
        f"`{fit.reference}` model needs to reach the same loss: above 1 the profile is better."
    )
    blocks: list[Paragraph | Bullets] = [Paragraph(intro)]
    if fit.spread is None:
        blocks.append(
            Paragraph(
                "No interval: every (size, budget) cell has one seed, so there is no seed-to-seed "
                "spread to resample and nothing is judged. Train each cell with 2 seeds or more."
            )
        )
    blocks.append(Bullets(tuple(s for a in fit.answers for s in a.sentences())))
    if fit.warnings:
        blocks.append(Bullets(tuple(f"warning: {w}" for w in fit.warnings)))
    return Section(None, tuple(blocks))


def answer_section(fit: LadderFit) -> Section:
    header: tuple[str, ...] = ("Profile", f"Multiplier at the largest rung [{CI}]", "Verdict")
    far = fit.answers[0].multipliers[1:] if fit.answers else ()
    header += tuple(f"at {m.label} (x{m.factor:,.0f})" for m in far)
    header += (f"alpha ratio [{CI}]", "Trend")
    rows = []
    for a in fit.answers:
        extrapolated = tuple(
            _ci(m.value) + (" (a guess)" if m.guess else "") for m in a.multipliers[1:]
        )
        rows.append(
            (
                a.profile,
                _ci(a.multipliers[0].value),
                a.verdict,
                *extrapolated,
                _ci(a.ratio),
                a.trend,
            )
        )
    return Section(
        f"The answer against {fit.reference}",
        (
            Table(header, tuple(rows)),
            Paragraph(
                "The columns after the verdict carry the law beyond the largest trained N by the "
                f"factor in brackets; beyond {GUESS_FACTOR:g} times the number is a guess, "
                "whatever its interval says. The alpha ratio above 1 means the multiplier "
                "grows with N."
            ),
        ),
    )


def targets_section(fit: LadderFit) -> Section:
    header = (
        "Profile",
        "Target",
        "Loss",
        f"{fit.reference} loss",
        f"Δ loss [{CI}]",
        f"Δ perplexity [{CI}]",
        f"Perplexity change [{CI}]",
    )
    rows = tuple(
        (
            a.profile,
            f"{size_label(t.N)} x {t.D / 1e9:g}B tokens (x{t.factor:,.1f})"
            + (" (a guess)" if t.factor > GUESS_FACTOR else ""),
            _ci(t.loss, ".4f"),
            _ci(t.reference_loss, ".4f"),
            _ci(t.difference, "+.4f"),
            _ci(t.ppl_difference, "+.3f"),
            _ci(t.ppl_change_pct, "+.2f") + " %",
        )
        for a in fit.answers
        for t in a.targets
    )
    return Section(
        "Predicted at the targets",
        (
            Paragraph(
                "Validation loss and perplexity the joint law predicts at each target's N and D "
                "(the factor is N over the largest trained N); a negative difference is a lower "
                "loss than the reference's."
            ),
            Table(header, rows),
        ),
    )


def joint_section(fit: LadderFit) -> Section:
    diagnostics = fit.joint.diagnostics()
    rows = tuple((name, _ci(value, ".5g")) for name, value in fit.joint_estimates().items())
    lrt = fit.lrt
    share = (
        ""
        if fit.spread is None
        else f" {fit.spread.at_bound.mean():.1%} of the {fit.spread.replicates} bootstrap "
        f"refits ended with a parameter at a bound, {fit.spread.converged.mean():.1%} converged."
    )
    at_bound = ", ".join(diagnostics["at_bound"]) or "none"
    return Section(
        "The joint law",
        (
            Table(("Parameter", f"Value [{CI}]"), rows),
            Paragraph(
                f"L-BFGS-B {'converged' if diagnostics['converged'] else 'did NOT converge'} "
                f"({diagnostics['message']}; {diagnostics['iterations']} iterations, projected "
                f"gradient norm {diagnostics['gradient_norm']:.2e}); parameters at a bound: "
                f"{at_bound}.{share}"
            ),
            Paragraph(
                "Shared E, B and beta against a free law per profile: likelihood-ratio statistic "
                f"{lrt.statistic:.3f} on {lrt.df} degrees of freedom, p = {lrt.p_value:.3g} "
                "(Gaussian likelihood of the log-loss residuals with one variance, both models "
                "refitted by least squares; runs of one seed are correlated, so read it as a "
                "guide). A small p says the profiles do not share E, B or beta, and the "
                "multiplier, which assumes they do, should be read with the free laws below."
            ),
        ),
    )


def free_section(fit: LadderFit) -> Section:
    rows = []
    for profile, law in fit.free.items():
        params, diagnostics = law.params(), law.diagnostics()
        rows.append(
            (
                profile,
                f"{params['E']:.4g}",
                f"{params['A'][profile]:.4g}",
                f"{params['B']:.4g}",
                f"{params['alpha'][profile]:.4f}",
                f"{params['beta']:.4f}",
                "yes" if diagnostics["converged"] else "NO",
                f"{diagnostics['gradient_norm']:.1e}",
                ", ".join(diagnostics["at_bound"]) or "-",
            )
        )
    header = ("Profile", "E", "A", "B", "alpha", "beta", "Converged", "Grad norm", "At bound")
    return Section("Each profile's own law", (Table(header, tuple(rows)),))


def differences_section(fit: LadderFit) -> Section:
    rows = tuple(
        (
            d.rung,
            _n(d.N),
            f"{d.tokens_per_param:.3g}",
            d.profile,
            d.difference.describe(),
            d.difference.verdict("lower"),
        )
        for d in fit.differences
    )
    trends = tuple(
        f"{t.profile}, budget {t.budget + 1}: slope {t.slope:+.4f}"
        + ("" if t.low is None else f" [{t.low:+.4f}, {t.high:+.4f}]")
        + f" nats per e-fold of N over {t.points} paired runs: {t.verdict}"
        for t in fit.trends
    )
    header = ("Rung", "N", "Tokens/param", "Profile", f"Δ loss [{CI}, paired t]", "Verdict")
    return Section(
        "Measured differences, no law",
        (
            Paragraph(
                f"Each profile's final loss minus {fit.reference}'s at the same rung, budget and "
                "seed, with its Student-t interval over seeds, and the least-squares slope of "
                "those differences in log N. A constant multiplier shrinks the loss difference "
                "as the model term A/N^alpha shrinks, so a rising (less negative) difference is "
                "what a steady gain looks like."
            ),
            Table(header, rows),
            Bullets(trends),
        ),
    )


def held_out_section(fit: LadderFit) -> Section:
    held = fit.held_out
    if held.skipped is not None:
        return Section(
            "Held-out rung",
            (Paragraph(f"Not checked: {held.skipped}. Add a size to hold one out."),),
        )

    def yes(value: bool | None) -> str:
        return {True: "yes", False: "no", None: "-"}[value]

    rows = tuple(
        (
            c.profile,
            str(c.budget + 1),
            f"{c.observed:.4f}"
            + ("" if c.observed_half is None else f" ± {c.observed_half:.4f}")
            + f" ({c.seeds} seeds)",
            f"{c.predicted:.4f}" + ("" if c.low is None else f" [{c.low:.4f}, {c.high:.4f}]"),
            f"{c.error:+.4f} ({100 * c.error / c.observed:+.2f} %)",
            yes(c.inside),
            yes(c.consistent),
        )
        for c in held.cells
    )
    inside = [c.inside for c in held.cells if c.inside is not None]
    consistent = [c.consistent for c in held.cells if c.consistent is not None]
    header = (
        "Profile",
        "Budget",
        f"Measured [± {CI}]",
        f"Predicted [{CI}]",
        "Error",
        "Inside",
        "Within both",
    )
    return Section(
        "Held-out rung",
        (
            Paragraph(
                f"The joint law fitted without rung {held.rung} predicts its mean loss. "
                f"{sum(inside)} of {len(inside)} measured means fall inside the prediction's "
                "interval, which holds the fit's uncertainty but not the measured mean's own "
                f"seed noise; {sum(consistent)} of {len(consistent)} errors are within both "
                "(their half-widths added in quadrature)."
            ),
            Table(header, rows),
        ),
    )


def method_section(fit: LadderFit) -> Section:
    replicates = "no bootstrap" if fit.spread is None else f"{fit.spread.replicates} replicates"
    return Section(
        "Method",
        (
            Paragraph(
                f"{LAW}, fitted as Epoch AI's replication of Chinchilla (Besiroglu et al. 2024, "
                f"arXiv 2404.10102): the Huber loss (delta {HUBER_DELTA:g}) of log L - LSE(e, "
                "a - alpha log N, b - beta log D) minimised by L-BFGS-B from the best "
                f"{LOCAL_STARTS} of Hoffmann et al.'s 4,500 grid points. Paired bootstrap "
                f"({replicates}, seed {'-' if fit.spread is None else fit.spread.seed}): the "
                "seeds of each (rung, budget) cell drawn with replacement once for every "
                "profile, all profiles refitted jointly each time from the full fit's optimum, "
                "percentile intervals. fit.json holds every number unrounded."
            ),
        ),
    )
