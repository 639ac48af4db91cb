"""The study's per-layer tables are a contract: these tests pin them exactly."""

from __future__ import annotations

from dataclasses import replace

import pytest

from layerwise.profiles.budget import resolve_shape, solve_budget
from layerwise.profiles.recipes import (
    PRESETS,
    ProfileSpec,
    interpolate,
    lookup_spec,
    make_divisible,
    shape_from_spec,
)
from layerwise.profiles.shape import flops_per_token, non_embedding_params, total_params
from layerwise.util.errors import UserError
from layerwise.util.units import parse_count

STUDY_FFN = {
    "vanilla": [
        768,
        1024,
        1024,
        1280,
        1280,
        1536,
        1536,
        1792,
        1792,
        2048,
        2048,
        2304,
        2304,
        2560,
        2560,
        2816,
        2816,
        3072,
    ],
    "framed": [
        3072,
        512,
        768,
        1024,
        1024,
        1280,
        1280,
        1536,
        1536,
        1792,
        2048,
        2048,
        2304,
        2560,
        2560,
        2816,
        2816,
        3072,
    ],
    "reverse": [
        3072,
        2816,
        2816,
        2560,
        2560,
        2304,
        2048,
        2048,
        1792,
        1536,
        1536,
        1280,
        1280,
        1024,
        1024,
        768,
        512,
        3072,
    ],
    "crown": [
        3072,
        768,
        1024,
        1280,
        1536,
        2048,
        2304,
        2560,
        2816,
        2816,
        2560,
        2304,
        2048,
        1536,
        1280,
        1024,
        768,
        3072,
    ],
    "isotropic": [2048] * 18,
}
STUDY_HEADS = {
    "vanilla": [6, 6] + [9] * 10 + [12] * 6,
    "framed": [12, 6] + [9] * 10 + [12] * 6,
    "reverse": [12] * 6 + [9] * 10 + [6, 12],
    "crown": [12] + [9] * 5 + [12] * 6 + [9] * 5 + [12],
    "isotropic": [9] * 18,
}
STUDY_MILLIONS = {
    "isotropic": 183.48,
    "vanilla": 179.74,
    "framed": 179.35,
    "reverse": 179.35,
    "crown": 181.91,
}


@pytest.mark.parametrize("name", list(STUDY_FFN))
def test_presets_reproduce_the_study_tables(name: str) -> None:
    shape = shape_from_spec(PRESETS[f"paper-18l-{name}"])
    assert [layer.d_ffn for layer in shape.layers] == STUDY_FFN[name]
    assert [layer.n_heads for layer in shape.layers] == STUDY_HEADS[name]
    assert all(layer.n_kv_heads * 3 == layer.n_heads for layer in shape.layers)
    assert round(total_params(shape) / 1e6, 2) == STUDY_MILLIONS[name]


def test_isotropic_without_embeddings_matches_the_study() -> None:
    shape = shape_from_spec(PRESETS["paper-18l-isotropic"])
    assert round(non_embedding_params(shape) / 1e6, 2) == 106.21


def test_make_divisible_follows_openelm() -> None:
    assert make_divisible(100, 256) == 256
    assert make_divisible(906.24, 256) == 1024
    assert make_divisible(576, 192) == 576
    assert make_divisible(1.12 * 256, 256) == 512  # rounding down would lose more than 10%


def test_two_anchors_are_rounded_to_two_decimals() -> None:
    assert interpolate([1.0, 4.0], 18)[1] == 1.18
    assert interpolate([0.5, 1.0], 4) == [0.5, 0.67, 0.83, 1.0]


def test_crown_interpolation_even_and_odd() -> None:
    even = interpolate([0.5, 3.8, 0.5], 4)
    assert even == [0.5, 3.8, 3.8, 0.5]
    odd = interpolate([1.0, 3.0, 1.0], 5)
    assert odd == [1.0, 2.0, 3.0, 2.0, 1.0]


def test_many_anchors_and_explicit_lists() -> None:
    assert interpolate([1.0, 2.0, 4.0, 1.0], 7) == pytest.approx(
        [1.0, 1.5, 2.0, 3.0, 4.0, 2.5, 1.0]
    )
    explicit = [1.0, 3.0, 2.0, 5.0, 1.5]
    assert interpolate(explicit, 5) == explicit


def test_frame_overwrites_first_and_last_layer() -> None:
    spec = ProfileSpec(ffn=(1.0, 1.0), qkv=(0.5, 0.5), frame=True, n_layers=4)
    layers = shape_from_spec(spec).layers
    assert (layers[0].d_ffn, layers[0].n_heads) == (3072, 12)
    assert (layers[-1].d_ffn, layers[-1].n_heads) == (3072, 12)
    assert (layers[1].d_ffn, layers[1].n_heads) == (768, 6)


def test_flops_of_the_isotropic_reference() -> None:
    """6 FLOPs per matmul weight plus 12 * q_dim * seq for attention, per layer (PaLM's count)."""
    shape = shape_from_spec(PRESETS["paper-18l-isotropic"])
    per_layer = 6 * (2 * 768 * 576 + 2 * 768 * 192 + 3 * 768 * 2048) + 12 * 576 * 1024
    assert flops_per_token(shape, 1024) == 18 * per_layer + 6 * 50304 * 768


def test_flops_count_each_layers_own_heads() -> None:
    """Costing every layer at one model-wide head count would understate Crown's attention."""
    crown = shape_from_spec(PRESETS["paper-18l-crown"])
    uniform_heads = replace(
        crown, layers=tuple(replace(layer, n_heads=9, n_kv_heads=3) for layer in crown.layers)
    )
    extra_q = sum(layer.n_heads - 9 for layer in crown.layers) * 64
    extra_kv = sum(layer.n_kv_heads - 3 for layer in crown.layers) * 64
    difference = 6 * (2 * 768 * extra_q + 2 * 768 * extra_kv) + 12 * extra_q * 1024
    assert flops_per_token(crown, 1024) - flops_per_token(uniform_heads, 1024) == difference
    assert difference > 0


def test_solver_matches_isotropic_within_half_a_percent() -> None:
    for shape in ("vanilla", "framed", "reverse", "crown"):
        shape_out, result = resolve_shape(lookup_spec(shape), match="paper-18l-isotropic")
        assert result is not None
        assert abs(result.relative_error) <= 0.005
        assert total_params(shape_out) == result.achieved


def test_solver_reports_how_far_it_landed_when_rounding_forbids() -> None:
    result = solve_budget(lookup_spec("isotropic"), 200_000_000)
    assert result.achieved == total_params(result.shape)
    assert 0 < abs(result.relative_error) < 0.01


def test_solver_can_match_flops() -> None:
    shape, result = resolve_shape(lookup_spec("crown"), match="isotropic", metric="flops")
    assert result is not None and abs(result.relative_error) <= 0.005
    assert result.achieved == flops_per_token(shape, 1024)


def test_infeasible_targets_name_the_setting() -> None:
    with pytest.raises(UserError, match="embedding"):
        solve_budget(lookup_spec("crown"), 50_000_000)
    with pytest.raises(UserError, match=r"layer \d+ .*ffn_divisor"):
        solve_budget(lookup_spec("crown"), 100_000_000)


def test_bad_specs_are_rejected() -> None:
    with pytest.raises(UserError, match="ffn"):
        shape_from_spec(ProfileSpec(ffn=(0.0, 1.0), qkv=(1.0, 1.0)))
    with pytest.raises(UserError, match="unknown profile"):
        lookup_spec("diamond")


def test_parse_count() -> None:
    assert parse_count("180M") == 180_000_000
    assert parse_count("1.2B") == 1_200_000_000
    assert parse_count("350_000") == 350_000
    with pytest.raises(UserError):
        parse_count("lots")


@pytest.mark.parametrize("match", ["paper-18l-isotropic", None])
@pytest.mark.parametrize("name", ["crown", "isotropic"])
def test_symmetric_anchors_give_symmetric_widths(name: str, match: str | None) -> None:
    """Crown matched to isotropic once got 3072 and 2816 in its middle layers (a rounding tie)."""
    shape, _ = resolve_shape(lookup_spec(name), match=match)
    widths = [(layer.d_ffn, layer.n_heads) for layer in shape.layers]
    assert widths == widths[::-1]
    for n_layers in (7, 18):
        values = interpolate((0.5043859649122806, 3.8333333333333326, 0.5043859649122806), n_layers)
        assert values == values[::-1]
