"""The answer, per profile against the reference, read off the joint law with the bootstrap's
intervals: how many times more parameters the reference needs to match it (the effective
parameter multiplier), whether that grows with size, and the loss it predicts at named targets.

With E, B and beta shared, two profiles differ only in A / N^alpha, so the reference matches a
profile of N parameters at the N' where A_ref N'^-alpha_ref = A_p N^-alpha_p, whatever the
token budget; M = N' / N. M above 1 is a gain, below 1 a loss, and the interval decides which
of "better", "worse" or "no detectable difference" is said: the sign is never assumed. M grows
with N exactly when alpha_p / alpha_ref > 1, which is the trend's test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from layerwise.ladder.bootstrap import Bootstrap, interval
from layerwise.ladder.law import Layout, log_law
from layerwise.util.errors import UserError
from layerwise.util.units import parse_count

TARGETS: tuple[tuple[float, float], ...] = ((180e6, 5e9), (1e9, 20e9))
"""The study's 180M parameters x 5B tokens, and 1B parameters at 20 tokens per parameter."""


def parse_target(text: str, where: str) -> tuple[float, float]:
    """`180M:5B` -> (180e6, 5e9): a parameter count and a token count, as users write them."""
    params, sep, tokens = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return float(parse_count(params)), float(parse_count(tokens))
    except (ValueError, UserError):
        raise UserError(
            f"{where}: target {text!r} must be PARAMS:TOKENS, e.g. 180M:5B, 1B:20B or 180e6:5e9"
        ) from None


EXTRAPOLATIONS = (1e9, 7e9)
GUESS_FACTOR = 100.0
"""Beyond this many times the largest trained N an extrapolated number is flagged as a guess."""

Side = Literal["above", "below", "includes", "unknown"]


@dataclass(frozen=True)
class Estimate:
    """A value from the full data's fit and its bootstrap percentile interval (None without
    seeds to resample)."""

    value: float
    low: float | None
    high: float | None

    def side(self, null: float) -> Side:
        """Where the interval lies against `null`: the basis of every verdict."""
        if self.low is None or self.high is None or math.isnan(self.low + self.high):
            return "unknown"
        if self.low > null:
            return "above"
        return "below" if self.high < null else "includes"

    def describe(self, spec: str = ".3f") -> str:
        if self.low is None or self.high is None:
            return f"{self.value:{spec}} (no interval)"
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high}


Quantity = Callable[[np.ndarray], np.ndarray]
"""A number computed from a parameter vector, or from a stack of them at once."""


def estimate(quantity: Quantity, theta: np.ndarray, spread: Bootstrap | None) -> Estimate:
    value = float(quantity(theta))
    if spread is None:
        return Estimate(value, None, None)
    with np.errstate(all="ignore"):  # an exponent at its bound of 0 gives inf, not an error
        low, high = interval(quantity(spread.thetas))
    return Estimate(value, float(low), float(high))


def log_multiplier(layout: Layout, profile: str, reference: str, n: float | np.ndarray) -> Quantity:
    """log M at a profile's N: log N' - log N, N' solving A_ref N'^-alpha_ref = A_p N^-alpha_p.
    With an array of N, each parameter vector gives a row of values (a figure's curve)."""
    log_n = np.log(n)

    def quantity(theta: np.ndarray) -> np.ndarray:
        def column(index: int) -> np.ndarray:
            values = theta[..., index]
            return values[..., None] if np.ndim(log_n) else values

        a_ref, alpha_ref = column(layout.a(reference)), column(layout.alpha(reference))
        a_p, alpha_p = column(layout.a(profile)), column(layout.alpha(profile))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray((a_ref - a_p + alpha_p * log_n) / alpha_ref - log_n)

    return quantity


def exponent_ratio(layout: Layout, profile: str, reference: str) -> Quantity:
    def quantity(theta: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(
                theta[..., layout.alpha(profile)] / theta[..., layout.alpha(reference)]
            )

    return quantity


def loss_at(layout: Layout, profile: str, n: float, d: float) -> Quantity:
    def quantity(theta: np.ndarray) -> np.ndarray:
        index = np.array([layout.profiles.index(profile)])
        log_loss = log_law(theta, layout, np.array([math.log(n)]), np.array([math.log(d)]), index)
        return np.asarray(np.exp(log_loss[..., 0]))

    return quantity


@dataclass(frozen=True)
class Multiplier:
    label: str
    N: float
    factor: float
    """N over the largest N trained: how far the law is carried."""
    value: Estimate

    @property
    def guess(self) -> bool:
        return self.factor > GUESS_FACTOR

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.label,
            "N": self.N,
            "extrapolation_factor": self.factor,
            "guess": self.guess,
            **self.value.to_json(),
        }


@dataclass(frozen=True)
class TargetPrediction:
    N: float
    D: float
    factor: float
    loss: Estimate
    reference_loss: Estimate
    difference: Estimate
    """Profile minus reference, in validation loss (nats)."""
    ppl_difference: Estimate
    ppl_change_pct: Estimate

    def to_json(self) -> dict[str, Any]:
        return {
            "N": self.N,
            "D": self.D,
            "extrapolation_factor": self.factor,
            "guess": self.factor > GUESS_FACTOR,
            "loss": self.loss.to_json(),
            "reference_loss": self.reference_loss.to_json(),
            "loss_difference": self.difference.to_json(),
            "ppl_difference": self.ppl_difference.to_json(),
            "ppl_change_pct": self.ppl_change_pct.to_json(),
        }


@dataclass(frozen=True)
class ProfileAnswer:
    profile: str
    reference: str
    multipliers: tuple[Multiplier, ...]
    """At the largest rung first, then at each extrapolation target."""
    ratio: Estimate
    targets: tuple[TargetPrediction, ...]

    @property
    def verdict(self) -> str:
        """ "better", "worse", "no detectable difference" or "not judged" at the largest rung."""
        return {
            "above": "better",
            "below": "worse",
            "includes": "no detectable difference",
            "unknown": "not judged (no interval)",
        }[self.multipliers[0].value.side(1.0)]

    @property
    def trend(self) -> str:
        return {
            "above": "the gain grows with size",
            "below": "the gain shrinks with size",
            "includes": "no detectable trend",
            "unknown": "not judged (no interval)",
        }[self.ratio.side(1.0)]

    @property
    def unjudged(self) -> str:
        """Why the multiplier at the largest rung has no interval to judge by."""
        value = self.multipliers[0].value
        if not math.isfinite(value.value):
            return (
                f"the law gives no finite multiplier ({self.reference}'s alpha sits at its bound "
                "of 0: its loss does not fall with N over these sizes), so nothing is judged: "
                "train longer or over a wider range of sizes"
            )
        if value.low is None or value.high is None:
            return "one seed per cell gives no interval, so nothing is judged: add seeds"
        return "the bootstrap's refits give no interval, so nothing is judged"

    def sentences(self) -> list[str]:
        """The answer in words, each number with its interval."""
        first = self.multipliers[0]
        m = first.value.describe(".3f")
        at = f"at {first.label} (N {first.N / 1e6:,.2f}M)"
        lead = {
            "better": f"{self.profile} is better than {self.reference} {at}: {self.reference} "
            f"needs {m} times the parameters to match it",
            "worse": f"{self.profile} is worse than {self.reference} {at}: it matches a "
            f"{self.reference} model of only {m} times its parameters",
            "no detectable difference": f"{self.profile} and {self.reference} differ by no "
            f"detectable amount {at}: effective parameter multiplier {m}, which includes 1",
        }.get(
            self.verdict,
            f"{self.profile} against {self.reference} {at}: multiplier {m}; {self.unjudged}",
        )
        trend = f"exponent ratio alpha_{self.profile} / alpha_{self.reference} {self.ratio.describe()}: {self.trend}"
        far = [
            f"{m.label}: {m.value.describe('.3f')} (x{m.factor:,.0f} the largest trained N"
            + ("; beyond 100x, a guess)" if m.guess else ")")
            for m in self.multipliers[1:]
        ]
        return (
            [lead, trend, "multiplier extrapolated to " + "; ".join(far)] if far else [lead, trend]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "reference": self.reference,
            "verdict": self.verdict,
            "multiplier": [m.to_json() for m in self.multipliers],
            "exponent_ratio": self.ratio.to_json(),
            "trend": self.trend,
            "targets": [t.to_json() for t in self.targets],
            "sentences": self.sentences(),
        }


def answer(
    layout: Layout,
    theta: np.ndarray,
    spread: Bootstrap | None,
    profile: str,
    reference: str,
    largest: tuple[str, float],
    trained_max_n: float,
    targets: Sequence[tuple[float, float]] = TARGETS,
) -> ProfileAnswer:
    """The profile's answer; `largest` is (label, N) of its largest rung."""

    def exp(quantity: Quantity) -> Quantity:
        return lambda t: np.exp(quantity(t))

    label, n = largest
    multipliers = [
        Multiplier(
            f"the largest rung ({label})",
            n,
            n / trained_max_n,
            estimate(exp(log_multiplier(layout, profile, reference, n)), theta, spread),
        )
    ]
    for target in EXTRAPOLATIONS:
        value = estimate(exp(log_multiplier(layout, profile, reference, target)), theta, spread)
        multipliers.append(Multiplier(size_label(target), target, target / trained_max_n, value))
    return ProfileAnswer(
        profile,
        reference,
        tuple(multipliers),
        estimate(exponent_ratio(layout, profile, reference), theta, spread),
        tuple(
            _target(layout, theta, spread, profile, reference, n, d, trained_max_n)
            for n, d in targets
        ),
    )


def _target(
    layout: Layout,
    theta: np.ndarray,
    spread: Bootstrap | None,
    profile: str,
    reference: str,
    n: float,
    d: float,
    trained_max_n: float,
) -> TargetPrediction:
    mine, theirs = loss_at(layout, profile, n, d), loss_at(layout, reference, n, d)
    return TargetPrediction(
        n,
        d,
        n / trained_max_n,
        estimate(mine, theta, spread),
        estimate(theirs, theta, spread),
        estimate(lambda t: mine(t) - theirs(t), theta, spread),
        estimate(lambda t: np.exp(mine(t)) - np.exp(theirs(t)), theta, spread),
        estimate(lambda t: 100.0 * np.expm1(mine(t) - theirs(t)), theta, spread),
    )


def size_label(n: float) -> str:
    """`1B`, `7B`, `180M`: a target's name."""
    return f"{n / 1e9:g}B" if n >= 1e9 else f"{n / 1e6:g}M"
