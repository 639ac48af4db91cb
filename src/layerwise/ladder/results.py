"""A trained ladder's results: its table rebuilt from the runs' records, and its report.

The fits and most of the report are the table's (`ladder.report`, which also serves `ladder fit`
on tables from elsewhere); what only a trained ladder knows is added here: how each size was
trained (N per profile, tokens, steps, LR) and the learning-rate sweep when there was one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from layerwise.ladder.fit import LadderFit
from layerwise.ladder.plan import TABLE_FILE, LadderPlan
from layerwise.ladder.run import read_record, read_sweep, sweep_edges
from layerwise.util.errors import UserError
from layerwise.util.render import Bullets, Figures, Paragraph, Section, Table

SWEEP_FIGURE = Path("figures") / "lr_sweep.png"


def ladder_records(plan: LadderPlan) -> list[dict[str, Any]]:
    """The record of every finished budget of the plan, in a stable order (OUT may hold others:
    a size or seed a later command left out; the sweep's runs live under lr-sweep/)."""
    records = [read_record(path) for path in sorted(plan.out.glob("*/*/seed*/budgets/*.json"))]
    return [record for record in records if in_plan(plan, record)]


def in_plan(plan: LadderPlan, record: Mapping[str, Any]) -> bool:
    ladder = plan.settings
    return (
        record.get("rung") in {rung.name for rung in plan.rungs}
        and record.get("profile") in ladder.profiles
        and record.get("seed") in ladder.seeds
        and record.get("tokens_per_param") in plan.budgets
    )


def write_ladder_table(plan: LadderPlan) -> Path:
    """ladder.csv: one row per finished run, rebuilt from the records every time."""
    from layerwise.ladder.table import write_table

    records = ladder_records(plan)
    if not records:
        raise UserError(
            f"{plan.out} holds no finished ladder run yet; run `layerwise ladder {plan.config} "
            f"--out {plan.out}` first"
        )
    return write_table(plan.out / TABLE_FILE, records)


def training_section(plan: LadderPlan, records: Sequence[Mapping[str, Any]]) -> Section:
    """How every size was trained: each profile's N (matched at the size), the LR, the tokens
    and steps of each budget, from the runs themselves."""
    rows = []
    for rung in plan.rungs:
        for profile in plan.settings.profiles:
            mine = [r for r in records if r["rung"] == rung.name and r["profile"] == profile]
            if not mine:
                continue
            by_budget = {r["tokens_per_param"]: r for r in mine}
            rows.append(
                (
                    rung.name,
                    profile,
                    f"{mine[0]['N']:,}",
                    f"{mine[0]['params_total']:,}",
                    f"{mine[0]['lr']:.3g}",
                    " / ".join(
                        f"{by_budget[b]['D']:,}" if b in by_budget else "-" for b in plan.budgets
                    ),
                    f"{len({r['seed'] for r in mine})}",
                )
            )
    ladder = plan.settings
    how = (
        "one warmup-stable-decay run per size, profile and seed, each smaller budget a cooldown "
        "branch from its stable phase (its loss is that of a separate run of its length)"
        if ladder.schedule == "branched"
        else "one run per budget with the config's schedule"
    )
    lr = (
        "the config's optim.lr at every size"
        if ladder.lr_rule == "config"
        else "OLMo's rule 0.0047 x (N / 108M)^(-1/3) at each size"
    )
    budgets = " / ".join(f"{b:g}" for b in plan.budgets)
    return Section(
        "How the ladder was trained",
        (
            Paragraph(
                f"{how}. N counts {ladder.count.replace('_', ' ')} parameters; every profile is "
                f"matched to {ladder.reference}'s parameter count at each size. Learning rate: "
                f"{lr}{' times each profile’s best sweep multiplier' if ladder.lr_sweep else ''}."
            ),
            Table(
                (
                    "Size",
                    "Profile",
                    "N",
                    "Params (all)",
                    "LR",
                    f"Tokens at {budgets} tokens/param",
                    "Seeds",
                ),
                tuple(rows),
            ),
        ),
    )


def sweep_section(plan: LadderPlan, sweep: Mapping[str, Any]) -> Section:
    """The sweep's losses per profile and multiplier, the choice, and the edge warnings."""
    from layerwise.util.plots import plot_curves

    losses: Mapping[str, Mapping[str, float]] = sweep["losses"]
    multipliers = sorted({float(m) for values in losses.values() for m in values})
    base = float(sweep["base_lr"])
    series = {
        profile: sorted((float(m) * base, loss) for m, loss in values.items())
        for profile, values in losses.items()
    }
    plot_curves(
        series,
        plan.out / SWEEP_FIGURE,
        title=f"Learning-rate sweep at {sweep['rung']} (largest budget, first seed)",
        xlabel="learning rate",
        ylabel="validation loss",
        log_x=True,
    )
    rows = tuple(
        (
            profile,
            *(f"{values[f'{m:g}']:.4f}" if f"{m:g}" in values else "-" for m in multipliers),
            f"x{sweep['best'][profile]:g} ({sweep['best'][profile] * base:.3g})",
        )
        for profile, values in losses.items()
    )
    edges = sweep_edges(plan, sweep["best"])
    return Section(
        "Learning-rate sweep",
        (
            Paragraph(
                f"Each profile at the smallest size ({sweep['rung']}), first seed, at each multiplier "
                f"of the rule's LR {base:.3g}; its best multiplier (by the largest budget's "
                "validation loss) is used at every size, so no profile wins only because the "
                "shared LR suits it."
            ),
            Table(("Profile", *(f"x{m:g}" for m in multipliers), "Best"), rows),
            *((Bullets(tuple(f"warning: {e}" for e in edges)),) if edges else ()),
            Figures((SWEEP_FIGURE,)),
        ),
    )


def write_ladder_report_of(plan: LadderPlan) -> LadderFit:
    """Fit the ladder's table and write its report (ladder.report), with how it was trained."""
    from layerwise.ladder.report import write_ladder_report
    from layerwise.ladder.table import read_table

    table = write_ladder_table(plan)
    records = ladder_records(plan)
    sweep = read_sweep(plan)
    extra = [training_section(plan, records), *([sweep_section(plan, sweep)] if sweep else [])]
    return write_ladder_report(
        read_table(table),
        plan.out,
        reference=plan.settings.reference,
        targets=plan.targets,
        bootstrap=plan.settings.bootstrap,
        extra_sections=extra,
        source=f"ladder {plan.out}",
    )
