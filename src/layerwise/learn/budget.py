"""What a learned shape may be and what it costs, without torch: the supernet's units, the
price of one unit, the bounds a target must lie within, and the target's warmup.

Parameters and training FLOPs per token are both affine in a layer's d_ffn, query heads and
key/value heads (layerwise.profiles.shape), so a model's size is its size with every layer
empty plus a fixed price per FFN unit and per GQA group. The expected size of a gated model is
then that price times the expected number of open gates: a smooth function of the gates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from layerwise.profiles.shape import LayerSpec, Metric, ModelShape, embedding_params, measure
from layerwise.util.errors import UserError


@dataclass(frozen=True)
class UnitCosts:
    """A model's size as `fixed + ffn_unit * FFN units + head_group * GQA groups`."""

    metric: Metric
    fixed: int
    """The size with every layer empty: embeddings, LM head, norms."""
    ffn_unit: int
    """One gated block of FFN channels (`ffn_channels` of them) in any layer."""
    head_group: int
    """One GQA group: `group` query heads and their key/value head."""
    ffn_channels: int
    group: int

    def size(self, ffn_units: Sequence[float], head_groups: Sequence[float]) -> float:
        """The size of a model with these (possibly expected) unit counts per layer."""
        return self.fixed + self.ffn_unit * sum(ffn_units) + self.head_group * sum(head_groups)


def unit_costs(supernet: ModelShape, ffn_channels: int, metric: Metric, seq_len: int) -> UnitCosts:
    """The prices of the supernet's units, from the same formulas every report uses."""
    group = supernet.layers[0].n_heads // supernet.layers[0].n_kv_heads
    empty = replace(supernet, layers=tuple(LayerSpec(0, 0, 0) for _ in supernet.layers))
    fixed = measure(empty, metric, seq_len)

    def with_first(layer: LayerSpec) -> int:
        one = replace(empty, layers=(layer, *empty.layers[1:]))
        return measure(one, metric, seq_len) - fixed

    return UnitCosts(
        metric=metric,
        fixed=fixed,
        ffn_unit=with_first(LayerSpec(ffn_channels, 0, 0)),
        head_group=with_first(LayerSpec(0, group, 1)),
        ffn_channels=ffn_channels,
        group=group,
    )


def unit_counts(shape: ModelShape, costs: UnitCosts) -> tuple[list[int], list[int]]:
    """FFN units and GQA groups of each layer of `shape`."""
    return (
        [layer.d_ffn // costs.ffn_channels for layer in shape.layers],
        [layer.n_kv_heads for layer in shape.layers],
    )


def rounded_counts(
    expected: Sequence[float],
    largest: Sequence[int],
    prices: Sequence[int],
    base: float,
    target: float,
) -> list[int]:
    """Whole units from expected ones, landing the size near `target`.

    Each count is rounded down (at least 1, at most `largest`), then units are added back in
    order of the largest remainder while each brings `base + sum(price * count)` closer to the
    target: rounding each layer on its own could leave the total several units off.
    """
    counts = [min(n, max(1, math.floor(e))) for e, n in zip(expected, largest, strict=True)]
    size = base + sum(p * c for p, c in zip(prices, counts, strict=True))
    by_remainder = sorted(range(len(counts)), key=lambda i: counts[i] - expected[i])
    for i in by_remainder:
        if counts[i] < largest[i] and abs(size + prices[i] - target) < abs(size - target):
            counts[i] += 1
            size += prices[i]
    return counts


def smallest_shape(supernet: ModelShape, costs: UnitCosts) -> ModelShape:
    """Every layer at one FFN unit and one GQA group: the least our rounding rules allow."""
    layer = LayerSpec(costs.ffn_channels, costs.group, 1)
    return replace(supernet, layers=tuple(layer for _ in supernet.layers))


def check_target(target: int, supernet: ModelShape, costs: UnitCosts, seq_len: int) -> None:
    """Refuse a target no gating of the supernet can reach, with the numbers."""
    metric = costs.metric
    largest = measure(supernet, metric, seq_len)
    widest = supernet.layers[0]
    if target > largest:
        raise UserError(
            f"learn target {metric}={target:,} is above the supernet's {largest:,} (every layer "
            f"at d_ffn {widest.d_ffn} and {widest.n_heads} query heads); raise learn.max_ffn or "
            "learn.max_qkv, or lower the target"
        )
    if metric == "params" and target <= embedding_params(supernet):
        raise UserError(
            f"learn target params={target:,} is below the embedding and LM head alone "
            f"({embedding_params(supernet):,} for vocab_size={supernet.vocab_size}, "
            f"d_model={supernet.d_model}); raise the target or lower d_model"
        )
    least = measure(smallest_shape(supernet, costs), metric, seq_len)
    if target < least:
        raise UserError(
            f"learn target {metric}={target:,} is below {least:,}, the smallest shape (one "
            f"block of {costs.ffn_channels} FFN channels and one group of {costs.group} query "
            "heads in every layer); raise the target, or lower n_layers or model.ffn_divisor"
        )


def initial_size(supernet: ModelShape, costs: UnitCosts, init_keep: float, seq_len: int) -> float:
    """The supernet's expected size before training: every gate open with `init_keep`."""
    return costs.fixed + init_keep * (measure(supernet, costs.metric, seq_len) - costs.fixed)


def target_at(step: int, start: float, target: float, warmup_steps: int) -> float:
    """The constraint's target for optimizer step `step` (0-based): from `start` to `target`
    linearly over `warmup_steps`, then the target."""
    if step >= warmup_steps:
        return float(target)
    return start + (target - start) * step / warmup_steps
