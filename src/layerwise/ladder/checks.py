"""The model-light check beside the law: at each rung and budget, each profile's loss minus the
reference's, paired by seed (the comparison's Student-t statistics), and the trend of that
difference in log N.

It assumes no functional form, so where it and the law disagree the law is the one to doubt:
a law can extrapolate a difference the measured rungs never show.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from layerwise.ladder.table import Point, group_cells
from layerwise.util.stats import LEVEL, PairedDifference, paired_difference, t_quantile


@dataclass(frozen=True)
class CellDifference:
    """A profile against the reference at one rung and budget, paired over shared seeds."""

    profile: str
    rung: str
    budget: int
    N: float
    """The reference's mean N at this rung."""
    tokens_per_param: float
    """The reference's D / N in this cell."""
    difference: PairedDifference
    per_seed: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        diff = self.difference
        return {
            "profile": self.profile,
            "rung": self.rung,
            "budget": self.budget,
            "N": self.N,
            "tokens_per_param": self.tokens_per_param,
            "loss_difference": diff.mean,
            "low": diff.low,
            "high": diff.high,
            "pairs": diff.pairs,
            "verdict": diff.verdict("lower"),
        }


def paired_differences(points: Sequence[Point], reference: str) -> list[CellDifference]:
    """Every (profile, rung, budget) cell that shares a seed with the reference's cell."""
    cells = group_cells(points)
    found = []
    for (profile, rung_index, budget), members in cells.items():
        ref = cells.get((reference, rung_index, budget))
        if profile == reference or ref is None:
            continue
        mine, theirs = {p.seed: p.loss for p in members}, {p.seed: p.loss for p in ref}
        difference = paired_difference(mine, theirs)
        if difference is None:
            continue
        found.append(
            CellDifference(
                profile,
                members[0].rung,
                budget,
                statistics.fmean(p.N for p in ref),
                statistics.fmean(p.D / p.N for p in ref),
                difference,
                tuple(mine[s] - theirs[s] for s in sorted(set(mine) & set(theirs))),
            )
        )
    return found


@dataclass(frozen=True)
class Trend:
    """Least-squares slope of the per-seed differences against log N, per profile and budget:
    the change in the loss difference per e-fold of N (negative: the profile gains with size)."""

    profile: str
    budget: int
    slope: float
    low: float | None
    high: float | None
    points: int

    @property
    def verdict(self) -> str:
        if self.low is None or self.high is None:
            return "too few points for an interval"
        if self.high < 0:
            return "the difference falls with size"
        if self.low > 0:
            return "the difference rises with size"
        return "no detectable trend"

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "budget": self.budget,
            "slope_per_log_n": self.slope,
            "low": self.low,
            "high": self.high,
            "points": self.points,
            "verdict": self.verdict,
        }


def difference_trends(differences: Sequence[CellDifference]) -> list[Trend]:
    """A slope with its Student-t interval (n - 2 degrees of freedom) for each profile and
    budget measured at two sizes or more; seeds at one size are replicates of one x."""
    trends = []
    for profile in dict.fromkeys(d.profile for d in differences):
        for budget in sorted({d.budget for d in differences if d.profile == profile}):
            cells = [d for d in differences if (d.profile, d.budget) == (profile, budget)]
            xs = [math.log(c.N) for c in cells for _ in c.per_seed]
            ys = [y for c in cells for y in c.per_seed]
            if len(set(xs)) < 2:
                continue
            trends.append(_slope(profile, budget, xs, ys))
    return trends


def _slope(profile: str, budget: int, xs: Sequence[float], ys: Sequence[float]) -> Trend:
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    if len(xs) < 3:
        return Trend(profile, budget, slope, None, None, len(xs))
    residual = sum(
        (y - mean_y - slope * (x - mean_x)) ** 2 for x, y in zip(xs, ys, strict=True)
    ) / (len(xs) - 2)
    half = t_quantile(0.5 + LEVEL / 2, len(xs) - 2) * math.sqrt(residual / sxx)
    return Trend(profile, budget, slope, slope - half, slope + half, len(xs))
