"""How sure the fit is: a paired bootstrap over seeds, and the largest rung predicted from the
others.

The bootstrap resamples seeds, not points: within each (rung, budget) cell the seed indices are
drawn with replacement once and the same draw is applied to every profile, so a profile and the
reference that shared a seed's data order stay paired, as the paired t-test pairs them. Each
replicate refits all profiles jointly, warm-started from the full data's optimum (one L-BFGS-B
run instead of a grid search), and the intervals are the 2.5th and 97.5th percentiles. A cell
with one seed contributes the same run to every replicate, and a table with one seed per cell
has no seed-to-seed spread to resample: then there is no interval at all, and the report says
to add seeds rather than print a confident one.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from layerwise.ladder.law import (
    Fit,
    Layout,
    Observations,
    fit_from,
    fit_law,
    log_law,
    one_blas_thread,
)
from layerwise.ladder.table import Point, check_ladder, group_cells
from layerwise.util.errors import UserError
from layerwise.util.stats import LEVEL, t_quantile

REPLICATES = 1000


@dataclass(frozen=True)
class Resampler:
    """Each point's (rung, budget) cell and the slot of its seed among that cell's seeds."""

    cell: np.ndarray
    slot: np.ndarray
    seeds: tuple[int, ...]
    """How many seeds each cell has, over all profiles."""

    @classmethod
    def of(cls, points: Sequence[Point]) -> Resampler:
        keys = sorted({(p.rung_index, p.budget) for p in points})
        seeds = {
            key: sorted({p.seed for p in points if (p.rung_index, p.budget) == key}) for key in keys
        }
        return cls(
            np.array([keys.index((p.rung_index, p.budget)) for p in points], dtype=np.intp),
            np.array(
                [seeds[(p.rung_index, p.budget)].index(p.seed) for p in points], dtype=np.intp
            ),
            tuple(len(seeds[key]) for key in keys),
        )

    @property
    def resamplable(self) -> bool:
        return max(self.seeds) >= 2

    def weights(self, rng: np.random.Generator, replicates: int) -> np.ndarray:
        """(replicates, points): how often each point's seed was drawn in its cell."""
        weights = np.empty((replicates, self.cell.size))
        for index, count in enumerate(self.seeds):
            draws = rng.integers(0, count, size=(replicates, count))
            counts = (draws[:, :, None] == np.arange(count)).sum(axis=1)
            members = self.cell == index
            weights[:, members] = counts[:, self.slot[members]]
        return weights


@dataclass(frozen=True, eq=False)
class Bootstrap:
    """The refitted parameter vectors of every replicate, and how each refit ended."""

    thetas: np.ndarray
    at_bound: np.ndarray
    """Per replicate: did any parameter end on a bound."""
    converged: np.ndarray
    seed: int

    @property
    def replicates(self) -> int:
        return int(self.thetas.shape[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "replicates": self.replicates,
            "seed": self.seed,
            "level": LEVEL,
            "resampling": "seeds within each (rung, budget) cell, one draw for every profile",
            "share_at_bound": float(self.at_bound.mean()),
            "share_converged": float(self.converged.mean()),
        }


def paired_bootstrap(
    fit: Fit, points: Sequence[Point], replicates: int = REPLICATES, seed: int = 0
) -> Bootstrap | None:
    """Refit `fit`'s layout on `replicates` paired resamples of `points`; None when no cell has
    two seeds (nothing to resample)."""
    resampler = Resampler.of(points)
    if not resampler.resamplable:
        return None
    obs = Observations.of(points, fit.layout)
    weights = resampler.weights(np.random.default_rng(seed), replicates)
    with one_blas_thread():
        refits = [fit_from(fit.theta, fit.layout, obs, weights=w) for w in weights]
    return Bootstrap(
        thetas=np.array([refit.theta for refit in refits]),
        at_bound=np.array([bool(refit.at_bound) for refit in refits]),
        converged=np.array([refit.success for refit in refits]),
        seed=seed,
    )


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the replicates (axis 0), ignoring undefined values; NaN where
    no replicate defines one (a degenerate law's infinite multiplier), without numpy's warning."""
    tail = 50.0 * (1.0 - level)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        low, high = np.nanpercentile(values, [tail, 100.0 - tail], axis=0)
    return low, high


@dataclass(frozen=True)
class HeldOutCell:
    """One profile at the held-out rung and one budget: observed mean loss against predicted."""

    profile: str
    budget: int
    N: float
    D: float
    seeds: int
    observed: float
    observed_half: float | None
    """Half the Student-t 95% interval of the measured mean over seeds (None with one seed)."""
    predicted: float
    low: float | None
    high: float | None

    @property
    def error(self) -> float:
        return self.predicted - self.observed

    @property
    def inside(self) -> bool | None:
        """Is the measured mean inside the prediction's interval (the fit's uncertainty)?"""
        if self.low is None or self.high is None:
            return None
        return self.low <= self.observed <= self.high

    @property
    def consistent(self) -> bool | None:
        """Is the error within both uncertainties, the fit's and the measured mean's seed
        noise, their 95% half-widths added in quadrature? The honest check with few seeds,
        where the measured mean itself moves by as much as the prediction's interval."""
        if self.low is None or self.high is None or self.observed_half is None:
            return None
        return abs(self.error) <= math.hypot((self.high - self.low) / 2, self.observed_half)

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "budget": self.budget,
            "N": self.N,
            "D": self.D,
            "seeds": self.seeds,
            "observed_loss": self.observed,
            "predicted_loss": self.predicted,
            "error": self.error,
            "relative_error": self.error / self.observed,
            "observed_half_width": self.observed_half,
            "low": self.low,
            "high": self.high,
            "inside_interval": self.inside,
            "consistent_with_seed_noise": self.consistent,
        }


@dataclass(frozen=True)
class HeldOut:
    """The largest rung predicted by a joint fit of the others, or why it was not."""

    rung: str
    cells: tuple[HeldOutCell, ...]
    fit: Fit | None
    skipped: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "rung": self.rung,
            "skipped": self.skipped,
            "fit": None if self.fit is None else self.fit.diagnostics(),
            "cells": [cell.to_json() for cell in self.cells],
        }


def held_out(
    points: Sequence[Point],
    layout: Layout,
    reference: str,
    replicates: int = REPLICATES,
    seed: int = 0,
    start: np.ndarray | None = None,
) -> HeldOut:
    """Fit without the largest rung, then predict each of its cells' mean loss with the
    bootstrap's interval of that prediction. `start` (the full fit) joins the grid's starts."""
    top = max(p.rung_index for p in points)
    rung = next(p.rung for p in points if p.rung_index == top)
    rest = [p for p in points if p.rung_index != top]
    try:
        check_ladder(rest, reference, f"without rung {rung}")
    except UserError as exc:  # what the remaining rungs lack, in check_ladder's words
        return HeldOut(rung, (), None, str(exc))
    obs = Observations.of(rest, layout)
    fit = fit_law(layout, obs, () if start is None else (start,))
    spread = paired_bootstrap(fit, rest, replicates, seed)
    cells = []
    for (profile, _, budget), members in group_cells(points).items():
        if members[0].rung_index != top:
            continue
        losses = [p.loss for p in members]
        log_n = np.array([np.log(np.mean([p.N for p in members]))])
        log_d = np.array([np.log(np.mean([p.D for p in members]))])
        index = np.array([layout.profiles.index(profile)])
        predicted = float(np.exp(log_law(fit.theta, layout, log_n, log_d, index))[0])
        low = high = None
        if spread is not None:
            draws = np.exp(log_law(spread.thetas, layout, log_n, log_d, index))[:, 0]
            low, high = (float(v) for v in interval(draws))
        cells.append(
            HeldOutCell(
                profile,
                budget,
                float(np.exp(log_n[0])),
                float(np.exp(log_d[0])),
                len(members),
                statistics.fmean(losses),
                _half_width(losses),
                predicted,
                low,
                high,
            )
        )
    return HeldOut(rung, tuple(cells), fit, None)


def _half_width(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    scale = statistics.stdev(values) / math.sqrt(len(values))
    return t_quantile(0.5 + LEVEL / 2, len(values) - 1) * scale
