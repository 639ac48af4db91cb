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
        _assign(values, sources, f"{section}.{key}", value, f"{OVERRIDE} {text!r}")
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


def _assign(
    values: dict[str, dict], sources: dict[str, str], key: str, value: Any, source: str
) -> None:
    """Set the dotted `key` from `source`; a section (`run`, or `run.wandb` nested in it) is set
    key by key, so that a layer changes only the keys it names and every key knows its source."""
    if not _is_section(_field_path(key, source)[-1][1]):
        _set_later(values, sources, key, value, source)
        return
    body = {} if value is None else value
    if not isinstance(body, Mapping):
        raise UserError(
            f"{source}: section {key!r} must be a mapping of keys to values, got {value!r}"
        )
    for name, inner in body.items():
        _assign(values, sources, f"{key}.{name}", inner, source)


def _set_later(
    values: dict[str, dict], sources: dict[str, str], key: str, value: Any, source: str
) -> None:
    """Set the dotted `key` from `source`, which comes after the sources already in `values`,
    and drop its alternative where an earlier layer set that; one layer giving both stays an
    error."""
    set_value(values, key, value)
    sources[key] = source
    for pair in ALTERNATIVES:
        if key not in pair:
            continue
        other = pair[1 - pair.index(key)]
        earlier = sources.get(other, source)
        same_layer = earlier == source or (
            earlier.startswith(OVERRIDE) and source.startswith(OVERRIDE)
        )
        *outer, name = other.split(".")
        body = _body(values, outer)
        if name in body and not same_layer:
            del body[name]
            del sources[other]


def set_value(values: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted `key` (`optim.lr`, `run.wandb.project`) in `{section: {key: value}}`."""
    *outer, name = key.split(".")
    body = values
    for part in outer:
        body = body.setdefault(part, {})
    body[name] = value


def _body(values: dict[str, Any], path: list[str]) -> dict[str, Any]:
    """The mapping at `path` in `values`; empty where nothing set it."""
    for part in path:
        inner = values.get(part)
        values = inner if isinstance(inner, dict) else {}
    return values


def parse_override(text: str) -> tuple[str, str, Any]:
    """`optim.lr=3e-4` -> ("optim", "lr", 3e-4), the value parsed as YAML; the key is checked.
    Where sections nest the key is dotted: `run.wandb.project=x` -> ("run", "wandb.project", "x")."""
    dotted, sep, raw = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not sep or not dot or not section or not key or "" in key.split("."):
        raise UserError(f"override {text!r} must look like section.key=value, e.g. optim.lr=3e-4")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise UserError(f"override {text!r}: the value is not valid YAML ({exc})") from None
    _field_path(f"{section}.{key}", f"override {text!r}")
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
        _assign(values, sources, str(section), body, str(path))
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


def _merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    """`other` over `into`, section by section (nested ones too): what `_assign` builds."""
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def field_key(f: dataclasses.Field) -> str:
    """The key users write for a field: its name, or `metadata["key"]` where the name is a
    Python keyword (`init.from` is the field `from_`)."""
    return f.metadata.get("key", f.name)


def _is_section(annotation: Any) -> bool:
    """Whether a field's type is a section of its own (a dataclass), written as a mapping."""
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


@functools.cache
def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """A section's fields by the key users write, each with its resolved type; `Config`'s are
    the top-level sections."""
    hints = typing.get_type_hints(cls)
    return {field_key(f): (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _field_path(key: str, source: str) -> list[tuple[dataclasses.Field, Any]]:
    """The fields (and types) the dotted `key` walks through from the top: `run.wandb.project`
    is `run`, its `wandb` and that one's `project`. A part that names no field is a UserError
    naming `source` with the closest spelling and the valid keys."""
    path: list[tuple[dataclasses.Field, Any]] = []
    cls: Any = Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth])
        if not _is_section(cls):
            raise UserError(
                f"{source}: {here} is a value, not a section, so it has no key {part!r}; "
                f"write {here}=VALUE"
            )
        fields = _fields(cls)
        if part not in fields:
            raise UserError(f"{source}: {_unknown(here, part, list(fields), key)}")
        path.append(fields[part])
        cls = fields[part][1]
    return path


def _unknown(section: str, part: str, valid: list[str], key: str) -> str:
    """Why `part` is not a key of `section` (empty: not a section), with the closest spelling;
    a key that exists deeper (`wandb.project` for `run.wandb.project`) is named in full."""
    if not section:
        deeper = [
            known[: at + len(key)]
            for known in config_keys()
            if (at := f".{known}.".find(f".{key}.")) > 0
        ]
        hint = f" (did you mean {deeper[0]!r}?)" if deeper else _did_you_mean(part, valid)
        return f"unknown section {part!r}{hint}; valid sections: {', '.join(valid)}"
    return (
        f"unknown key {section}.{part}{_did_you_mean(part, valid)}; "
        f"valid keys in {section}: {', '.join(valid)}"
    )


def config_keys() -> list[str]:
    """Every `section.key` a config has (`section.nested.key` where sections nest), for
    spelling hints."""

    def keys(cls: type, prefix: str) -> Iterable[str]:
        for key, (_, annotation) in _fields(cls).items():
            if _is_section(annotation):
                yield from keys(annotation, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    return list(keys(Config, ""))


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_from_dict(
    values: Mapping[str, Mapping[str, Any]],
    sources: Mapping[str, str] | None = None,
    default_source: str = "config",
) -> Config:
    """Build and check a Config from `{section: {key: value}}` (a nested section's value is a
    mapping of its own); `sources` names where each dotted key came from."""
    config = _build(Config, values, "", sources or {}, default_source)
    _check_consistency(config, sources or {}, default_source)
    return config


def _build(
    cls: type, given: Mapping[str, Any], prefix: str, sources: Mapping[str, str], default: str
) -> Any:
    """The section `cls` from `given`, its nested sections built the same way; the keys it
    lacks keep their defaults."""
    fields = _fields(cls)
    for name in given:
        key = f"{prefix}{name}"
        _field_path(key, sources.get(key, default))
    kwargs = {}
    for name, (f, annotation) in fields.items():
        key = f"{prefix}{name}"
        where = sources.get(key, default)
        if _is_section(annotation):
            body = given.get(name)
            body = {} if body is None else body
            if not isinstance(body, Mapping):
                raise UserError(
                    f"{where}: section {key!r} must be a mapping of keys to values, got {body!r}"
                )
            kwargs[f.name] = _build(annotation, body, f"{key}.", sources, default)
        elif name in given:
            kwargs[f.name] = _coerce(given[name], annotation, f.metadata, key, where)
    return cls(**kwargs)


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
    """Plain `{section: {key: value}}` (nested sections as mappings, lists, not tuples),
    loadable again by config_from_dict."""
    return _section_dict(config)


def _section_dict(section: Any) -> dict[str, Any]:
    return {field_key(f): _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _section_dict(value)
    return list(value) if isinstance(value, tuple) else value


def dump_config(config: Config) -> str:
    """YAML text of the resolved config, as saved in a run directory."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def config_value(config: Config, key: str) -> Any:
    """The value of the dotted `key` as users write it (`init.from` is the field `from_`,
    `run.wandb.project` is nested); UserError for a key the config does not have."""
    value: Any = config
    for f, _ in _field_path(key, "config"):
        value = getattr(value, f.name)
    return value


def experiment_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The fields that decide what a run learns: all but the operational ones (fields or whole
    sections, nested ones too) and the newer keys while they are null."""
    return _experiment(Config, config_to_dict(config))


def _experiment(cls: type, body: Mapping[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, (f, annotation) in _fields(cls).items():
        value = body[key]
        if f.metadata.get("operational") or (value is None and f.metadata.get("hashed_when_set")):
            continue
        kept[key] = _experiment(annotation, value) if _is_section(annotation) else value
    return kept


def config_hash(config: Config) -> str:
    """Identifies the experiment: equal for runs that differ only in where and how they ran."""
    canonical = json.dumps(experiment_dict(config), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def experiment_differences(old: Config, new: Config) -> list[str]:
    """Experiment keys (not operational ones) whose values differ, as dotted keys in the
    config's order."""
    before, after = _leaves(Config, experiment_dict(old)), _leaves(Config, experiment_dict(new))
    return [
        key
        for key in _leaves(Config, config_to_dict(new))
        if (key in before or key in after) and before.get(key) != after.get(key)
    ]


def _leaves(cls: type, body: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`body` of section `cls` as {dotted key: value}, nested sections opened (mapping values
    that are not sections, such as `compare.variants`, stay whole)."""
    flat: dict[str, Any] = {}
    for key, (_, annotation) in _fields(cls).items():
        if key not in body:
            continue
        if _is_section(annotation):
            flat.update(_leaves(annotation, body[key], f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = body[key]
    return flat
