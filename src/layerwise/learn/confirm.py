"""`--confirm K`: judge the learned shape on fresh runs, not on the supernet's own numbers.

The learned shape and the study's five are trained from scratch with K seeds through
`layerwise compare`'s machinery, every one rescaled to the learned shape's target, in
DIR/confirm/; its paired intervals say whether the learned shape beat isotropic.
"""

from __future__ import annotations

from collections.abc import Sequence

from layerwise.compare.cells import ComparisonPlan
from layerwise.compare.run import make_plan
from layerwise.learn.run import CONFIRM_DIR, LearnedShape, LearnPlan
from layerwise.profiles.recipes import SHAPES
from layerwise.profiles.shapefile import profile_overrides
from layerwise.util.errors import UserError

MIN_SEEDS = 2


def learned_comparison(
    plan: LearnPlan, learned: LearnedShape, seeds: Sequence[int]
) -> ComparisonPlan:
    """The comparison of the learned shape and the five, all at the learned target."""
    if len(seeds) < MIN_SEEDS:
        raise UserError(
            f"--confirm {len(seeds)}: give at least {MIN_SEEDS} seeds; a paired interval needs "
            "two, and three or more separate a better shape from a lucky one"
        )
    if plan.metric != "params":
        raise UserError(
            "--confirm matches parameter counts; with learn.target_flops, compare the shape "
            f"yourself: layerwise compare CONFIG --profiles isotropic,{learned.shape_file} "
            "--match-by flops"
        )
    return make_plan(
        config=plan.config_path,
        profiles=(*SHAPES, plan.name),
        seeds=seeds,
        out=plan.out / CONFIRM_DIR,
        match=None,
        overrides=(*plan.overrides, "model.match=null", f"model.target_params={plan.target}"),
        shapes={plan.name: profile_overrides(str(learned.shape_file))},
    )
