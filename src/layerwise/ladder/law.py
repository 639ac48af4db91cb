"""The scaling law L(N, D) = E + A / N^alpha + B / D^beta and its fits.

Fitted as Epoch AI's replication of Chinchilla does (Besiroglu et al. 2024, arXiv 2404.10102):
the law in log-sum-exp form, log L = LSE(e, a - alpha log N, b - beta log D) with E = e^e,
A = e^a, B = e^b, and the Huber loss (delta 1e-3) of the log-loss residuals minimised with
L-BFGS-B from a grid of starting points, keeping the best. The Huber loss on log-loss keeps one
diverged or badly tuned run from pulling the law; the log-sum-exp form keeps the optimiser on
a smooth surface where A and B span orders of magnitude.

One parameter layout serves both fits: E, B and beta shared by the layout's profiles (they saw
the same data, so the irreducible loss and the data term are theirs in common), A and alpha per
profile. A profile's own fit is the layout of that one profile; the joint fit is the layout of
all of them. Gradients are analytic, so a bootstrap of a thousand refits takes seconds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from layerwise.ladder.table import Point
from layerwise.util.errors import UserError

HUBER_DELTA = 1e-3
LAW = "L(N, D) = E + A / N^alpha + B / D^beta"

GRID = {
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}
"""Hoffmann et al.'s grid of 4,500 starting points, as Epoch's replication uses it."""

LOCAL_STARTS = 10
"""L-BFGS-B runs from the grid points with the lowest objective, not from all 4,500: the
objective is evaluated on the whole grid at once (a few milliseconds), and on the synthetic
ladders of the tests the best eight grid points each reach the best optimum that the best sixty
find, while the rest end there or worse at 450 times the cost."""

BOUNDS = {
    "e": (-10.0, 5.0),
    "a": (-30.0, 5.0),
    "b": (-30.0, 5.0),
    "alpha": (0.0, 3.0),
    "beta": (0.0, 3.0),
}
"""Box constraints of the optimiser's parameters, wide enough that a sensible law never meets
them, so a parameter at a bound says the data do not pin it down (and the report says so).
The optimiser sees a and b centred (`centre`): the log of the model and data terms at the
table's geometric-mean N and D, which lie between e^-30 (nothing) and e^5 (148 nats)."""


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run L-BFGS-B on one BLAS thread: since scipy 1.15 its solver calls BLAS on vectors of a
    few elements, where OpenBLAS's threads cost ten times the work (scipy issue 22438) -- a
    bootstrap takes 60 s instead of 5 on 2 busy cores. scipy is imported first because
    threadpoolctl limits only the libraries loaded when it is entered; without threadpoolctl
    (it comes with the `ladder` extra) the fit is right, only slower."""
    import scipy.optimize  # noqa: F401

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def require_scipy() -> None:
    """A UserError with the install line where the optional scipy is missing."""
    if importlib.util.find_spec("scipy") is None:
        raise UserError("fitting a ladder needs scipy: pip install 'layerwise[ladder]'")


@dataclass(frozen=True)
class Layout:
    """Where each parameter sits in the vector: e, b, beta, then a and alpha per profile."""

    profiles: tuple[str, ...]

    @property
    def size(self) -> int:
        return 3 + 2 * len(self.profiles)

    def a(self, profile: str) -> int:
        return 3 + self.profiles.index(profile)

    def alpha(self, profile: str) -> int:
        return 3 + len(self.profiles) + self.profiles.index(profile)

    @property
    def names(self) -> tuple[str, ...]:
        per = [f"a[{p}]" for p in self.profiles] + [f"alpha[{p}]" for p in self.profiles]
        return ("e", "b", "beta", *per)

    @property
    def bounds(self) -> list[tuple[float, float]]:
        count = len(self.profiles)
        return [
            BOUNDS["e"],
            BOUNDS["b"],
            BOUNDS["beta"],
            *[BOUNDS["a"]] * count,
            *[BOUNDS["alpha"]] * count,
        ]

    def grid(self) -> np.ndarray:
        """Hoffmann's grid in this layout, every profile starting from the same (a, alpha)."""
        rows = [
            [e, b, beta, *[a] * len(self.profiles), *[alpha] * len(self.profiles)]
            for e, a, b, alpha, beta in itertools.product(*GRID.values())
        ]
        return np.array(rows)


@dataclass(frozen=True)
class Observations:
    """The fitted data as arrays: log N, log D, log loss and each point's profile index."""

    log_n: np.ndarray
    log_d: np.ndarray
    log_loss: np.ndarray
    profile: np.ndarray

    @classmethod
    def of(cls, points: Sequence[Point], layout: Layout) -> Observations:
        return cls(
            np.log([p.N for p in points]),
            np.log([p.D for p in points]),
            np.log([p.loss for p in points]),
            np.array([layout.profiles.index(p.profile) for p in points], dtype=np.intp),
        )


def log_law(
    theta: np.ndarray, layout: Layout, log_n: np.ndarray, log_d: np.ndarray, profile: np.ndarray
) -> np.ndarray:
    """log L at each (log N, log D, profile index); `theta` may be one vector or a stack of
    them (bootstrap replicates, grid points), giving one row of predictions each."""
    terms = _terms(theta, layout, log_n, log_d, profile)
    top = terms.max(axis=-2, keepdims=True)
    return (top + np.log(np.exp(terms - top).sum(axis=-2, keepdims=True)))[..., 0, :]


def _terms(
    theta: np.ndarray, layout: Layout, log_n: np.ndarray, log_d: np.ndarray, profile: np.ndarray
) -> np.ndarray:
    """The three log-sum-exp arguments, shape (..., 3, points)."""
    count = len(layout.profiles)
    e, b, beta = theta[..., 0:1], theta[..., 1:2], theta[..., 2:3]
    model = theta[..., 3 + profile] - theta[..., 3 + count + profile] * log_n
    data = b - beta * log_d
    return np.stack(np.broadcast_arrays(e, model, data), axis=-2)


def _huber(residual: np.ndarray, delta: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The loss of each residual and its derivative; `delta` None is least squares."""
    if delta is None:
        return 0.5 * residual**2, residual
    size = np.abs(residual)
    loss = np.where(size <= delta, 0.5 * residual**2, delta * (size - 0.5 * delta))
    return loss, np.clip(residual, -delta, delta)


def objective(
    theta: np.ndarray,
    layout: Layout,
    obs: Observations,
    weights: np.ndarray,
    delta: float | None = HUBER_DELTA,
) -> tuple[float, np.ndarray]:
    """The weighted Huber loss of the log-loss residuals and its gradient, divided by
    delta^2 times the total weight: the raw sum is of order 1e-5, where L-BFGS-B's absolute
    tolerances would stop it long before the optimum. Written out term by term (not through
    `log_law`) because a bootstrap calls it a hundred thousand times."""
    count, profile = len(layout.profiles), obs.profile
    model = theta[3 : 3 + count][profile] - theta[3 + count :][profile] * obs.log_n
    data = theta[1] - theta[2] * obs.log_d
    top = np.maximum(np.maximum(model, data), theta[0])
    exp_e, exp_model, exp_data = np.exp(theta[0] - top), np.exp(model - top), np.exp(data - top)
    total = exp_e + exp_model + exp_data
    loss, psi = _huber(obs.log_loss - top - np.log(total), delta)
    scale = 1.0 / (HUBER_DELTA**2 * weights.sum())
    pull = -scale * weights * psi / total  # d objective / d term, before each term's exp
    grad = np.empty(layout.size)
    grad[0] = pull @ exp_e
    pull_data, pull_model = pull * exp_data, pull * exp_model
    grad[1] = pull_data.sum()
    grad[2] = -(pull_data @ obs.log_d)
    grad[3 : 3 + count] = np.bincount(profile, pull_model, minlength=count)
    grad[3 + count :] = np.bincount(profile, -pull_model * obs.log_n, minlength=count)
    return float(scale * (weights @ loss)), grad


def grid_objective(theta: np.ndarray, layout: Layout, obs: Observations) -> np.ndarray:
    """The (unweighted) objective at each row of a stack of parameter vectors, at once."""
    residual = obs.log_loss - log_law(theta, layout, obs.log_n, obs.log_d, obs.profile)
    return np.asarray(_huber(residual, HUBER_DELTA)[0].sum(axis=-1))


@dataclass(frozen=True, eq=False)
class Fit:
    """The best of the optimiser's runs, with what a reader needs to trust it."""

    layout: Layout
    theta: np.ndarray
    objective: float
    """The Huber loss summed over the points (weighted), as minimised up to a constant."""
    success: bool
    message: str
    iterations: int
    grad_norm: float
    """Norm of the projected gradient of the scaled objective at the optimum."""
    at_bound: tuple[str, ...]
    """The parameters (log-sum-exp names) that ended on a box constraint."""
    points: int

    def params(self) -> dict[str, Any]:
        """E, B, beta, and A and alpha per profile, unrounded."""
        theta, layout = self.theta, self.layout
        return {
            "E": math.exp(theta[0]),
            "B": math.exp(theta[1]),
            "beta": float(theta[2]),
            "A": {p: math.exp(theta[layout.a(p)]) for p in layout.profiles},
            "alpha": {p: float(theta[layout.alpha(p)]) for p in layout.profiles},
        }

    def diagnostics(self) -> dict[str, Any]:
        return {
            "converged": self.success,
            "message": self.message,
            "iterations": self.iterations,
            "gradient_norm": self.grad_norm,
            "at_bound": list(self.at_bound),
            "huber_loss": self.objective,
            "points": self.points,
        }


def centre(theta: np.ndarray, layout: Layout, log_n: float, log_d: float) -> np.ndarray:
    """The law's parameters with a and b moved to log N = `log_n` and log D = `log_d`:
    a - alpha log_n and b - beta log_d. At the data's mean logs, a and alpha (and b and beta)
    are nearly uncorrelated, which halves L-BFGS-B's iterations; negative logs undo it."""
    count = len(layout.profiles)
    moved = np.array(theta, dtype=float)
    moved[..., 1] -= moved[..., 2] * log_d
    moved[..., 3 : 3 + count] -= moved[..., 3 + count :] * log_n
    return moved


def fit_from(
    starts: np.ndarray,
    layout: Layout,
    obs: Observations,
    weights: np.ndarray | None = None,
    delta: float | None = HUBER_DELTA,
) -> Fit:
    """L-BFGS-B from each row of `starts` (clipped into the bounds); the run with the lowest
    objective. The optimiser works in the centred parameters (`centre`)."""
    from scipy.optimize import minimize

    weights = np.ones_like(obs.log_loss) if weights is None else weights
    log_n, log_d = float(obs.log_n.mean()), float(obs.log_d.mean())
    centred = Observations(obs.log_n - log_n, obs.log_d - log_d, obs.log_loss, obs.profile)
    low, high = np.array(layout.bounds).T
    best = None
    for start in np.clip(centre(np.atleast_2d(starts), layout, log_n, log_d), low, high):
        result = minimize(
            objective,
            start,
            args=(layout, centred, weights, delta),
            jac=True,
            method="L-BFGS-B",
            bounds=layout.bounds,
            options={"maxiter": 2000},
        )
        if best is None or result.fun < best.fun:
            best = result
    assert best is not None, "starts has at least one row"
    margin = 1e-6 * (high - low)
    at_low, at_high = best.x <= low + margin, best.x >= high - margin
    # at a bound the gradient may push outwards: only its inward part says "not converged"
    projected = np.where((at_low & (best.jac > 0)) | (at_high & (best.jac < 0)), 0.0, best.jac)
    return Fit(
        layout=layout,
        theta=centre(best.x, layout, -log_n, -log_d),
        objective=float(best.fun * HUBER_DELTA**2 * weights.sum()),
        success=bool(best.success),
        message=str(best.message),
        iterations=int(best.nit),
        grad_norm=float(np.linalg.norm(projected)),
        at_bound=tuple(n for n, hit in zip(layout.names, at_low | at_high, strict=True) if hit),
        points=int(obs.log_loss.size),
    )


def fit_law(layout: Layout, obs: Observations, extra_starts: Sequence[np.ndarray] = ()) -> Fit:
    """The law fitted from the grid's most promising points (and any `extra_starts`)."""
    require_scipy()
    grid = layout.grid()
    best = grid[np.argsort(grid_objective(grid, layout, obs))[:LOCAL_STARTS]]
    starts = np.vstack([best, *[np.atleast_2d(s) for s in extra_starts]])
    with one_blas_thread():
        return fit_from(starts, layout, obs)


@dataclass(frozen=True)
class LikelihoodRatio:
    """Joint (shared E, B, beta) against free per-profile laws, Gaussian on log-loss."""

    statistic: float
    df: int
    p_value: float
    rss_joint: float
    rss_free: float
    points: int

    def to_json(self) -> dict[str, Any]:
        return {
            "likelihood": "Gaussian on log-loss residuals, one variance for all points "
            "(profiled out), both models refitted by least squares from their Huber optima",
            "statistic": self.statistic,
            "df": self.df,
            "p_value": self.p_value,
            "rss_joint": self.rss_joint,
            "rss_free": self.rss_free,
            "points": self.points,
        }


def likelihood_ratio(
    joint: Fit, obs: Observations, free: Sequence[tuple[Fit, Observations]]
) -> LikelihoodRatio:
    """-2 log of the likelihood ratio, n log(RSS_joint / RSS_free), against chi^2 with
    3 (profiles - 1) degrees of freedom (the E, B, beta the free laws have per profile).

    A Gaussian likelihood's maximum is the least-squares fit, not the Huber one, so both
    models are refitted by least squares (warm-started, one run each) for the test alone.
    """
    from scipy.stats import chi2

    def rss(fit: Fit, data: Observations) -> float:
        refit = fit_from(fit.theta, fit.layout, data, delta=None)
        return 2.0 * refit.objective

    rss_joint = rss(joint, obs)
    rss_free = sum(rss(fit, data) for fit, data in free)
    points = int(obs.log_loss.size)
    statistic = max(0.0, points * math.log(rss_joint / rss_free))
    df = 3 * (len(joint.layout.profiles) - 1)
    return LikelihoodRatio(
        statistic, df, float(chi2.sf(statistic, df)), rss_joint, rss_free, points
    )
