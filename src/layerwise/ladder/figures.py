"""The ladder's figures: the runs against each profile's fitted law, the difference to the
reference, the multiplier against compute, and the residuals.

Curves are the joint law; bands are the bootstrap's 95% percentile band of the same curve (no
band without seeds to resample). Colours follow the profile as in every report.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from layerwise.ladder.answer import log_multiplier
from layerwise.ladder.bootstrap import interval
from layerwise.ladder.fit import LadderFit, rungs_of
from layerwise.ladder.law import log_law
from layerwise.util.plots import colour_for, save_figure

MARKERS = ("o", "s", "^", "D", "v", "P", "X")
TOKENS_PER_PARAM = 20.0
"""The path along which the multiplier is drawn against compute: Chinchilla's ratio."""


def write_figures(fit: LadderFit, out: Path) -> tuple[Path, ...]:
    """Every figure of the report, under OUT/figures/."""
    figures = out / "figures"
    return (
        loss_figure(fit, figures / "loss_vs_n.png"),
        difference_figure(fit, figures / "difference.png"),
        multiplier_figure(fit, figures / "multiplier.png"),
        residuals_figure(fit, figures / "residuals.png"),
    )


Curve = Callable[[np.ndarray], np.ndarray]
"""Values along a grid of N from a stack of parameter vectors (rows) or one vector."""


def _draw(ax: Axes, fit: LadderFit, xs: np.ndarray, curve: Curve, colour: str, label: str) -> None:
    """The law's curve and, where the bootstrap ran, its band."""
    ax.plot(xs, curve(fit.joint.theta), color=colour, linewidth=1.4, label=label)
    if fit.spread is not None:
        with np.errstate(all="ignore"):
            low, high = interval(curve(fit.spread.thetas))
        ax.fill_between(xs, low, high, color=colour, alpha=0.15, linewidth=0)


def _law(fit: LadderFit, profile: str, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    index = np.full(log_n.shape, fit.layout.profiles.index(profile))
    return log_law(fit.joint.theta, fit.layout, log_n, log_d, index)


def _size_axis(ax: Axes, fit: LadderFit) -> None:
    """A log axis of parameter counts with a tick at each rung's median N, labelled `20M` or
    `1.5B`: matplotlib's own `2x10^7` minor labels run into each other over one decade."""
    ax.set_xscale("log")
    ax.set_xticks([rung["median_N"] for rung in rungs_of(fit.points)])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(
        FuncFormatter(lambda n, _: f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M")
    )


def _grid(low: float, high: float) -> np.ndarray:
    return np.geomspace(low, high, 60)


def loss_figure(fit: LadderFit, path: Path) -> Path:
    """A panel per budget: each run's loss at its N, and each profile's law along the budget's
    tokens per parameter."""
    budgets = sorted({p.budget for p in fit.points})
    fig = Figure(figsize=(4.2 * len(budgets), 4.2))
    axes = fig.subplots(1, len(budgets), sharey=True, squeeze=False)[0]
    names = list(fit.layout.profiles)
    for ax, budget in zip(axes, budgets, strict=True):
        ratios = []
        for profile in names:
            mine = [p for p in fit.points if p.profile == profile and p.budget == budget]
            if not mine:
                continue
            colour = colour_for(profile, names)
            ratio = statistics.median(p.D / p.N for p in mine)
            ratios.append(ratio)
            ax.scatter([p.N for p in mine], [p.loss for p in mine], color=colour, s=12)
            xs = _grid(min(p.N for p in mine), max(p.N for p in mine))
            index = np.full(xs.shape, fit.layout.profiles.index(profile))

            def curve(
                theta: np.ndarray, xs: np.ndarray = xs, r: float = ratio, i: np.ndarray = index
            ) -> Any:
                return np.exp(log_law(theta, fit.layout, np.log(xs), np.log(r * xs), i))

            _draw(ax, fit, xs, curve, colour, profile)
        _size_axis(ax, fit)
        ax.set(
            title=f"budget {budget + 1}: ~{statistics.median(ratios):.3g} tokens/param",
            xlabel="N (parameters)",
        )
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("validation loss")
    axes[0].legend(frameon=False)
    return save_figure(fig, path)


def difference_figure(fit: LadderFit, path: Path) -> Path:
    """Each profile's measured loss minus the reference's (paired over seeds, 95% t interval)
    at each rung and budget, and the joint law's difference (the same at every budget)."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    names = list(fit.layout.profiles)
    ns = [p.N for p in fit.points]
    xs = _grid(min(ns), max(ns))
    for profile in names[1:]:
        colour = colour_for(profile, names)
        for d in (d for d in fit.differences if d.profile == profile):
            diff = d.difference
            error = (
                None
                if diff.low is None or diff.high is None
                else [
                    [diff.mean - diff.low],
                    [diff.high - diff.mean],
                ]
            )
            ax.errorbar(
                [d.N * (1 + 0.02 * d.budget)],  # budgets side by side at one rung
                [diff.mean],
                yerr=error,
                color=colour,
                marker=MARKERS[d.budget % len(MARKERS)],
                markersize=4,
                linestyle="none",
                capsize=2,
            )
        _draw(ax, fit, xs, _difference(fit, profile, xs), colour, f"{profile} - {fit.reference}")
    ax.axhline(0.0, color="#888888", linewidth=0.8)
    _size_axis(ax, fit)
    ax.set(
        title=f"Validation loss minus {fit.reference}'s (markers: budgets, measured)",
        xlabel="N (parameters)",
        ylabel="loss difference (nats)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False)
    return save_figure(fig, path)


def _difference(fit: LadderFit, profile: str, xs: np.ndarray) -> Curve:
    """The joint law's loss difference along N (its D cancels: E and B/D^beta are shared)."""
    log_n, log_d = np.log(xs), np.log(TOKENS_PER_PARAM * xs)
    mine = np.full(xs.shape, fit.layout.profiles.index(profile))
    reference = np.zeros(xs.shape, dtype=np.intp)  # the reference is the layout's first

    def curve(theta: np.ndarray) -> np.ndarray:
        law = fit.layout
        return np.exp(log_law(theta, law, log_n, log_d, mine)) - np.exp(
            log_law(theta, law, log_n, log_d, reference)
        )

    return curve


def _multiplier(fit: LadderFit, profile: str, xs: np.ndarray) -> Curve:
    log_m = log_multiplier(fit.layout, profile, fit.reference, xs)

    def curve(theta: np.ndarray) -> np.ndarray:
        return np.asarray(np.exp(log_m(theta)))

    return curve


def multiplier_figure(fit: LadderFit, path: Path) -> Path:
    """The effective parameter multiplier against training compute at 20 tokens per parameter,
    from the smallest trained N to 7B; beyond the largest trained N it is extrapolation."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    names = list(fit.layout.profiles)
    top_n = max(p.N for p in fit.points)
    xs = _grid(min(p.N for p in fit.points), max(7e9, top_n))
    per_token = statistics.median(p.compute / (p.D * p.N) for p in fit.points)  # ~6 FLOPs
    compute = per_token * xs * TOKENS_PER_PARAM * xs
    for profile in names[1:]:
        _draw(ax, fit, compute, _multiplier(fit, profile, xs), colour_for(profile, names), profile)
    edge = per_token * top_n * TOKENS_PER_PARAM * top_n
    ax.axvspan(edge, compute[-1], color="#cccccc", alpha=0.4, label="extrapolation")
    ax.axhline(1.0, color="#888888", linewidth=0.8)
    ax.set(
        xscale="log",
        title=f"Effective parameter multiplier against {fit.reference}",
        xlabel=f"training FLOPs at {TOKENS_PER_PARAM:g} tokens per parameter",
        ylabel="effective parameter multiplier",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False)
    return save_figure(fig, path)


def residuals_figure(fit: LadderFit, path: Path) -> Path:
    """log L measured minus log L of the joint law, per run: a pattern in N says the law's form
    does not fit the ladder."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    names = list(fit.layout.profiles)
    for profile in names:
        for budget in sorted({p.budget for p in fit.points}):
            mine = [p for p in fit.points if p.profile == profile and p.budget == budget]
            if not mine:
                continue
            log_n = np.log([p.N for p in mine])
            predicted = _law(fit, profile, log_n, np.log([p.D for p in mine]))
            ax.scatter(
                [p.N for p in mine],
                np.log([p.loss for p in mine]) - predicted,
                color=colour_for(profile, names),
                marker=MARKERS[budget % len(MARKERS)],
                s=14,
                label=profile if budget == 0 else None,
            )
    ax.axhline(0.0, color="#888888", linewidth=0.8)
    _size_axis(ax, fit)
    ax.set(
        title="Residuals of the joint law (markers: budgets)",
        xlabel="N (parameters)",
        ylabel="log loss - log law",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(frameon=False)
    return save_figure(fig, path)
