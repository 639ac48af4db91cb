"""The search space: which shapes a trial may propose and how one becomes per-layer widths.

A shape is K FFN anchors and K attention anchors (evenly spaced over depth, sampled in log
space, since a multiplier of 0.5 is as far from 1 as 2 is), joined by PCHIP or linear
interpolation, with an optional frame. The per-layer multipliers go into the run's config as
`model.ffn` / `model.qkv` lists of one value per layer, and the budget solver rescales them to
the target exactly as it rescales the study's profiles, so every trial is the same size.

Nothing here imports optuna: a trial is anything with `suggest_float` / `suggest_categorical`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import numpy as np

from layerwise.profiles.recipes import SHAPES, interpolate
from layerwise.profiles.shape import ModelShape
from layerwise.profiles.shapefile import recipe_overrides
from layerwise.search.interp import Interpolation, knot_positions, per_layer
from layerwise.util.errors import UserError

FrameChoice = Literal["search", "on", "off"]


class Suggester(Protocol):
    """The part of an Optuna trial that proposes values."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool) -> float: ...

    def suggest_categorical(self, name: str, choices: list[bool]) -> bool: ...


@dataclass(frozen=True)
class SearchSpace:
    """What varies between trials; saved with the study so every worker searches the same."""

    anchors: int = 5
    interpolation: Interpolation = "pchip"
    frame: FrameChoice = "search"
    ffn_range: tuple[float, float] = (0.25, 8.0)
    qkv_range: tuple[float, float] = (0.25, 2.0)

    def check(self) -> None:
        """Refuse a space no trial could be drawn from, naming the flag to change."""
        if self.anchors < 1:
            raise UserError(f"--anchors {self.anchors}: a shape needs at least one anchor")
        for flag, (low, high) in (("--ffn-range", self.ffn_range), ("--qkv-range", self.qkv_range)):
            if not 0 < low <= high:
                raise UserError(f"{flag} {low},{high}: give 0 < LOW <= HIGH, e.g. 0.25,8")

    @property
    def frames(self) -> tuple[bool, ...]:
        """The frame settings a trial may take."""
        return {"search": (False, True), "on": (True,), "off": (False,)}[self.frame]

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class Shape:
    """A proposed shape before the budget solver: one multiplier per layer and the frame."""

    ffn: tuple[float, ...]
    qkv: tuple[float, ...]
    frame: bool

    def overrides(self) -> tuple[str, ...]:
        """Config overrides that make a run train this shape (rescaled by the run's budget)."""
        return recipe_overrides(self.ffn, self.qkv, self.frame)


def ffn_name(k: int) -> str:
    return f"ffn_{k}"


def qkv_name(k: int) -> str:
    return f"qkv_{k}"


def suggest(trial: Suggester, space: SearchSpace) -> dict[str, float | bool]:
    """Draw (or, for an enqueued trial, read back) one point of the space."""
    params: dict[str, float | bool] = {}
    for k in range(space.anchors):
        params[ffn_name(k)] = trial.suggest_float(ffn_name(k), *space.ffn_range, log=True)
    for k in range(space.anchors):
        params[qkv_name(k)] = trial.suggest_float(qkv_name(k), *space.qkv_range, log=True)
    if len(space.frames) > 1:
        params["frame"] = trial.suggest_categorical("frame", list(space.frames))
    return params


def shape_of(params: dict[str, float | bool], space: SearchSpace, n_layers: int) -> Shape:
    """The per-layer multipliers a point of the space stands for."""
    ffn = [float(params[ffn_name(k)]) for k in range(space.anchors)]
    qkv = [float(params[qkv_name(k)]) for k in range(space.anchors)]
    frame = bool(params.get("frame", space.frames[0]))
    return Shape(
        ffn=tuple(per_layer(ffn, n_layers, space.interpolation)),
        qkv=tuple(per_layer(qkv, n_layers, space.interpolation)),
        frame=frame,
    )


def baseline_params(name: str, space: SearchSpace, n_layers: int) -> dict[str, float | bool]:
    """The study's profile `name` as a point of the space: its per-layer multipliers read at the
    anchor positions (exact for the linear profiles; the baseline trial itself trains the
    recipe as the study defines it), clipped to the ranges, frame as the recipe has it."""
    recipe = SHAPES[name]
    return anchor_params(recipe.ffn, recipe.qkv, recipe.frame, space, n_layers)


def anchor_params(
    ffn: Sequence[float], qkv: Sequence[float], frame: bool, space: SearchSpace, n_layers: int
) -> dict[str, float | bool]:
    """Any recipe (a preset's anchors, a shape file's per-layer multipliers) as a point of the
    space: its multipliers read at the anchor positions and clipped to the ranges."""
    positions = knot_positions(space.anchors, n_layers)
    layers = np.arange(n_layers, dtype=float)
    params: dict[str, float | bool] = {}
    for prefix, anchors, (low, high) in (
        ("ffn", ffn, space.ffn_range),
        ("qkv", qkv, space.qkv_range),
    ):
        values = np.interp(positions, layers, interpolate(anchors, n_layers))
        for k, value in enumerate(values):
            params[f"{prefix}_{k}"] = float(np.clip(value, low, high))
    if len(space.frames) > 1:
        params["frame"] = frame
    return params


def shape_key(shape: ModelShape) -> str:
    """Trials are the same experiment exactly when their rounded widths are: `d_ffn/heads` per
    layer, e.g. `256/4 384/6 ...`."""
    return " ".join(f"{layer.d_ffn}/{layer.n_heads}" for layer in shape.layers)
