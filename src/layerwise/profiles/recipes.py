"""Profiles: how a layer-wise scaling recipe becomes per-layer widths, and what they cost.

A profile is a recipe (anchors for the FFN multiplier beta and the attention multiplier alpha,
optionally a frame) that is resolved *once* into a `ModelShape`: a tuple of `LayerSpec`s. Everything
downstream (model, FLOP accounting, reports) reads the widths from that shape and never
re-derives them, so a table printed here is exactly what gets trained.

The rounding and interpolation rules follow OpenELM and the Crown/Frame/Reverse study to the
letter (see `../shared/reference/lws-facts.md`): the per-layer tables of the study are a contract.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from layerwise.profiles.shape import LayerSpec, ModelShape
from layerwise.profiles.shapefile import is_shape_file, read_shape_file
from layerwise.util.errors import UserError


@dataclass(frozen=True)
class ShapeRecipe:
    """A named layer-wise scaling pattern, independent of model size."""

    ffn: tuple[float, ...]
    qkv: tuple[float, ...]
    frame: bool


SHAPES: dict[str, ShapeRecipe] = {
    "isotropic": ShapeRecipe(ffn=(2.5, 2.5), qkv=(0.75, 0.75), frame=False),
    "vanilla": ShapeRecipe(ffn=(1.0, 4.0), qkv=(0.5, 1.0), frame=False),
    "framed": ShapeRecipe(ffn=(0.5, 4.0), qkv=(0.5, 1.0), frame=True),
    "reverse": ShapeRecipe(ffn=(4.0, 0.5), qkv=(1.0, 0.5), frame=True),
    "crown": ShapeRecipe(ffn=(0.5, 3.8, 0.5), qkv=(0.5, 1.0, 0.5), frame=True),
}
"""The five profiles of the study, with its hand-tuned anchors."""


@dataclass(frozen=True)
class ProfileSpec:
    """A recipe plus the base architecture it is applied to.

    `ffn` and `qkv` hold anchors: two (linear, rounded to 2 decimals as in OpenELM), three (the
    study's Crown interpolation), any other number (evenly spaced knots), or exactly one value per
    layer (used as given). `frame` overwrites the first and last layer with the reference layer
    (`frame_ffn`, `frame_qkv`), which is never rescaled by the budget solver. FFN widths are
    rounded to multiples of `ffn_divisor` (256 in the study and OpenELM; tiny models want less).
    """

    ffn: tuple[float, ...]
    qkv: tuple[float, ...]
    frame: bool = False
    n_layers: int = 18
    d_model: int = 768
    head_dim: int = 64
    gqa_group: int = 3
    vocab_size: int = 50304
    tie_embeddings: bool = False
    frame_ffn: float = 4.0
    frame_qkv: float = 1.0
    ffn_divisor: int = 256


PRESETS: dict[str, ProfileSpec] = {
    f"paper-18l-{name}": ProfileSpec(ffn=recipe.ffn, qkv=recipe.qkv, frame=recipe.frame)
    for name, recipe in SHAPES.items()
}
"""The study's five 18-layer, ~180M-parameter models (d_model 768, head_dim 64, GQA group 3)."""

OLMO2_1B = ProfileSpec(
    ffn=(4.0, 4.0),
    qkv=(1.0, 1.0),
    n_layers=16,
    d_model=2048,
    head_dim=128,
    gqa_group=1,
    vocab_size=100352,
)
"""OLMo2 1B's block stack: 16 layers, d_model 2048, 16 heads of 128 (no GQA), d_ffn 8192, untied
100,352-token vocabulary; ~1.48B parameters. Its own layer (beta 4, alpha 1) is the isotropic
model and the frame layer."""

PRESETS.update(
    {
        f"olmo2-1b-{name}": (
            OLMO2_1B
            if name == "isotropic"
            else replace(OLMO2_1B, ffn=recipe.ffn, qkv=recipe.qkv, frame=recipe.frame)
        )
        for name, recipe in SHAPES.items()
    }
)
"""1B-class presets: OLMo2 1B and the study's four shapes on its base, to be rescaled to its
parameter count (`model.match: olmo2-1b-isotropic`, as configs/olmo2-1b-*.yaml do)."""


def make_divisible(value: float, divisor: int) -> int:
    """OpenELM's rounding: nearest multiple, never below one divisor nor more than 10% under."""
    if value < divisor:
        return divisor
    rounded = int(value + divisor / 2) // divisor * divisor
    if rounded <= 0.9 * value:
        rounded += divisor
    return rounded


def interpolate(anchors: Sequence[float], n_layers: int) -> list[float]:
    """Per-layer multipliers from anchors, with the exact conventions of the study's code.

    Symmetric anchors give exactly symmetric multipliers: the second half mirrors the first,
    since interpolating up and down the two slopes can differ in the last bit, and a value on a
    rounding tie would then give mirror layers different widths.
    """
    values = _interpolate(anchors, n_layers)
    if list(anchors) == list(reversed(anchors)):
        values = values[: (n_layers + 1) // 2] + values[: n_layers // 2][::-1]
    return values


def _interpolate(anchors: Sequence[float], n_layers: int) -> list[float]:
    if not anchors:
        raise UserError("a profile needs at least one anchor")
    if len(anchors) == 1:
        return [float(anchors[0])] * n_layers
    if len(anchors) == n_layers:
        return [float(a) for a in anchors]
    if n_layers == 1:
        return [float(anchors[0])]
    if len(anchors) == 2:
        a, b = anchors
        return [round(a + (b - a) * i / (n_layers - 1), 2) for i in range(n_layers)]
    knots: list[float]
    if len(anchors) == 3 and anchors[0] == anchors[2]:
        edge, peak = anchors[0], anchors[1]
        mid = math.ceil(n_layers / 2)
        if n_layers % 2 == 0:
            knots, values = [0, mid - 1, mid, n_layers - 1], [edge, peak, peak, edge]
        else:
            knots, values = [0, mid - 1, n_layers - 1], [edge, peak, edge]
        return [_piecewise_linear(knots, values, i) for i in range(n_layers)]
    step = (n_layers - 1) / (len(anchors) - 1)
    knots = [k * step for k in range(len(anchors))]
    return [_piecewise_linear(knots, list(anchors), i) for i in range(n_layers)]


def _piecewise_linear(knots: Sequence[float], values: Sequence[float], x: float) -> float:
    for k in range(len(knots) - 1):
        if knots[k] <= x <= knots[k + 1]:
            if knots[k + 1] == knots[k]:
                return float(values[k])
            t = (x - knots[k]) / (knots[k + 1] - knots[k])
            return float(values[k] + (values[k + 1] - values[k]) * t)
    return float(values[-1])


def multipliers(spec: ProfileSpec) -> tuple[list[float], list[float]]:
    """(beta, alpha) for every layer, frame applied."""
    beta = interpolate(spec.ffn, spec.n_layers)
    alpha = interpolate(spec.qkv, spec.n_layers)
    if spec.frame:
        for i in {0, spec.n_layers - 1}:
            beta[i], alpha[i] = spec.frame_ffn, spec.frame_qkv
    return beta, alpha


def validate_spec(spec: ProfileSpec) -> None:
    checks = [
        (spec.n_layers >= 1, "n_layers", "must be at least 1"),
        (spec.d_model >= 1, "d_model", "must be positive"),
        (spec.head_dim >= 1, "head_dim", "must be positive"),
        (spec.gqa_group >= 1, "gqa_group", "must be at least 1 query head per KV head"),
        (spec.ffn_divisor >= 1, "ffn_divisor", "must be positive"),
        (spec.vocab_size >= 1, "vocab_size", "must be positive"),
    ]
    for ok, setting, why in checks:
        if not ok:
            raise UserError(f"profile setting {setting}={getattr(spec, setting)} {why}")
    for setting in ("ffn", "qkv"):
        anchors = getattr(spec, setting)
        if any(not math.isfinite(a) or a <= 0 for a in anchors):
            raise UserError(
                f"profile setting {setting}={list(anchors)}: every multiplier must be > 0"
            )


def shape_from_spec(spec: ProfileSpec) -> ModelShape:
    """Resolve a recipe into per-layer widths (the study's rounding rules)."""
    validate_spec(spec)
    beta, alpha = multipliers(spec)
    heads_divisor = spec.head_dim * spec.gqa_group
    layers = []
    for b, a in zip(beta, alpha, strict=True):
        n_heads = make_divisible(a * spec.d_model, heads_divisor) // spec.head_dim
        layers.append(
            LayerSpec(
                d_ffn=make_divisible(b * spec.d_model, spec.ffn_divisor),
                n_heads=n_heads,
                n_kv_heads=n_heads // spec.gqa_group,
            )
        )
    return ModelShape(
        d_model=spec.d_model,
        head_dim=spec.head_dim,
        vocab_size=spec.vocab_size,
        layers=tuple(layers),
        tie_embeddings=spec.tie_embeddings,
    )


def lookup_spec(name: str, base: ProfileSpec | None = None) -> ProfileSpec:
    """A preset (`paper-18l-crown`) as it is, or a shape name (`crown`) or shape file
    (`learned-shape.yaml`, layerwise.profiles.shapefile) on the given base."""
    if name in PRESETS:
        return PRESETS[name]
    template = base or PRESETS["paper-18l-isotropic"]
    if is_shape_file(name):
        shape = read_shape_file(name)
        own = template if base is not None else replace(template, **shape.base)
        return replace(own, ffn=shape.ffn, qkv=shape.qkv, frame=False)
    if name in SHAPES:
        recipe = SHAPES[name]
        return replace(template, ffn=recipe.ffn, qkv=recipe.qkv, frame=recipe.frame)
    raise UserError(
        f"unknown profile {name!r}; choose a preset ({', '.join(PRESETS)}), "
        f"a shape ({', '.join(SHAPES)}) or a shape file (.yaml)"
    )
