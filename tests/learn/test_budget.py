"""The prices of gated units, the bounds on a target, and landing the rounded counts."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from layerwise.learn.budget import (
    check_target,
    rounded_counts,
    target_at,
    unit_costs,
    unit_counts,
)
from layerwise.profiles.shape import LayerSpec, ModelShape, flops_per_token, total_params
from layerwise.util.errors import UserError

SUPERNET = ModelShape(
    d_model=64, head_dim=16, vocab_size=300, layers=tuple(LayerSpec(256, 4, 2) for _ in range(4))
)
"""Every layer 16 FFN units of 16 channels and 2 GQA groups of 2 heads."""


def random_shape(rng: random.Random) -> ModelShape:
    layers = []
    for _ in SUPERNET.layers:
        groups = rng.randint(1, 2)
        layers.append(LayerSpec(16 * rng.randint(1, 16), 2 * groups, groups))
    return replace(SUPERNET, layers=tuple(layers))


@pytest.mark.parametrize("metric", ["params", "flops"])
def test_the_unit_prices_give_every_gated_shape_its_exact_size(metric: str) -> None:
    costs = unit_costs(SUPERNET, 16, metric, seq_len=32)  # type: ignore[arg-type]
    measure = total_params if metric == "params" else (lambda s: flops_per_token(s, 32))
    rng = random.Random(0)
    for _ in range(20):
        shape = random_shape(rng)
        assert costs.size(*unit_counts(shape, costs)) == measure(shape)


def test_a_target_outside_what_the_supernet_can_reach_is_refused_with_the_numbers() -> None:
    costs = unit_costs(SUPERNET, 16, "params", seq_len=32)
    largest = total_params(SUPERNET)
    with pytest.raises(UserError, match=f"above the supernet's {largest:,}.*learn.max_ffn"):
        check_target(largest + 1, SUPERNET, costs, 32)
    with pytest.raises(UserError, match="below the embedding and LM head alone \\(38,400"):
        check_target(30_000, SUPERNET, costs, 32)
    smallest = total_params(replace(SUPERNET, layers=(LayerSpec(16, 2, 1),) * 4))
    with pytest.raises(UserError, match=f"below {smallest:,}, the smallest shape"):
        check_target(smallest - 1, SUPERNET, costs, 32)
    check_target(largest, SUPERNET, costs, 32)
    check_target(smallest, SUPERNET, costs, 32)


def test_rounded_counts_land_nearer_the_target_than_rounding_each_count_alone() -> None:
    expected = [2.5, 2.5, 2.5, 2.5]  # each rounds to 2 or 3 alone: 8 or 12 units of price 10
    counts = rounded_counts(expected, [4] * 4, [10] * 4, base=100, target=200)
    assert sum(counts) == 10 and all(c in (2, 3) for c in counts)
    # never below one unit nor above the supernet's
    assert rounded_counts([0.1, 9.0], [4, 4], [10, 10], base=0, target=0) == [1, 4]


def test_the_target_warms_up_linearly_then_stays() -> None:
    assert [target_at(s, 100.0, 50.0, 5) for s in (0, 1, 5, 9)] == [100.0, 90.0, 50.0, 50.0]
    assert target_at(0, 100.0, 50.0, 0) == 50.0
