"""Which files `data prepare` reads: --input specs resolved to sources, identified, deduplicated.

A token directory must be traceable to its data and must not depend on how a file system lists
a directory, so sources come in a stable order and each is hashed; the hashes also catch the
same text given twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import NamedTuple

from layerwise.util.errors import UserError

PYTHON_DOCS = "python-docs"
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".jsonl.zst")
TXT_SUFFIXES = (".txt",)
PARQUET_SUFFIXES = (".parquet",)
ARROW_SUFFIXES = (".arrow",)
SUPPORTED_SUFFIXES = JSONL_SUFFIXES + TXT_SUFFIXES + PARQUET_SUFFIXES + ARROW_SUFFIXES
HF_STATE_FILE = "state.json"
_HASH_CHUNK = 1 << 20
_EXCLUDED_STDLIB_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


@dataclass(frozen=True)
class Source:
    """One input: a file of a known kind, or the built-in python-docs corpus (path = stdlib)."""

    kind: str
    path: Path


@dataclass(frozen=True)
class InputInfo:
    """What meta.json records about an input, so a token directory can be traced to its data."""

    path: str
    bytes: int
    sha256: str


def resolve_inputs(specs: Sequence[str | Path]) -> list[Source]:
    """Expand paths, directories (recursively) and globs into sources, in a stable order.

    Sorting matters: the output must not depend on the order a file system lists a directory.
    Files named explicitly must be of a supported kind; inside directories and globs, other
    files (READMEs, checksums) are passed over.
    """
    sources: list[Source] = []
    for spec in specs:
        text = str(spec)
        if text == PYTHON_DOCS:
            sources.append(Source(PYTHON_DOCS, stdlib_root()))
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            sources.extend(_sources_under(path, text))
        elif path.exists():
            sources.append(_explicit_source(path))
        elif any(char in text for char in "*?["):
            sources.extend(_sources_from_glob(text))
        else:
            raise UserError(f"input {text!r}: no such file or directory")
    return sources


def source_kind(path: Path) -> str | None:
    """The reader for a file, by its name; None if we cannot read it."""
    name = path.name.lower()
    for kind, suffixes in (
        ("jsonl", JSONL_SUFFIXES),
        ("txt", TXT_SUFFIXES),
        ("parquet", PARQUET_SUFFIXES),
        ("arrow", ARROW_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return kind
    return None


def _explicit_source(path: Path) -> Source:
    kind = source_kind(path)
    if kind is None:
        supported = ", ".join(SUPPORTED_SUFFIXES)
        raise UserError(f"input {path}: unsupported file type (supported: {supported})")
    return Source(kind, path)


def _sources_under(directory: Path, spec: str) -> list[Source]:
    if (directory / HF_STATE_FILE).is_file():
        return _saved_dataset(directory)
    found = [
        Source(kind, path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and (kind := source_kind(path)) is not None
    ]
    if not found:
        raise UserError(f"input {spec!r}: no {', '.join(SUPPORTED_SUFFIXES)} files in it")
    return found


def _saved_dataset(directory: Path) -> list[Source]:
    """The Arrow files of a Hugging Face `save_to_disk` directory, in the order its state.json
    lists them (the dataset's row order), without needing the `datasets` package."""
    state = directory / HF_STATE_FILE
    try:
        files = [
            entry["filename"]
            for entry in json.loads(state.read_text(encoding="utf-8"))["_data_files"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{state}: not the state.json of a `datasets` save_to_disk directory ({exc!r})"
        ) from exc
    return [Source("arrow", directory / str(name)) for name in files]


def _sources_from_glob(pattern: str) -> list[Source]:
    matches = sorted(glob(os.path.expanduser(pattern), recursive=True))
    found: list[Source] = []
    for match in map(Path, matches):
        if match.is_dir():
            found.extend(_sources_under(match, str(match)))
        elif (kind := source_kind(match)) is not None:
            found.append(Source(kind, match))
    if not found:
        raise UserError(f"input {pattern!r}: no readable files match")
    return found


def describe_source(source: Source) -> InputInfo:
    """Size and hash of an input, read in full now so that an unreadable file fails early."""
    if source.kind == PYTHON_DOCS:
        return _describe_python_docs(source.path)
    digest = hashlib.sha256()
    size = 0
    try:
        with source.path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise UserError(f"cannot read {source.path}: {exc.strerror or exc}") from exc
    return InputInfo(str(source.path), size, digest.hexdigest())


class UniqueSources(NamedTuple):
    """The inputs to read, what meta.json records of them, and the repeats left out."""

    sources: list[Source]
    infos: tuple[InputInfo, ...]
    repeats: list[str]


def unique_sources(sources: Sequence[Source]) -> UniqueSources:
    """The sources without repeats, each described; a repeat is told with what it repeats.

    An input given twice (`--input X X`, or a file that a directory or glob matches again) would
    be tokenized twice, and its documents could land in both splits, so validation would score
    memorised text. A repeated path is caught before hashing, a copy under another name by its
    hash. The first occurrence is kept, so the order of the inputs, and the output, do not
    change.
    """
    kept: list[Source] = []
    infos: list[InputInfo] = []
    first_by_path: dict[Path, Source] = {}
    first_by_hash: dict[str, InputInfo] = {}
    repeats: list[str] = []
    for source in sources:
        resolved = source.path.resolve()
        if resolved in first_by_path:
            repeats.append(f"{source.path} (same file as {first_by_path[resolved].path})")
            continue
        first_by_path[resolved] = source
        info = describe_source(source)
        if info.sha256 in first_by_hash:
            repeats.append(f"{source.path} (same content as {first_by_hash[info.sha256].path})")
            continue
        first_by_hash[info.sha256] = info
        kept.append(source)
        infos.append(info)
    return UniqueSources(kept, tuple(infos), repeats)


def _describe_python_docs(root: Path) -> InputInfo:
    """The stdlib's identity: Python version, location, and a hash over every file read."""
    digest = hashlib.sha256()
    size = 0
    for file in stdlib_python_files(root):
        data = read_file_bytes(file)
        size += len(data)
        digest.update(str(file.relative_to(root)).encode() + b"\0" + data + b"\0")
    name = f"{PYTHON_DOCS} (Python {platform.python_version()}, {root})"
    return InputInfo(name, size, digest.hexdigest())


def read_file_bytes(path: Path) -> bytes:
    """A whole file; an unreadable one is a UserError naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc


# --- python-docs --------------------------------------------------------------------------


def stdlib_root() -> Path:
    """The running interpreter's standard library directory (the same in and out of a venv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_python_files(root: Path) -> list[Path]:
    """The standard library's .py files in a fixed order, without third-party packages."""
    return sorted(
        path
        for path in root.rglob("*.py")
        if not _EXCLUDED_STDLIB_DIRS.intersection(path.relative_to(root).parts) and path.is_file()
    )
