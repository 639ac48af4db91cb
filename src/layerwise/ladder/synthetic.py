"""Ladders made from a known law: what the fit's tests, the benchmark and the docs fit, so that
the truth every number should recover is known.

Each run's loss is the profile's law times exp(noise): a seed effect shared by every profile
at that (rung, budget, seed), as a shared data order gives, plus each run's own part. A
profile's N is the reference's times `size_ratio` (profiles matched to one size land near, not
on, each other's parameter count) and its law is the reference's with N scaled by `effective`:
an `effective` of 1.3 makes the profile's true multiplier 1.3 at every size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from layerwise.ladder.table import Point, points_from_records

EPOCH = {"E": 1.82, "A": 482.0, "B": 2085.0, "alpha": 0.348, "beta": 0.366}
"""Epoch AI's refit of Chinchilla's law (Besiroglu et al. 2024)."""


@dataclass(frozen=True)
class SyntheticProfile:
    name: str
    effective: float = 1.0
    """The law is the reference's at effective * N: its true parameter multiplier."""
    alpha: float | None = None
    """Its own exponent, for a multiplier that changes with size (default the law's)."""
    size_ratio: float = 1.0


def synthetic_points(
    profiles: Sequence[SyntheticProfile],
    sizes: Sequence[float],
    tokens_per_param: Sequence[float],
    seeds: int,
    *,
    law: Mapping[str, float] = EPOCH,
    seed_noise: float = 0.005,
    run_noise: float = 0.002,
    rng_seed: int = 0,
) -> list[Point]:
    """One point per profile x size x budget x seed, rungs labelled `s1`, `s2`, ..."""
    rng = np.random.default_rng(rng_seed)
    records = []
    for rung, size in enumerate(sizes):
        for ratio in tokens_per_param:
            shared = rng.normal(0.0, seed_noise, seeds)
            for profile in profiles:
                n = size * profile.size_ratio
                d = ratio * size
                alpha = law["alpha"] if profile.alpha is None else profile.alpha
                model = law["A"] / (profile.effective * n) ** alpha
                clean = law["E"] + model + law["B"] / d ** law["beta"]
                noise = shared + rng.normal(0.0, run_noise, seeds)
                records += [
                    {
                        "rung": f"s{rung + 1}",
                        "profile": profile.name,
                        "seed": seed,
                        "N": n,
                        "D": d,
                        "tokens_per_param": d / n,
                        "loss": clean * np.exp(noise[seed]),
                    }
                    for seed in range(seeds)
                ]
    return points_from_records(records, "synthetic ladder")
