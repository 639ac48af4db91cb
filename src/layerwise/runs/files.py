"""What a run directory holds, readable without torch: file names, the summary, the metrics log.

Reports, run listings and comparisons read finished runs through this module, so they start
fast and never import the training stack. The trainer and the Hugging Face importer write a
run's files through `write_run_files`.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from layerwise.util.errors import UserError
from layerwise.util.files import atomic_write_text

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
TOKENIZER_DIR = "tokenizer"
"""The data's meta.json and tokenizer.json, copied so the run can be used without its data."""
SOURCES_DIR = "sources"
"""Under TOKENIZER_DIR, `<name>/meta.json` of each `data.sources` entry: the mixture's identity."""


@dataclass(frozen=True)
class RunSummary:
    """What one run achieved and what it ran on; `summary.json` in the run directory."""

    run_dir: str
    profile: str
    seed: int
    steps: int
    tokens: int
    final_train_loss: float | None
    final_val_loss: float | None
    final_val_ppl: float | None
    params: int
    non_embedding_params: int
    layers: list[dict[str, int]]
    d_model: int
    head_dim: int
    vocab_size: int
    flops_per_token: int
    budget: dict[str, Any] | None
    mean_tokens_per_s: float | None
    mean_mfu: float | None
    mfu_note: str | None
    peak_memory_mib: float | None
    wall_time_s: float
    hardware: dict[str, Any]
    versions: dict[str, str]
    config_hash: str
    stopped_early: str | None = None
    """Why a callback ended the run before its last step (e.g. a pruned search trial)."""
    downstream: dict[str, Any] | None = None
    """The last downstream scores (`{"step", "tokens", "tasks"}`), when eval.tasks is set."""
    final_val_sources: dict[str, dict[str, float]] | None = None
    """The last validation per source (`{name: {"loss", "ppl"}}`), when data.sources is set;
    `final_val_loss` is then their weighted mean."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, path: Path) -> RunSummary:
        """The summary in `path`; a damaged file (unreadable, not JSON, a field missing, unknown
        or of the wrong type) is a UserError naming it and the field, not a traceback later."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, dict):
                raise TypeError(f"a JSON {type(document).__name__}, not an object")
            hints = _field_types()
            for key, value in document.items():
                if key in hints and not _has_type(value, hints[key]):
                    raise TypeError(f"field {key!r} is {value!r}, not {_type_name(hints[key])}")
            return cls(**document)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
            raise UserError(
                f"{path} is unreadable or not a run summary ({exc}); resume the run with "
                "--resume to write it again, or delete the run directory"
            ) from None


@functools.cache
def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(RunSummary)
    return {f.name: hints[f.name] for f in fields(RunSummary)}


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON is of the annotated type (an int counts as a float, a
    bool as neither), containers checked item by item."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, option) for option in args)
    if hint is type(None):
        return value is None
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    if origin is list:
        return isinstance(value, list) and all(_has_type(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _has_type(k, args[0]) and _has_type(v, args[1]) for k, v in value.items()
        )
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def write_run_files(run_dir: Path, config_yaml: str, tokenizer: Mapping[str, Path | str]) -> None:
    """What every run directory holds besides checkpoints and logs: config.yaml, and tokenizer/
    (the data's meta.json and tokenizer.json, so the run is usable without its data). Each entry
    of `tokenizer` is a file to copy or the text to write; a stale summary is removed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, config_yaml)
    tokenizer_dir = run_dir / TOKENIZER_DIR
    tokenizer_dir.mkdir(exist_ok=True)
    for name, source in tokenizer.items():
        (tokenizer_dir / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, Path):
            shutil.copyfile(source, tokenizer_dir / name)
        else:
            atomic_write_text(tokenizer_dir / name, source)
    (run_dir / SUMMARY_FILE).unlink(missing_ok=True)


def read_records(path: Path) -> list[dict]:
    """The complete records of a metrics log. A torn last line (from a kill) is left out
    quietly; a damaged line elsewhere is left out too, but said on stderr with its number,
    since no kill makes one."""
    if not path.exists():
        return []
    records, damaged = [], []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                damaged.append(number)
    if damaged:
        listed = ", ".join(str(n) for n in damaged[:5]) + (" ..." if len(damaged) > 5 else "")
        print(
            f"layerwise: {path}: {len(damaged)} damaged line(s) left out (line {listed})",
            file=sys.stderr,
        )
    return records
