"""A ladder fitted end to end: the table checked, each profile's own law, the joint law and its
likelihood-ratio test, the paired bootstrap, the held-out rung, the model-light check and the
answer, gathered in one `LadderFit` that `to_json()` writes as fit.json.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from layerwise.ladder.answer import TARGETS, Estimate, ProfileAnswer, answer, estimate
from layerwise.ladder.bootstrap import REPLICATES, Bootstrap, HeldOut, held_out, paired_bootstrap
from layerwise.ladder.checks import CellDifference, Trend, difference_trends, paired_differences
from layerwise.ladder.law import (
    HUBER_DELTA,
    LAW,
    LOCAL_STARTS,
    Fit,
    Layout,
    LikelihoodRatio,
    Observations,
    fit_law,
    likelihood_ratio,
    require_scipy,
)
from layerwise.ladder.table import Point, check_ladder, group_cells, profiles_of
from layerwise.util.errors import UserError

FEW_SEEDS = 3
"""Below this many seeds per cell the paired bootstrap's intervals are too narrow to trust."""


@dataclass(frozen=True, eq=False)
class LadderFit:
    points: tuple[Point, ...]
    reference: str
    layout: Layout
    """Profiles with the reference first, in the joint law's parameter order."""
    free: dict[str, Fit]
    joint: Fit
    lrt: LikelihoodRatio
    spread: Bootstrap | None
    differences: tuple[CellDifference, ...]
    trends: tuple[Trend, ...]
    held_out: HeldOut
    answers: tuple[ProfileAnswer, ...]

    @property
    def warnings(self) -> tuple[str, ...]:
        """What makes the intervals less than they claim; said beside the answer."""
        fewest = min(len(members) for members in group_cells(self.points).values())
        if not 2 <= fewest < FEW_SEEDS:
            return ()
        draws = math.comb(2 * fewest - 1, fewest)
        return (
            f"only {fewest} seeds in some (size, budget) cells: the bootstrap can draw just "
            f"{draws} distinct resamples of such a cell, so its intervals are narrower than the "
            f"seed noise warrants (the coverage test uses 4 seeds); read the verdicts as "
            f"provisional, trust the measured differences' Student-t intervals more, and train "
            f"{FEW_SEEDS} or more seeds",
        )

    def joint_estimates(self) -> dict[str, Estimate]:
        """E, B, beta, and A and alpha per profile, each with its bootstrap interval."""
        layout = self.layout
        columns = {"E": 0, "B": 1, "beta": 2}
        columns |= {f"A[{p}]": layout.a(p) for p in layout.profiles}
        columns |= {f"alpha[{p}]": layout.alpha(p) for p in layout.profiles}
        found = {}
        for name, column in columns.items():
            exponential = not name.startswith(("alpha", "beta"))

            def quantity(theta: np.ndarray, column: int = column, e: bool = exponential) -> Any:
                return np.exp(theta[..., column]) if e else theta[..., column]

            found[name] = estimate(quantity, self.joint.theta, self.spread)
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "law": LAW,
            "method": {
                "loss": f"Huber (delta {HUBER_DELTA:g}) of log L - LSE(e, a - alpha log N, "
                "b - beta log D)",
                "optimizer": f"L-BFGS-B from the best {LOCAL_STARTS} of Hoffmann et al.'s "
                "4,500 grid points",
                "reference": "Besiroglu et al. 2024, arXiv 2404.10102",
            },
            "reference": self.reference,
            "profiles": list(self.layout.profiles),
            "points": len(self.points),
            "rungs": rungs_of(self.points),
            "free": {
                p: {"params": fit.params(), "diagnostics": fit.diagnostics()}
                for p, fit in self.free.items()
            },
            "joint": {
                "params": self.joint.params(),
                "intervals": {k: v.to_json() for k, v in self.joint_estimates().items()},
                "diagnostics": self.joint.diagnostics(),
            },
            "likelihood_ratio": self.lrt.to_json(),
            "bootstrap": None if self.spread is None else self.spread.to_json(),
            "paired_differences": [d.to_json() for d in self.differences],
            "difference_trends": [t.to_json() for t in self.trends],
            "held_out": self.held_out.to_json(),
            "answer": [a.to_json() for a in self.answers],
            "warnings": list(self.warnings),
        }


def rungs_of(points: Sequence[Point]) -> list[dict[str, Any]]:
    """Each rung's label, median N and number of runs, smallest first."""
    labels = sorted({(p.rung_index, p.rung) for p in points})
    return [
        {
            "rung": label,
            "median_N": statistics.median(p.N for p in points if p.rung_index == index),
            "runs": sum(p.rung_index == index for p in points),
        }
        for index, label in labels
    ]


def fit_ladder(
    points: Sequence[Point],
    *,
    reference: str = "isotropic",
    targets: Sequence[tuple[float, float]] = TARGETS,
    bootstrap: int = REPLICATES,
    seed: int = 0,
    source: str = "the table",
) -> LadderFit:
    """Everything fitted from a table of runs (`source` names it in errors)."""
    require_scipy()
    check_ladder(points, reference, source)
    if bootstrap < 1:
        raise UserError(f"bootstrap replicates must be at least 1, got {bootstrap}")
    for n, d in targets:
        if not (n > 0 and d > 0):
            raise UserError(f"target N:D {n:g}:{d:g} must have both above 0")
    profiles = profiles_of(points)
    layout = Layout((reference, *[p for p in profiles if p != reference]))
    free = {}
    for profile in layout.profiles:
        mine = [p for p in points if p.profile == profile]
        single = Layout((profile,))
        free[profile] = (
            fit_law(single, Observations.of(mine, single)),
            Observations.of(mine, single),
        )
    obs = Observations.of(points, layout)
    joint = fit_law(layout, obs, [_joint_start(layout, {p: f for p, (f, _) in free.items()})])
    spread = paired_bootstrap(joint, points, bootstrap, seed)
    differences = paired_differences(points, reference)
    trained_max_n = max(p.N for p in points)
    top = max(p.rung_index for p in points)
    answers = []
    for profile in layout.profiles[1:]:
        largest = [p for p in points if p.profile == profile and p.rung_index == top]
        answers.append(
            answer(
                layout,
                joint.theta,
                spread,
                profile,
                reference,
                (largest[0].rung, statistics.fmean(p.N for p in largest)),
                trained_max_n,
                targets,
            )
        )
    return LadderFit(
        points=tuple(points),
        reference=reference,
        layout=layout,
        free={p: f for p, (f, _) in free.items()},
        joint=joint,
        lrt=likelihood_ratio(joint, obs, list(free.values())),
        spread=spread,
        differences=tuple(differences),
        trends=tuple(difference_trends(differences)),
        held_out=held_out(points, layout, reference, bootstrap, seed, joint.theta),
        answers=tuple(answers),
    )


def _joint_start(layout: Layout, free: dict[str, Fit]) -> np.ndarray:
    """A start for the joint law from the free ones: each profile's a and alpha, the median of
    their e, b and beta."""
    shared = np.median([fit.theta[:3] for fit in free.values()], axis=0)
    a = [free[p].theta[3] for p in layout.profiles]
    alpha = [free[p].theta[4] for p in layout.profiles]
    return np.concatenate([shared, a, alpha])
