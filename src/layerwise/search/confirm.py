"""`--confirm K`: judge the found shapes on fresh runs, not on the search's own numbers.

The best K sampled shapes and the five baselines are retrained at the config's full budget
(its own schedule, not the search's rungs) with several seeds through `layerwise compare`'s
machinery, every shape rescaled to the reference's size, and its report is written in
DIR/confirm/. A found shape is named `found-1` .. `found-K` there (best first); its per-layer
multipliers are passed to the comparison as a custom profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import optuna

from layerwise.compare.cells import ComparisonPlan
from layerwise.compare.run import make_plan
from layerwise.search.plan import BASELINES, SearchPlan
from layerwise.search.report import best_found
from layerwise.search.space import Shape
from layerwise.util.errors import UserError

CONFIRM_DIR = "confirm"
MIN_SEEDS = 3


def found_shapes(study: optuna.Study, k: int) -> dict[str, tuple[str, ...]]:
    """`found-i` -> the config overrides of the i-th best sampled shape."""
    best = best_found(study, k)
    if not best:
        raise UserError(
            "--confirm: no sampled shape has finished yet (only baselines or nothing); run more "
            "--trials first"
        )
    return {
        f"found-{i + 1}": Shape(
            tuple(t.user_attrs["ffn"]), tuple(t.user_attrs["qkv"]), bool(t.user_attrs["frame"])
        ).overrides()
        for i, t in enumerate(best)
    }


def confirm_plan(
    study: optuna.Study, plan: SearchPlan, out: Path, k: int, seeds: Sequence[int]
) -> ComparisonPlan:
    """The comparison of the top K shapes and the five baselines, at least three seeds."""
    if len(seeds) < MIN_SEEDS:
        raise UserError(
            f"--confirm-seeds: give at least {MIN_SEEDS} seeds (got {len(seeds)}); one seed "
            "cannot separate a better shape from a lucky one"
        )
    shapes = found_shapes(study, k)
    return make_plan(
        config=plan.config,
        profiles=(*BASELINES, *shapes),
        seeds=seeds,
        out=out / CONFIRM_DIR,
        match=plan.reference,
        match_by=plan.base().model.match_by,
        overrides=plan.overrides,
        shapes=shapes,
    )
