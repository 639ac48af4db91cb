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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from layerwise.errors import UserError


@dataclass(frozen=True)
class LayerSpec:
    """The widths of one transformer block."""

    d_ffn: int
    n_heads: int
    n_kv_heads: int


@dataclass(frozen=True)
class ModelShape:
    """Everything about a model's size: the single source of truth for its per-layer widths."""

    d_model: int
    head_dim: int
    vocab_size: int
    layers: tuple[LayerSpec, ...]
    tie_embeddings: bool = False

    @property
    def n_layers(self) -> int:
        return len(self.layers)


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


def _validate(spec: ProfileSpec) -> None:
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


def build_shape(spec: ProfileSpec) -> ModelShape:
    """Resolve a recipe into per-layer widths (the study's rounding rules)."""
    _validate(spec)
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


# ---------------------------------------------------------------------------------------------
# Accounting


def layer_params(shape: ModelShape, layer: LayerSpec) -> int:
    """Parameters of one block: q/k/v/o projections, QK-norm weights, SwiGLU, two norms."""
    d = shape.d_model
    q_dim = layer.n_heads * shape.head_dim
    kv_dim = layer.n_kv_heads * shape.head_dim
    attention = 2 * d * q_dim + 2 * d * kv_dim + q_dim + kv_dim
    return attention + 3 * d * layer.d_ffn + 2 * d


def embedding_params(shape: ModelShape) -> int:
    """Input embedding plus LM head (one matrix when tied)."""
    copies = 1 if shape.tie_embeddings else 2
    return copies * shape.vocab_size * shape.d_model


def total_params(shape: ModelShape) -> int:
    """Exactly `sum(p.numel() for p in model.parameters())` of the built model."""
    blocks = sum(layer_params(shape, layer) for layer in shape.layers)
    return blocks + embedding_params(shape) + shape.d_model


def non_embedding_params(shape: ModelShape) -> int:
    return total_params(shape) - embedding_params(shape)


def layer_flops_per_token(shape: ModelShape, layer: LayerSpec, seq_len: int) -> int:
    """Training FLOPs (forward + backward) one token spends in one block.

    6 FLOPs per matmul weight (2 forward, 4 backward) plus attention's score and value products,
    12 * q_dim * seq_len, counted without a causal discount as in PaLM's MFU convention. Each layer
    uses its own head count: a single model-wide head count would misstate layer-wise models.
    """
    d = shape.d_model
    q_dim = layer.n_heads * shape.head_dim
    kv_dim = layer.n_kv_heads * shape.head_dim
    matmul_weights = 2 * d * q_dim + 2 * d * kv_dim + 3 * d * layer.d_ffn
    return 6 * matmul_weights + 12 * q_dim * seq_len


def flops_per_token(shape: ModelShape, seq_len: int) -> int:
    """Training FLOPs per token of the whole model: blocks plus the LM head matmul."""
    blocks = sum(layer_flops_per_token(shape, layer, seq_len) for layer in shape.layers)
    return blocks + 6 * shape.vocab_size * shape.d_model


# ---------------------------------------------------------------------------------------------
# Budget solver

Metric = Literal["params", "flops"]


@dataclass(frozen=True)
class BudgetResult:
    """What the solver chose and how close it got."""

    spec: ProfileSpec
    shape: ModelShape
    target: int
    achieved: int
    metric: Metric
    ffn_scale: float
    qkv_scale: float

    @property
    def relative_error(self) -> float:
        return (self.achieved - self.target) / self.target


TOLERANCE = 0.005
"""The solver stops looking for a better attention scale once it lands within 0.5%."""

_MIN_SCALE = 1e-6
_MAX_SCALE = 64.0


def measure(shape: ModelShape, metric: Metric, seq_len: int) -> int:
    return total_params(shape) if metric == "params" else flops_per_token(shape, seq_len)


def scaled(spec: ProfileSpec, ffn_scale: float, qkv_scale: float) -> ProfileSpec:
    """The same recipe with every anchor multiplied; the frame stays the reference layer."""
    return replace(
        spec,
        ffn=tuple(a * ffn_scale for a in spec.ffn),
        qkv=tuple(a * qkv_scale for a in spec.qkv),
    )


def _closest_scale(cost: Callable[[float], int], target: int) -> float:
    """The scale whose (monotone, stepwise) cost lands closest to the target.

    Rounding makes cost a staircase in the scale, so bisection finds the step boundary and the
    two neighbouring steps are compared.
    """
    lo, hi = _MIN_SCALE, _MAX_SCALE
    for _ in range(60):
        mid = (lo + hi) / 2
        if cost(mid) < target:
            lo = mid
        else:
            hi = mid
    below, above = cost(lo), cost(hi)
    return lo if target - below < above - target else hi


def solve_budget(
    spec: ProfileSpec,
    target: int,
    metric: Metric = "params",
    seq_len: int = 1024,
) -> BudgetResult:
    """Scale a recipe's multipliers so its rounded widths land closest to `target`.

    The FFN anchors are scaled first with the attention anchors as given; only when rounding
    keeps that more than 0.5% away are attention scales tried, nearest to the given one first,
    so the recipe's balance between attention and FFN is kept whenever the budget allows.
    """
    _validate(spec)

    def cost(ffn_scale: float, qkv_scale: float) -> int:
        return measure(build_shape(scaled(spec, ffn_scale, qkv_scale)), metric, seq_len)

    smallest = cost(_MIN_SCALE, _MIN_SCALE)
    if target < smallest:
        raise UserError(_too_small_message(spec, target, smallest, metric))
    if target > cost(_MAX_SCALE, _MAX_SCALE):
        raise UserError(
            f"target {metric}={target:,} is beyond what multipliers up to {_MAX_SCALE:g}x can reach"
            " on this base; raise d_model or n_layers"
        )
    best: BudgetResult | None = None
    for qkv_scale in _qkv_scale_candidates():
        ffn_scale = _closest_scale(lambda s, q=qkv_scale: cost(s, q), target)
        candidate_spec = scaled(spec, ffn_scale, qkv_scale)
        shape = build_shape(candidate_spec)
        result = BudgetResult(
            spec=candidate_spec,
            shape=shape,
            target=target,
            achieved=measure(shape, metric, seq_len),
            metric=metric,
            ffn_scale=ffn_scale,
            qkv_scale=qkv_scale,
        )
        if best is None or abs(result.relative_error) < abs(best.relative_error):
            best = result
        if abs(best.relative_error) <= TOLERANCE:
            break
    assert best is not None
    return best


def _qkv_scale_candidates() -> list[float]:
    """Attention scales to try, the recipe's own first, then ever further from it."""
    steps = [1.02**k for k in range(1, 57)]
    return [1.0] + [s for step in steps for s in (1 / step, step)]


def _too_small_message(spec: ProfileSpec, target: int, smallest: int, metric: Metric) -> str:
    shape = build_shape(scaled(spec, _MIN_SCALE, _MIN_SCALE))
    if metric == "params" and target < embedding_params(shape):
        return (
            f"target params={target:,} is below the embedding and LM head alone "
            f"({embedding_params(shape):,} for vocab_size={spec.vocab_size}, d_model={spec.d_model});"
            " lower vocab_size or d_model, or raise the target"
        )
    index, layer = min(enumerate(shape.layers), key=lambda item: item[1].d_ffn)
    frame = " (the frame layers keep the reference width)" if spec.frame else ""
    return (
        f"target {metric}={target:,} is below {smallest:,}, the size with every scaled layer at its"
        f" minimum width{frame}: layer {index} would need d_ffn below one ffn_divisor"
        f" ({spec.ffn_divisor}) and fewer than one group of gqa_group={spec.gqa_group} heads"
        f" ({layer.n_heads} of head_dim {spec.head_dim}); lower n_layers or d_model, or raise the target"
    )


def parse_count(text: str) -> int:
    """'180M', '1.2B', '350k' or a plain integer, as users write budgets."""
    units = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
    cleaned = text.strip().replace("_", "").replace(",", "")
    factor = units.get(cleaned[-1:].lower(), 1)
    number = cleaned[:-1] if factor != 1 else cleaned
    try:
        value = float(number) * factor
    except ValueError:
        raise UserError(
            f"cannot read {text!r} as a count; write e.g. 180M, 1.2B or 350000"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"count {text!r} must be positive")
    return round(value)


def lookup_spec(name: str, base: ProfileSpec | None = None) -> ProfileSpec:
    """A preset (`paper-18l-crown`) as it is, or a shape name (`crown`) on the given base."""
    if name in PRESETS:
        return PRESETS[name]
    if name in SHAPES:
        recipe = SHAPES[name]
        template = base or PRESETS["paper-18l-isotropic"]
        return replace(template, ffn=recipe.ffn, qkv=recipe.qkv, frame=recipe.frame)
    raise UserError(
        f"unknown profile {name!r}; choose a preset ({', '.join(PRESETS)}) "
        f"or a shape ({', '.join(SHAPES)})"
    )


def resolve_shape(
    spec: ProfileSpec,
    target: int | None = None,
    match: str | None = None,
    metric: Metric = "params",
    seq_len: int = 1024,
) -> tuple[ModelShape, BudgetResult | None]:
    """The widths to train: the recipe as given, or rescaled to a budget.

    `match` names a preset or shape (on the same base) whose parameter count (or FLOPs per token)
    becomes the target; it excludes `target`.
    """
    if target is not None and match is not None:
        raise UserError("give either a target budget or a profile to match, not both")
    if match is not None:
        target = measure(build_shape(lookup_spec(match, spec)), metric, seq_len)
    if target is None:
        return build_shape(spec), None
    result = solve_budget(spec, target, metric, seq_len)
    return result.shape, result
