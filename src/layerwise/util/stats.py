"""Paired comparisons over seeds: the mean difference, its Student-t interval, and the verdict.

Runs with the same seed share their data order and validation windows, so the seed-to-seed noise
that both a profile and the reference see cancels in their difference; pairing by seed is then
the honest test, and with the handful of seeds a study affords the interval must be Student's t,
not the normal one. The t quantile is computed here exactly (regularized incomplete beta, then
bisection) so that the report needs neither scipy nor torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

LEVEL = 0.95
"""The confidence level of every interval in a report."""

Direction = Literal["lower", "higher"]
"""Which way a metric is better: lower (loss, perplexity) or higher (accuracy)."""

BETTER, WORSE, UNDECIDED = "better", "worse", f"not distinguishable at {LEVEL:.0%}"


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's evaluation of the incomplete beta's continued fraction (Numerical Recipes 6.4)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    # The continued fraction converges fast only on one side of the mean; use the symmetry
    # I_x(a, b) = 1 - I_{1-x}(b, a) on the other.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection on the exact CDF (monotone, so it cannot fail)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class PairedDifference:
    """`row - reference` over the seeds both have: mean, 95% interval (None with one pair)."""

    mean: float
    low: float | None
    high: float | None
    pairs: int

    def verdict(self, direction: Direction) -> str:
        """ "better"/"worse" when the interval excludes zero, else "not distinguishable"."""
        if self.low is None or self.high is None or self.low <= 0.0 <= self.high:
            return UNDECIDED
        lower = self.high < 0.0
        return BETTER if lower == (direction == "lower") else WORSE

    def describe(self, spec: str = "+.4f") -> str:
        """`+0.0123 [-0.0040, +0.0286]`, or the mean alone with a note when no interval exists."""
        if self.low is None or self.high is None:
            return f"{self.mean:{spec}} (1 seed: no interval)"
        return f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def paired_difference(
    row: Mapping[int, float], reference: Mapping[int, float], level: float = LEVEL
) -> PairedDifference | None:
    """Mean of `row[seed] - reference[seed]` over shared seeds with its Student-t interval.

    None when no seed has both values. With one pair the interval is unknown (None bounds): a
    single difference says nothing about how much it varies.
    """
    seeds = sorted(set(row) & set(reference))
    differences = [row[s] - reference[s] for s in seeds]
    if not differences:
        return None
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return PairedDifference(mean, None, None, 1)
    half = t_quantile(0.5 + level / 2.0, len(differences) - 1) * statistics.stdev(differences)
    half /= math.sqrt(len(differences))
    return PairedDifference(mean, mean - half, mean + half, len(differences))


def ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank (as Spearman's correlation needs)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            result[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho, the Pearson correlation of the ranks; None where it is undefined (fewer
    than two values, or a constant list)."""
    if len(a) != len(b):
        raise ValueError(f"spearman needs lists of one length, got {len(a)} and {len(b)}")
    if len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    mean = (len(a) + 1) / 2  # ranks 1..n always average to this, ties included
    da, db = [r - mean for r in ra], [r - mean for r in rb]
    denominator = math.sqrt(sum(x * x for x in da) * sum(y * y for y in db))
    return (
        None if denominator == 0 else sum(x * y for x, y in zip(da, db, strict=True)) / denominator
    )


def kendall(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b (pairs tied in either list count as neither concordant nor discordant);
    None where it is undefined."""
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    dx = [_sign(a[i] - a[j]) for i, j in pairs]
    dy = [_sign(b[i] - b[j]) for i, j in pairs]
    n_x, n_y = sum(d != 0 for d in dx), sum(d != 0 for d in dy)
    if not n_x or not n_y:
        return None
    return sum(x * y for x, y in zip(dx, dy, strict=True)) / math.sqrt(n_x * n_y)


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)
