"""Run configuration: typed dataclasses loaded from YAML, with inheritance and command-line overrides.

A config file holds sections (`model:`, `data:`, ...) whose keys are the fields below. A file may
start from another with `inherit: base.yaml` (relative to the including file), so each preset only
states what makes it different; `key=value` overrides from the command line are applied last, their
values read with the same YAML parser as files. Every key and value is checked against the
dataclasses here before anything runs, and errors name the file (or the override) that set the
bad value, because a typo found after an hour of training is an hour lost.

Paths inside a config (`data.dir`, `run.dir`) are relative to the working directory, like the
paths given to every other command.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from layerwise.errors import UserError
from layerwise.profiles import parse_count

INHERIT_KEY = "inherit"


def _bounds(
    low: float | None = None, *, above: float | None = None, high: float | None = None
) -> dict:
    """Field metadata: inclusive lower bound `low`, exclusive lower bound `above`, inclusive `high`."""
    return {"low": low, "above": above, "high": high}


_COUNT = {"count": True}
"""Field metadata for integers users write as budgets ("180M", "5.1B")."""

_OPERATIONAL = {"operational": True}
"""Field metadata for settings that change how or where a run executes but not what it learns.

Decided per field, not per section: a run may resume, or join a comparison, with these changed
(another device, micro-batch, parallel layout, checkpoint cadence), and the config hash ignores
them. Everything else (including `run.precision`, which changes the numbers) is the experiment.
"""


@dataclass
class ModelConfig:
    """The profile and the base it is applied to; the defaults are the study's 18-layer base."""

    profile: str = "isotropic"
    n_layers: int = field(default=18, metadata=_bounds(1))
    d_model: int = field(default=768, metadata=_bounds(1))
    head_dim: int = field(default=64, metadata=_bounds(2))
    gqa_group: int = field(default=3, metadata=_bounds(1))
    ffn_divisor: int = field(default=256, metadata=_bounds(1))
    vocab_size: int | None = field(default=50304, metadata=_bounds(1))
    tie_embeddings: bool = False
    ffn: list[float] | None = None
    qkv: list[float] | None = None
    frame: bool | None = None
    target_params: int | None = field(default=None, metadata={**_COUNT, **_bounds(1)})
    match: str | None = None
    match_by: Literal["params", "flops"] = "params"
    norm_order: Literal["reordered", "pre"] = "reordered"
    rope_theta: float = field(default=500_000.0, metadata=_bounds(above=0))
    norm_eps: float = field(default=1e-6, metadata=_bounds(above=0))
    init_std: float = field(default=0.02, metadata=_bounds(above=0))


@dataclass
class DataConfig:
    dir: str = "data/python-docs"
    seq_len: int = field(default=1024, metadata=_bounds(1))
    val_windows: int = field(default=512, metadata=_bounds(1))


@dataclass
class BatchConfig:
    """Global batch in sequences or in tokens (one of the two); per-device micro-batch."""

    global_batch: int | None = field(default=None, metadata=_bounds(1))
    global_batch_tokens: int | None = field(default=None, metadata={**_COUNT, **_bounds(1)})
    micro_batch: int = field(default=8, metadata={**_OPERATIONAL, **_bounds(1)})


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (`cosine`, `constant` or `wsd`, all after warmup)."""

    lr: float = field(default=6e-4, metadata=_bounds(above=0))
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = field(default=1e-8, metadata=_bounds(above=0))
    weight_decay: float = field(default=0.01, metadata=_bounds(0))
    grad_clip: float | None = field(default=1.0, metadata=_bounds(above=0))
    schedule: Literal["cosine", "constant", "wsd"] = "cosine"
    warmup_steps: int = field(default=0, metadata=_bounds(0))
    warmup_fraction: float | None = field(default=None, metadata=_bounds(0, high=0.5))
    """Warmup as a share of the run, so a preset's warmup scales with `train.steps`."""
    min_lr_ratio: float = field(default=0.1, metadata=_bounds(0, high=1))
    decay_fraction: float = field(default=0.2, metadata=_bounds(above=0, high=1))


@dataclass
class TrainConfig:
    """Run length in optimizer steps or in tokens (one of the two)."""

    steps: int | None = field(default=None, metadata=_bounds(1))
    tokens: int | None = field(default=None, metadata={**_COUNT, **_bounds(1)})
    seed: int = field(default=0, metadata=_bounds(0))
    val_interval: int = field(default=500, metadata={**_OPERATIONAL, **_bounds(1)})


@dataclass
class CheckpointConfig:
    interval: int = field(default=1000, metadata={**_OPERATIONAL, **_bounds(1)})
    keep: int = field(default=2, metadata={**_OPERATIONAL, **_bounds(1)})


@dataclass
class ParallelConfig:
    """`auto` is DDP when launched on several processes, else a plain single-process model."""

    strategy: Literal["auto", "none", "ddp", "fsdp"] = field(default="auto", metadata=_OPERATIONAL)
    activation_checkpointing: bool = field(default=False, metadata=_OPERATIONAL)


@dataclass
class RunConfig:
    """How and where to run. All but `precision` and `fp8` leave what is learned unchanged."""

    dir: str = field(default="runs/default", metadata=_OPERATIONAL)
    resume: Literal["never", "auto"] = field(default="never", metadata=_OPERATIONAL)
    overwrite: bool = field(default=False, metadata=_OPERATIONAL)
    device: str = field(default="auto", metadata=_OPERATIONAL)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = field(default=False, metadata=_OPERATIONAL)
    compile_mode: Literal["blocks", "model"] = field(default="blocks", metadata=_OPERATIONAL)
    """With `compile`: each block on its own ("blocks"), or the whole model as one graph."""
    compile_loss: bool = field(default=False, metadata=_OPERATIONAL)
    """Compile the final norm, LM head and chunked loss (implied by compile_mode=model)."""
    attention: Literal["auto", "flash", "cudnn", "efficient", "math"] = field(
        default="auto", metadata=_OPERATIONAL
    )
    """The SDPA kernel; "auto" lets PyTorch choose. CPU runs only auto, flash and math."""
    fp8: bool = False
    """FP8 matmuls through torchao's float8 training (CUDA, compute capability 8.9+). Not
    operational: like `precision`, it changes the numbers a run computes."""
    peak_tflops: float | None = field(default=None, metadata={**_OPERATIONAL, **_bounds(above=0)})
    tensorboard: bool = field(default=False, metadata=_OPERATIONAL)
    progress: bool = field(default=True, metadata=_OPERATIONAL)
    log_interval: int = field(default=10, metadata={**_OPERATIONAL, **_bounds(1)})


@dataclass
class EvalConfig:
    """Downstream tasks scored during training (layerwise.evaluation): none by default."""

    tasks: list[str] | None = field(default=None, metadata=_OPERATIONAL)
    """Task names, or ["core"] / ["all"]; see `layerwise eval --help`."""
    interval: int | None = field(default=None, metadata={**_OPERATIONAL, **_bounds(1)})
    """Score every this many steps (and at step 0 and the end); null: at validation steps."""
    limit: int | None = field(default=None, metadata={**_OPERATIONAL, **_bounds(1)})
    """At most this many examples per task, for quick in-loop signals."""
    dir: str | None = field(default=None, metadata=_OPERATIONAL)
    """The evaluation sets; null: ../shared/evals beside the checkout when present."""


@dataclass
class InitConfig:
    """Where a run's weights start: fresh (seeded) or another run's trained weights."""

    from_: str | None = field(default=None, metadata={"key": "from"})
    """A run directory to start from (its newest valid checkpoint), with a fresh optimizer and
    schedule: fine-tuning, or continuing on other data. Its shape must equal this run's."""


@dataclass
class CompareConfig:
    """What `layerwise compare` crosses with profiles and seeds; `train` ignores it."""

    variants: dict[str, dict[str, Any]] | None = field(default=None, metadata=_OPERATIONAL)
    """Named variants, each a mapping of `section.key` to value, e.g. {12l: {model.n_layers: 12}}:
    the overrides that make a variant's runs differ; the runs' own configs record the result."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    init: InitConfig = field(default_factory=InitConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    compare: CompareConfig = field(default_factory=CompareConfig, metadata=_OPERATIONAL)
    """Operational as a whole: left out of the config hash, so adding it changed no run's hash."""


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's sequences are spread over ranks and micro-batches."""

    global_batch: int
    micro_batch: int
    accum_steps: int
    world_size: int
    seq_len: int

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.seq_len


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """The config in `path` (with what it inherits), then `section.key=value` overrides."""
    values, sources = _load_file(Path(path), ())
    for text in overrides:
        section, key, value = parse_override(text)
        values.setdefault(section, {})[key] = value
        sources[f"{section}.{key}"] = f"override {text!r}"
    return config_from_dict(values, sources, default_source=str(path))


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
            values.setdefault(section, {})[str(key)] = value
            sources[f"{section}.{key}"] = str(path)
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


# ---------------------------------------------------------------------------------------------
# Derived quantities


def global_batch(config: Config) -> int:
    """Sequences per optimizer step, whichever way the config gave it."""
    if config.batch.global_batch is not None:
        return config.batch.global_batch
    assert config.batch.global_batch_tokens is not None
    return config.batch.global_batch_tokens // config.data.seq_len


def batch_plan(config: Config, world_size: int) -> BatchPlan:
    """Gradient accumulation steps for this world size, refusing splits that do not divide."""
    sequences, micro = global_batch(config), config.batch.micro_batch
    per_step = micro * world_size
    if sequences % per_step:
        raise UserError(
            f"batch: the global batch of {sequences} sequences cannot be split into micro-batches of "
            f"{micro} on {world_size} rank(s) ({micro} x {world_size} = {per_step} does not divide "
            f"{sequences}); choose a global batch that is a multiple of {per_step} or another "
            "batch.micro_batch"
        )
    return BatchPlan(
        global_batch=sequences,
        micro_batch=micro,
        accum_steps=sequences // per_step,
        world_size=world_size,
        seq_len=config.data.seq_len,
    )


def warmup_steps(optim: OptimConfig, total: int) -> int:
    """Warmup length in steps for a run of `total` steps, however the config gave it."""
    if optim.warmup_fraction is not None:
        return round(optim.warmup_fraction * total)
    return optim.warmup_steps


def total_steps(config: Config) -> int:
    """Optimizer steps of the run; a token budget is rounded up to whole steps."""
    if config.train.steps is not None:
        return config.train.steps
    assert config.train.tokens is not None
    return math.ceil(config.train.tokens / (global_batch(config) * config.data.seq_len))


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


def experiment_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The fields that decide what a run learns (all but the operational ones and sections)."""
    operational = {f.name for f in dataclasses.fields(Config) if f.metadata.get("operational")}
    return {
        section: {k: v for k, v in body.items() if not is_operational(section, k)}
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
        for key, value in body.items()
        if before[section][key] != value
    ]
