"""Shape files: an explicit per-layer shape, written by `layerwise learn-shape`, that every
command taking a profile name also takes as a path (`model.profile=learned-shape.yaml`,
`compare --profiles isotropic,learned-shape.yaml`, the ladder's `--profiles`).

A shape file holds one FFN multiplier and one attention multiplier per layer (a layer's d_ffn and
query width over d_model), so on its own base it gives back its widths exactly, and like any
recipe it is rescaled by the budget solver to another budget, or read as evenly spaced anchors
on a model of another depth. The widths it was written with are kept beside them, for reading.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from layerwise.profiles.shape import ModelShape
from layerwise.util.errors import UserError
from layerwise.util.files import atomic_write_text

KIND = "layerwise-shape"
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ShapeFile:
    """What a shape file says: its name (the label runs and reports use) and its recipe."""

    name: str
    ffn: tuple[float, ...]
    qkv: tuple[float, ...]
    path: Path
    base: dict[str, Any]
    """The base it was written on (`n_layers`, `d_model`, ...: ProfileSpec's names), which it
    is read on where no other base is given (`layerwise profile show FILE`)."""


BASE_KEYS = ("n_layers", "d_model", "head_dim", "gqa_group", "ffn_divisor", "vocab_size")


def is_shape_file(name: str) -> bool:
    """A profile given as a path rather than a preset or shape name."""
    return name.endswith(SUFFIXES)


def holds_shape(path: str | Path) -> bool:
    """Whether a YAML file is a shape file (and not, say, a config)."""
    try:
        body = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(body, dict) and body.get("kind") == KIND


def shape_multipliers(shape: ModelShape) -> tuple[list[float], list[float]]:
    """Each layer's d_ffn and query width over d_model: the recipe that is exactly this shape."""
    d = shape.d_model
    return (
        [layer.d_ffn / d for layer in shape.layers],
        [layer.n_heads * shape.head_dim / d for layer in shape.layers],
    )


def write_shape_file(
    path: str | Path,
    name: str,
    shape: ModelShape,
    base: Mapping[str, Any],
    about: Mapping[str, Any],
) -> Path:
    """Write `shape` as a shape file named `name`; `base` holds the base's rounding settings
    (`gqa_group`, `ffn_divisor`), `about` says where the shape came from."""
    ffn, qkv = shape_multipliers(shape)
    body = {
        "kind": KIND,
        "name": name,
        "ffn": ffn,
        "qkv": qkv,
        "base": {
            "n_layers": shape.n_layers,
            "d_model": shape.d_model,
            "head_dim": shape.head_dim,
            **base,
            "vocab_size": shape.vocab_size,
        },
        "layers": [
            {"d_ffn": layer.d_ffn, "n_heads": layer.n_heads, "n_kv_heads": layer.n_kv_heads}
            for layer in shape.layers
        ],
        **about,
    }
    header = (
        "# A per-layer shape: give this file's path wherever a profile name goes, e.g.\n"
        f"#   layerwise compare CONFIG --profiles isotropic,{Path(path).name} --out DIR\n"
    )
    text = header + yaml.safe_dump(json.loads(json.dumps(body)), sort_keys=False)
    return atomic_write_text(path, text)


def read_shape_file(path: str | Path) -> ShapeFile:
    """The file's name and multipliers, refused with the file and key named if malformed."""
    path = Path(path)
    try:
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"profile {path}: no such shape file (a profile is a preset, a shape name or the "
            "path of a file `layerwise learn-shape` wrote)"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"shape file {path} is unreadable: {exc}") from None
    if not isinstance(body, dict) or body.get("kind") != KIND:
        raise UserError(f"{path} is not a shape file (it lacks `kind: {KIND}`)")
    lists = {key: _multipliers(body.get(key), path, key) for key in ("ffn", "qkv")}
    if len(lists["ffn"]) != len(lists["qkv"]):
        raise UserError(
            f"shape file {path}: ffn has {len(lists['ffn'])} values and qkv "
            f"{len(lists['qkv'])}; give one of each per layer"
        )
    name = body.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise UserError(f"shape file {path}: `name` must be a word (it names runs), got {name!r}")
    base = body.get("base", {})
    if not isinstance(base, dict) or any(
        not isinstance(base[key], int) or base[key] < 1 for key in BASE_KEYS if key in base
    ):
        raise UserError(
            f"shape file {path}: `base` must map {', '.join(BASE_KEYS)} to whole numbers"
        )
    kept = {key: base[key] for key in BASE_KEYS if key in base}
    return ShapeFile(name=name, ffn=lists["ffn"], qkv=lists["qkv"], path=path, base=kept)


def _multipliers(value: object, path: Path, key: str) -> tuple[float, ...]:
    items: list[object] = value if isinstance(value, list) else []
    numbers = [float(v) for v in items if isinstance(v, int | float) and not isinstance(v, bool)]
    if (
        not items
        or len(numbers) != len(items)
        or not all(math.isfinite(v) and v > 0 for v in numbers)
    ):
        raise UserError(f"shape file {path}: `{key}` must be a list of numbers above 0")
    return tuple(numbers)


def recipe_overrides(
    ffn: tuple[float, ...], qkv: tuple[float, ...], frame: bool
) -> tuple[str, ...]:
    """Config overrides that make a run train these per-layer multipliers (rescaled by the
    run's budget): the numbers themselves, so a run's config says what it trained."""
    return (
        "model.profile=isotropic",
        f"model.ffn={json.dumps([round(v, 5) for v in ffn])}",
        f"model.qkv={json.dumps([round(v, 5) for v in qkv])}",
        f"model.frame={'true' if frame else 'false'}",
    )


def profile_overrides(name: str) -> tuple[str, ...]:
    """The overrides that make a run train profile `name`: a preset or shape by its name, a
    shape file by its multipliers."""
    if not is_shape_file(name):
        return (f"model.profile={name}",)
    shape = read_shape_file(name)
    return recipe_overrides(shape.ffn, shape.qkv, frame=False)


def profile_label(name: str) -> str:
    """What runs and reports call profile `name`: a shape file by the name inside it."""
    return read_shape_file(name).name if is_shape_file(name) else name
