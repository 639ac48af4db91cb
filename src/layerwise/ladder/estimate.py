"""What a ladder will cost before it starts: each rung's N, budgets, steps, LR and FLOPs.

`layerwise plan CONFIG --ladder` prints it with the time at a stated MFU, and the ladder's
report opens with the same table, so what was planned and what was fitted sit side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from layerwise.ladder.plan import LadderPlan, RungSize, trained_steps
from layerwise.ladder.run import Planned
from layerwise.profiles.shape import flops_per_token
from layerwise.training.plan import duration
from layerwise.training.shape import config_shape
from layerwise.util.render import Table


@dataclass(frozen=True)
class RungCost:
    """One rung: its reference N and budgets, and the FLOPs of all its runs (every profile and
    seed, each budget as the schedule trains it)."""

    size: RungSize
    profiles: int
    seeds: int
    flops: float
    tokens: int
    """Tokens trained over all the rung's runs."""


def run_flops_per_token(planned: Planned) -> int:
    config = planned.config
    assert config.model.vocab_size is not None, "with_data_vocab fills it in"
    shape, _ = config_shape(config, config.model.vocab_size)
    return flops_per_token(shape, config.data.seq_len)


def rung_costs(
    plan: LadderPlan, sizes: Sequence[RungSize], runs: Sequence[Planned]
) -> list[RungCost]:
    """The cost of each rung: per (profile, seed), its run's FLOPs per token times the tokens
    its budgets train (branched: the smallest, then each larger one from a decay start)."""
    costs = []
    for size in sizes:
        mine = [p for p in runs if p.run.size == size and p.run.budget == 0]
        tokens = [trained_steps(plan, size, p.config) * size.tokens_per_step for p in mine]
        costs.append(
            RungCost(
                size=size,
                profiles=len(plan.settings.profiles),
                seeds=len(plan.settings.seeds),
                flops=sum(t * run_flops_per_token(p) for t, p in zip(tokens, mine, strict=True)),
                tokens=sum(tokens),
            )
        )
    return costs


def cost_table(plan: LadderPlan, costs: Sequence[RungCost]) -> Table:
    rows = tuple(
        (
            cost.size.rung.name,
            f"{cost.size.n:,}",
            " / ".join(f"{steps * cost.size.tokens_per_step:,}" for steps in cost.size.steps),
            " / ".join(f"{steps:,}" for steps in cost.size.steps),
            f"{cost.size.lr:.3g}",
            f"{cost.tokens:,}",
            f"{cost.flops:.3g}",
        )
        for cost in costs
    )
    budgets = " / ".join(f"{b:g}" for b in plan.budgets)
    header = (
        "Size",
        f"N ({plan.settings.reference})",
        f"Tokens at {budgets} tokens/param",
        "Steps",
        "LR",
        "Tokens trained (all runs)",
        "FLOPs",
    )
    return Table(header, rows)


def render_costs(plan: LadderPlan, costs: Sequence[RungCost]) -> str:
    """What the ladder trains, in a line, and the cost table: what `layerwise ladder` prints
    before its first run."""
    from layerwise.util.render import markdown_table

    ladder = plan.settings
    runs = len(costs) * len(ladder.profiles) * len(ladder.seeds)
    how = (
        "one WSD run per size, profile and seed, with a cooldown branch at each smaller budget"
        if ladder.schedule == "branched"
        else "one run per budget"
    )
    return "\n".join(
        [
            f"ladder: {', '.join(ladder.profiles)} at {len(costs)} sizes x "
            f"{len(plan.budgets)} budgets x {len(ladder.seeds)} seed(s); {how} ({runs} runs, "
            f"{runs * len(plan.budgets)} results)",
            markdown_table(cost_table(plan, costs)),
        ]
    )


def render_estimate(
    plan: LadderPlan, costs: Sequence[RungCost], mfu: float, peak_tflops: float, gpus: int
) -> str:
    """The cost table and the ladder's total time at `mfu` of `peak_tflops` on `gpus`."""
    total = sum(cost.flops for cost in costs)
    seconds = total / (mfu * peak_tflops * 1e12 * gpus)
    return (
        f"{render_costs(plan, costs)}\ntotal: {total:.3g} FLOPs; at {mfu:.0%} MFU of "
        f"{peak_tflops:g} TFLOPs on {gpus} GPU(s): {duration(seconds)}"
    )
