"""Loading configs: YAML files with inheritance, command-line overrides, and checked values.

A file may start from another with `inherit: base.yaml` (relative to the including file), so each
preset only states what makes it different; `key=value` overrides from the command line are
applied last, their values read with the same YAML parser as files. Every key and value is checked
against the dataclasses of layerwise.config.schema before anything runs, and errors name the file
(or the override) that set the bad value, because a typo found after an hour of training is an
hour lost. Paths inside a config (`data.dir`, `run.dir`) are relative to the working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import inspect
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from layerwise.config.schema import (
    SOURCE_KEYS,
    Config,
    DataConfig,
    batch_plan,
    data_sources,
    total_steps,
    warmup_steps,
)
from layerwise.util.errors import UserError
from layerwise.util.imports import import_object
from layerwise.util.units import parse_count

INHERIT_KEY = "inherit"


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """The config in `path` (with what it inherits), then `section.key=value` overrides."""
    values, sources = _load_file(Path(path), ())
    for text in overrides:
        section, key, value = parse_override(text)
        _set_later(values, sources, section, key, value, f"{OVERRIDE} {text!r}")
    return config_from_dict(values, sources, default_source=str(path))


OVERRIDE = "override"
"""How `sources` names a key set on the command line."""

ALTERNATIVES = (
    ("model.target_params", "model.match"),
    ("batch.global_batch", "batch.global_batch_tokens"),
    ("train.steps", "train.tokens"),
    ("optim.warmup_steps", "optim.warmup_fraction"),
    ("data.dir", "data.sources"),
)
"""Pairs of keys that say one thing two ways: a later source that sets one replaces the other as
an earlier source gave it (an override over the file, a file over what it inherits)."""


def _set_later(
    values: dict[str, dict],
    sources: dict[str, str],
    section: str,
    key: str,
    value: Any,
    source: str,
) -> None:
    """Set `section.key` from `source`, which comes after the sources already in `values`, and
    drop its alternative where an earlier layer set that; one layer giving both stays an error."""
    dotted = f"{section}.{key}"
    values.setdefault(section, {})[key] = value
    sources[dotted] = source
    for pair in ALTERNATIVES:
        if dotted not in pair:
            continue
        other = pair[1 - pair.index(dotted)]
        other_section, other_key = other.split(".")
        earlier = sources.get(other, source)
        same_layer = earlier == source or (
            earlier.startswith(OVERRIDE) and source.startswith(OVERRIDE)
        )
        if other_key in values.get(other_section, {}) and not same_layer:
            del values[other_section][other_key]
            del sources[other]


def parse_override(text: str) -> tuple[str, str, Any]:
    """`optim.lr=3e-4` -> ("optim", "lr", 3e-4), the value parsed as YAML; the key is checked."""
    dotted, sep, raw = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not sep or not dot or not section or not key or "." in key:
        raise UserError(f"override {text!r} must look like section.key=value, e.g. optim.lr=3e-4")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise UserError(f"override {text!r}: the value is not valid YAML ({exc})") from None
    _check_key(section, key, f"override {text!r}")
    return section, key, value


def _load_file(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, dict], dict[str, str]]:
    """Sections of one file merged over those it inherits, and which file set each key."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise UserError(f"config inheritance loops: {cycle}")
    document = _read_yaml(path)
    values: dict[str, dict] = {}
    sources: dict[str, str] = {}
    for parent in _inherited(document.pop(INHERIT_KEY, None), path):
        if not parent.is_file():
            raise UserError(
                f"{path}: `{INHERIT_KEY}:` names {parent}, which is not a file (inherited paths "
                "are relative to the file that inherits them)"
            )
        parent_values, parent_sources = _load_file(parent, (*chain, resolved))
        _merge(values, parent_values)
        sources.update(parent_sources)
    for section, body in document.items():
        body = {} if body is None else body
        if not isinstance(body, Mapping):
            raise UserError(
                f"{path}: section {section!r} must be a mapping of keys to values, got {body!r}"
            )
        for key, value in body.items():
            _check_key(section, str(key), str(path))
            _set_later(values, sources, section, str(key), value, str(path))
    return values, sources


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file {path} not found") from None
    except OSError as exc:
        raise UserError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise UserError(
            f"{path} must be a mapping of sections (model:, data:, ...), not a {type(document).__name__}"
        )
    return document


def _inherited(value: object, including: Path) -> list[Path]:
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{including}: `{INHERIT_KEY}` must be a file name or a list of file names")
    return [including.parent / name for name in names]


def _merge(into: dict[str, dict], other: Mapping[str, Mapping]) -> None:
    for section, body in other.items():
        into.setdefault(section, {}).update(body)


def field_key(f: dataclasses.Field) -> str:
    """The key users write for a field: its name, or `metadata["key"]` where the name is a
    Python keyword (`init.from` is the field `from_`)."""
    return f.metadata.get("key", f.name)


@functools.cache
def _section_types() -> dict[str, type]:
    return {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


def _check_key(section: str, key: str, source: str) -> None:
    sections = _section_types()
    if section not in sections:
        raise UserError(
            f"{source}: unknown section {section!r}{_did_you_mean(section, sections)}; "
            f"valid sections: {', '.join(sections)}"
        )
    valid = [field_key(f) for f in dataclasses.fields(sections[section])]
    if key not in valid:
        raise UserError(
            f"{source}: unknown key {section}.{key}{_did_you_mean(key, valid)}; "
            f"valid keys in {section}: {', '.join(valid)}"
        )


def config_keys() -> list[str]:
    """Every `section.key` a config has, for spelling hints."""
    return [
        f"{section}.{field_key(f)}"
        for section, cls in _section_types().items()
        for f in dataclasses.fields(cls)
    ]


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_from_dict(
    values: Mapping[str, Mapping[str, Any]],
    sources: Mapping[str, str] | None = None,
    default_source: str = "config",
) -> Config:
    """Build and check a Config from `{section: {key: value}}`; `sources` names where each key came from."""
    sources = sources or {}
    for section, body in values.items():
        for key in body:
            _check_key(section, key, sources.get(f"{section}.{key}", default_source))
    sections = {}
    for section, cls in _section_types().items():
        given = values.get(section, {})
        hints = typing.get_type_hints(cls)
        kwargs = {
            f.name: _coerce(
                given[field_key(f)],
                hints[f.name],
                f.metadata,
                f"{section}.{field_key(f)}",
                sources.get(f"{section}.{field_key(f)}", default_source),
            )
            for f in dataclasses.fields(cls)
            if field_key(f) in given
        }
        sections[section] = cls(**kwargs)
    config = Config(**sections)
    _check_consistency(config, sources, default_source)
    return config


# ---------------------------------------------------------------------------------------------
# Types and values


class _Mismatch(Exception):
    """A value does not fit a type; caught and turned into one UserError naming key and source."""


def _coerce(value: Any, annotation: Any, metadata: Mapping, key: str, where: str) -> Any:
    try:
        result = _convert(value, annotation, bool(metadata.get("count")))
    except _Mismatch:
        raise UserError(
            f"{where}: {key} = {value!r} ({type(value).__name__}) but it must be "
            f"{_describe(annotation, bool(metadata.get('count')))}"
        ) from None
    _check_bounds(result, metadata, key, where)
    return result


def _convert(value: Any, annotation: Any, count: bool) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for member in args:
            try:
                return _convert(value, member, count)
            except _Mismatch:
                continue
        raise _Mismatch
    if annotation is Any:
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        key_type, value_type = args
        return {
            _convert(k, key_type, count): _convert(v, value_type, count) for k, v in value.items()
        }
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        raise _Mismatch
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is tuple and len(value) != len(args):
            raise _Mismatch
        element_types = args if origin is tuple else [args[0]] * len(value)
        converted = [_convert(v, t, count) for v, t in zip(value, element_types, strict=True)]
        return tuple(converted) if origin is tuple else converted
    if annotation is type(None):
        if value is None:
            return None
        raise _Mismatch
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation is int:
        return _to_int(value, count)
    if annotation is float:
        return _to_float(value)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise TypeError(f"config field type {annotation!r} is not supported")


def _to_int(value: Any, count: bool) -> int:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, int):
        return value
    if count and isinstance(value, float) and value.is_integer():
        return int(value)
    if count and isinstance(value, str):
        try:
            return parse_count(value)
        except UserError:
            raise _Mismatch from None
    raise _Mismatch


def _to_float(value: Any) -> float:
    """A number; strings like '3e-4' too, which YAML 1.1 (PyYAML) reads as strings, not floats."""
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            raise _Mismatch from None
    else:
        raise _Mismatch
    if not math.isfinite(result):
        raise _Mismatch
    return result


def _describe(annotation: Any, count: bool) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, count) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {len(args)} " + _plural(args[0])
    if origin is list:
        return "a list of " + _plural(args[0])
    if origin is dict:
        return "a mapping of " + _plural(args[0]) + " to " + _plural(args[1])
    if annotation is Any:
        return "any value"
    names = {
        type(None): "null",
        bool: "true or false",
        int: "an integer" + (" or a count like 180M" if count else ""),
        float: "a finite number",
        str: "a string",
    }
    return names[annotation]


def _plural(annotation: Any) -> str:
    if typing.get_origin(annotation) is dict:
        return "mappings"
    return {float: "numbers", int: "integers", str: "strings", Any: "values"}[annotation]


def _check_bounds(value: Any, metadata: Mapping, key: str, where: str) -> None:
    if value is None or not isinstance(value, (int, float)):
        return
    low, above, high = metadata.get("low"), metadata.get("above"), metadata.get("high")
    if low is not None and value < low:
        raise UserError(f"{where}: {key} = {value!r} must be at least {low}")
    if above is not None and value <= above:
        raise UserError(f"{where}: {key} = {value!r} must be greater than {above}")
    if high is not None and value > high:
        raise UserError(f"{where}: {key} = {value!r} must be at most {high}")


def _check_consistency(config: Config, sources: Mapping[str, str], default: str) -> None:
    """Rules that involve several keys: exactly-one-of choices and the batch's token split."""

    def where(*keys: str) -> str:
        found = sorted({sources.get(k, default) for k in keys})
        return ", ".join(found)

    model, batch, train, optim = config.model, config.batch, config.train, config.optim
    if model.target_params is not None and model.match is not None:
        raise UserError(
            f"{where('model.target_params', 'model.match')}: give model.target_params or "
            "model.match, not both"
        )
    if (batch.global_batch is None) == (batch.global_batch_tokens is None):
        raise UserError(
            f"{where('batch.global_batch', 'batch.global_batch_tokens')}: give exactly one of "
            "batch.global_batch (sequences per step) and batch.global_batch_tokens"
        )
    seq_len = config.data.seq_len
    if batch.global_batch_tokens is not None and batch.global_batch_tokens % seq_len:
        raise UserError(
            f"{where('batch.global_batch_tokens', 'data.seq_len')}: batch.global_batch_tokens="
            f"{batch.global_batch_tokens:,} is not a whole number of sequences of "
            f"data.seq_len={seq_len}; use a multiple of {seq_len}"
        )
    if (train.steps is None) == (train.tokens is None):
        raise UserError(
            f"{where('train.steps', 'train.tokens')}: give exactly one of train.steps and train.tokens"
        )
    if not all(0 <= b < 1 for b in optim.betas):
        raise UserError(
            f"{where('optim.betas')}: optim.betas = {list(optim.betas)} must be in [0, 1)"
        )
    if optim.warmup_fraction is not None and optim.warmup_steps:
        raise UserError(
            f"{where('optim.warmup_steps', 'optim.warmup_fraction')}: give optim.warmup_steps or "
            "optim.warmup_fraction, not both (set optim.warmup_fraction=null to count warmup in "
            "steps, or optim.warmup_steps=0 to use the fraction)"
        )
    steps = total_steps(config)
    if warmup_steps(optim, steps) >= steps:
        raise UserError(
            f"{where('optim.warmup_steps', 'train.steps', 'train.tokens')}: optim.warmup_steps="
            f"{optim.warmup_steps} must be less than the run's {steps} steps (or give "
            "optim.warmup_fraction, which scales with the run)"
        )
    batch_plan(config, world_size=1)
    if config.data.sources is not None:
        # a saved config.yaml holds every key, so data.dir at its default is no conflict
        given_dir = config.data.dir != DataConfig().dir
        if given_dir and sources.get("data.dir", default) == sources.get("data.sources", default):
            raise UserError(f"{where('data.dir')}: give data.dir or data.sources, not both")
        _check_sources(config.data, where("data.sources"))
    for index, entry in enumerate(config.run.callbacks or ()):
        try:
            path, args = callback_spec(entry)
            cls = import_object(path)
            if not isinstance(cls, type):
                raise ValueError(f"{path} is not a class")
            inspect.signature(cls).bind(**args)
        except (ValueError, TypeError) as exc:
            raise UserError(f"{where('run.callbacks')}: run.callbacks[{index}]: {exc}") from None


def callback_spec(entry: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A `run.callbacks` entry as (import path, keyword arguments); ValueError if malformed."""
    if isinstance(entry, str):
        return entry, {}
    unknown = set(entry) - {"class", "args"}
    path, args = entry.get("class"), entry.get("args") or {}
    if unknown or not isinstance(path, str) or not isinstance(args, Mapping):
        raise ValueError(
            f"{dict(entry)!r} must be 'package.module:Class' or "
            "{class: package.module:Class, args: {name: value}}"
        )
    return path, dict(args)


def _check_sources(data: DataConfig, where: str) -> None:
    """Each mixture entry: known keys, a directory, a finite weight >= 0, a unique name; and
    some weight above zero. Whether the directories hold data is the data loader's check."""
    assert data.sources is not None
    if not data.sources:
        raise UserError(f"{where}: data.sources is empty; list at least one {{dir, weight}}")
    for i, source in enumerate(data.sources):
        key = f"data.sources[{i}]"
        for name in source:
            if name not in SOURCE_KEYS:
                raise UserError(
                    f"{where}: unknown key {key}.{name}{_did_you_mean(str(name), SOURCE_KEYS)}; "
                    f"a source has {', '.join(SOURCE_KEYS)}"
                )
        if not isinstance(source.get("dir"), str) or not source["dir"]:
            raise UserError(f"{where}: {key}.dir must name a `data prepare` directory")
        weight = source.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise UserError(f"{where}: {key}.weight = {weight!r} must be a number >= 0")
        if not math.isfinite(weight) or weight < 0:
            raise UserError(f"{where}: {key}.weight = {weight!r} must be a finite number >= 0")
        if "name" in source and (not isinstance(source["name"], str) or not source["name"]):
            raise UserError(f"{where}: {key}.name = {source['name']!r} must be a non-empty string")
    if not any(source["weight"] > 0 for source in data.sources):
        raise UserError(f"{where}: every data.sources weight is 0; give at least one a weight > 0")
    seen: dict[str, int] = {}
    for i, named in enumerate(data_sources(data)):
        if named.name in seen:
            raise UserError(
                f"{where}: data.sources[{i}] is named {named.name!r} like "
                f"data.sources[{seen[named.name]}]; give each source a distinct name"
            )
        seen[named.name] = i


# ---------------------------------------------------------------------------------------------
# Saving and comparing


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Plain `{section: {key: value}}` (lists, not tuples), loadable again by config_from_dict."""
    return {
        section.name: {
            field_key(f): _plain(getattr(getattr(config, section.name), f.name))
            for f in dataclasses.fields(getattr(config, section.name))
        }
        for section in dataclasses.fields(config)
    }


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def dump_config(config: Config) -> str:
    """YAML text of the resolved config, as saved in a run directory."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def is_operational(section: str, key: str) -> bool:
    """Whether `section.key` may differ between a run and its resumption (see _OPERATIONAL)."""
    cls = _section_types()[section]
    return any(
        field_key(f) == key and f.metadata.get("operational") for f in dataclasses.fields(cls)
    )


def _hashed_when_set(section: str, key: str) -> bool:
    """Whether `section.key` is left out of the experiment while null (see _HASHED_WHEN_SET)."""
    cls = _section_types()[section]
    return any(
        field_key(f) == key and f.metadata.get("hashed_when_set") for f in dataclasses.fields(cls)
    )


def experiment_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The fields that decide what a run learns (all but the operational ones and sections,
    and the newer keys while they are null)."""
    operational = {f.name for f in dataclasses.fields(Config) if f.metadata.get("operational")}
    return {
        section: {
            k: v
            for k, v in body.items()
            if not is_operational(section, k) and not (v is None and _hashed_when_set(section, k))
        }
        for section, body in config_to_dict(config).items()
        if section not in operational
    }


def config_hash(config: Config) -> str:
    """Identifies the experiment: equal for runs that differ only in where and how they ran."""
    canonical = json.dumps(experiment_dict(config), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def experiment_differences(old: Config, new: Config) -> list[str]:
    """Experiment keys (not operational ones) whose values differ, as `section.key`."""
    before, after = experiment_dict(old), experiment_dict(new)
    return [
        f"{section}.{key}"
        for section, body in after.items()
        for key in sorted(
            set(body) | set(before[section]), key=list(config_to_dict(new)[section]).index
        )
        if before[section].get(key) != body.get(key)
    ]
