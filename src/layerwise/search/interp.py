"""Joining a few anchors into one multiplier per layer: monotone cubic (PCHIP) or linear.

PCHIP (Fritsch–Carlson) is used because it never overshoots: between two anchors the curve
stays between their values, so a shape is exactly as wide or narrow as its anchors say (no
spurious bulge a plain cubic spline would add) and every multiplier stays positive. It also
reproduces linear data exactly, so the study's linear profiles are points of the space.
Written here in numpy because scipy is not a dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

Interpolation = Literal["pchip", "linear"]


def knot_positions(n_anchors: int, n_layers: int) -> np.ndarray:
    """Anchor positions evenly spaced over layer indices 0 .. n_layers-1."""
    return np.linspace(0.0, n_layers - 1, n_anchors)


def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivatives at the knots that keep each interval monotone (Fritsch–Carlson, with the
    weighted harmonic mean inside and the shape-preserving three-point rule at the ends)."""
    h = np.diff(x)
    delta = np.diff(y) / h
    if len(x) == 2:
        return np.array([delta[0], delta[0]])
    slopes = np.zeros_like(y)
    w1 = 2 * h[1:] + h[:-1]
    w2 = h[1:] + 2 * h[:-1]
    same_sign = delta[:-1] * delta[1:] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
    slopes[1:-1] = np.where(same_sign, harmonic, 0.0)
    slopes[0] = _end_slope(h[0], h[1], delta[0], delta[1])
    slopes[-1] = _end_slope(h[-1], h[-2], delta[-1], delta[-2])
    return slopes


def _end_slope(h0: float, h1: float, d0: float, d1: float) -> float:
    slope = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
    if np.sign(slope) != np.sign(d0):
        return 0.0
    if np.sign(d0) != np.sign(d1) and abs(slope) > 3 * abs(d0):
        return 3 * d0
    return float(slope)


def pchip(x: ArrayLike, y: ArrayLike, at: ArrayLike) -> np.ndarray:
    """The monotone cubic Hermite interpolant through (x, y), evaluated at `at` (x increasing)."""
    xs, ys, query = (np.asarray(v, dtype=float) for v in (x, y, at))
    slopes = pchip_slopes(xs, ys)
    k = np.clip(np.searchsorted(xs, query, side="right") - 1, 0, len(xs) - 2)
    h = xs[k + 1] - xs[k]
    t = (query - xs[k]) / h
    h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
    h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
    return h00 * ys[k] + h10 * h * slopes[k] + h01 * ys[k + 1] + h11 * h * slopes[k + 1]


def per_layer(anchors: Sequence[float], n_layers: int, method: Interpolation) -> list[float]:
    """One multiplier per layer from anchors evenly spaced over depth."""
    if len(anchors) == 1 or n_layers == 1:
        return [float(anchors[0])] * n_layers
    x = knot_positions(len(anchors), n_layers)
    layers = np.arange(n_layers, dtype=float)
    values = pchip(x, anchors, layers) if method == "pchip" else np.interp(layers, x, anchors)
    return [float(v) for v in values]
