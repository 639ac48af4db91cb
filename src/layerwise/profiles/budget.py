"""The budget solver: rescale a recipe so that its rounded widths land on a parameter or FLOP
budget, or on the size of another profile, and say how close rounding let it get."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from layerwise.profiles.recipes import ProfileSpec, lookup_spec, shape_from_spec, validate_spec
from layerwise.profiles.shape import Metric, ModelShape, embedding_params, measure
from layerwise.util.errors import UserError


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
    validate_spec(spec)

    def cost(ffn_scale: float, qkv_scale: float) -> int:
        return measure(shape_from_spec(scaled(spec, ffn_scale, qkv_scale)), metric, seq_len)

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
        ffn_scale = _closest_scale(partial(cost, qkv_scale=qkv_scale), target)
        candidate_spec = scaled(spec, ffn_scale, qkv_scale)
        shape = shape_from_spec(candidate_spec)
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
    shape = shape_from_spec(scaled(spec, _MIN_SCALE, _MIN_SCALE))
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
        target = measure(shape_from_spec(lookup_spec(match, spec)), metric, seq_len)
    if target is None:
        return shape_from_spec(spec), None
    result = solve_budget(spec, target, metric, seq_len)
    return result.shape, result
