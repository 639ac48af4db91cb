"""Shape files: written from a shape, read back as the same widths, wherever a profile goes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from layerwise.profiles.budget import solve_budget
from layerwise.profiles.recipes import ProfileSpec, lookup_spec, shape_from_spec
from layerwise.profiles.shape import LayerSpec, ModelShape
from layerwise.profiles.shapefile import (
    profile_label,
    profile_overrides,
    read_shape_file,
    write_shape_file,
)
from layerwise.util.errors import UserError

BASE = ProfileSpec(
    ffn=(1.0,), qkv=(1.0,), n_layers=4, d_model=768, head_dim=64, gqa_group=3, vocab_size=1000
)
SHAPE = ModelShape(
    d_model=768,
    head_dim=64,
    vocab_size=1000,
    layers=(
        LayerSpec(256, 6, 2),
        LayerSpec(2560, 12, 4),
        LayerSpec(3072, 9, 3),
        LayerSpec(768, 3, 1),
    ),
)


ROUNDING = {"gqa_group": 3, "ffn_divisor": 256}


def test_a_shape_file_gives_back_its_widths_exactly_on_its_base(tmp_path: Path) -> None:
    path = write_shape_file(tmp_path / "s.yaml", "learned", SHAPE, ROUNDING, {"note": "test"})
    assert shape_from_spec(lookup_spec(str(path), BASE)) == SHAPE
    assert shape_from_spec(lookup_spec(str(path))) == SHAPE  # on the base it records
    assert profile_label(str(path)) == "learned"
    assert "# A per-layer shape" in path.read_text()


def test_a_shape_file_is_rescaled_and_stretched_like_any_recipe(tmp_path: Path) -> None:
    path = str(write_shape_file(tmp_path / "s.yaml", "learned", SHAPE, ROUNDING, {}))
    landed = solve_budget(lookup_spec(path, BASE), 20_000_000)
    assert abs(landed.relative_error) < 0.01
    deeper = shape_from_spec(lookup_spec(path, replace(BASE, n_layers=8)))  # anchors over depth
    assert deeper.n_layers == 8 and deeper.layers[0] == SHAPE.layers[0]
    assert deeper.layers[-1] == SHAPE.layers[-1]


def test_runs_of_a_shape_file_carry_its_numbers_not_its_path(tmp_path: Path) -> None:
    path = str(write_shape_file(tmp_path / "s.yaml", "learned", SHAPE, ROUNDING, {}))
    overrides = profile_overrides(path)
    assert "model.profile=isotropic" in overrides and "model.frame=false" in overrides
    assert any(o.startswith("model.ffn=[0.33333, 3.33333, 4.0, 1.0]") for o in overrides)
    assert profile_overrides("crown") == ("model.profile=crown",)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("kind: other\n", "is not a shape file"),
        ("kind: layerwise-shape\nname: x\nffn: [1.0]\nqkv: [1.0, 2.0]\n", "one of each per layer"),
        ("kind: layerwise-shape\nname: x\nffn: [1.0, -2]\nqkv: [1.0, 2.0]\n", "`ffn` must be"),
        ("kind: layerwise-shape\nname: a/b\nffn: [1.0]\nqkv: [1.0]\n", "`name` must be a word"),
        ("kind: [\n", "is unreadable"),
    ],
)
def test_a_malformed_shape_file_is_refused_naming_the_file_and_key(
    tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(UserError, match=message) as error:
        read_shape_file(path)
    assert str(path) in str(error.value)


def test_a_missing_shape_file_says_what_a_profile_may_be(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such shape file"):
        lookup_spec(str(tmp_path / "nope.yaml"))
