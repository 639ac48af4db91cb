"""`data import`: pre-tokenized arrays (raw memmaps, .npy) to a data directory, torch-free.

A raw token file does not say its dtype, and reading it with the wrong one trains without an
error on garbage (an int32 array read as uint16 is every other token 0), so the dtype is
declared by the user, checked against a .npy header, and the ids are checked for the
signatures of a wrong one (`layerwise.data.checks`) before anything is put in place. A split
that is one whole raw file already in its final dtype is hard-linked, not copied; everything
else is written once, streaming. The output is laid out as `data prepare` lays it out, and put
in place the same way (a temporary sibling renamed at the end).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from layerwise.data.checks import TokenStats, finding
from layerwise.data.inputs import InputInfo, Source
from layerwise.data.meta import (
    META_FILE,
    TOKENIZER_FILE,
    SplitMeta,
    TokenMeta,
    meta_to_json,
    new_meta,
    token_dtype,
)
from layerwise.data.prepare import (
    DEFAULT_VAL_FRACTION,
    check_out_dir,
    clear_abandoned,
    output_errors,
    replace_dir,
    sibling_dir,
)
from layerwise.data.tokenizer import bpe_vocab_size, load_tokenizer
from layerwise.util.errors import UserError
from layerwise.util.signals import sigterm_raises

IMPORT_DTYPES = ("uint16", "uint32", "int32")
_CHUNK_TOKENS = 1 << 22  # 8-16 MB a read: memory stays bounded, numpy stays vectorised


@dataclass(frozen=True)
class TokenFile:
    """One input array: where its ids start in the file and how many there are."""

    path: Path
    dtype: np.dtype
    offset: int
    tokens: int


@dataclass(frozen=True)
class Piece:
    """A run of ids of one input file that goes into a split."""

    file: TokenFile
    start: int
    tokens: int


@dataclass(frozen=True)
class ImportResult:
    meta: TokenMeta
    seconds: float
    input_bytes: int
    linked: tuple[str, ...]

    @property
    def gb_per_s(self) -> float:
        """Input bytes (10^9) read per second of the whole import."""
        return self.input_bytes / 1e9 / max(self.seconds, 1e-9)


def open_token_file(path: Path, dtype: str) -> TokenFile:
    """The ids of a raw array or .npy file, refused when the file cannot hold `dtype` ids."""
    declared = np.dtype(dtype).newbyteorder("<")
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            offset = _npy_offset(handle, path, declared) if path.suffix == ".npy" else 0
    except OSError as exc:
        raise UserError(f"cannot read token file {path}: {exc.strerror or exc}") from exc
    body = size - offset
    if body % declared.itemsize:
        raise UserError(
            f"{path} holds {body} bytes of ids, not a whole number of {dtype} ids "
            f"({declared.itemsize} bytes each): truncated, or not {dtype}? check --dtype"
        )
    if body == 0:
        raise UserError(f"{path} holds no tokens")
    return TokenFile(path, declared, offset, body // declared.itemsize)


def _npy_offset(handle: BinaryIO, path: Path, declared: np.dtype) -> int:
    """Where a .npy file's ids start; its header's dtype must be the declared one."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        shape, fortran_order, dtype = (
            fmt.read_array_header_1_0(handle)
            if version == (1, 0)
            else fmt.read_array_header_2_0(handle)
        )
    except ValueError as exc:
        raise UserError(f"{path} is not a readable .npy file ({exc})") from exc
    if dtype != declared:
        raise UserError(
            f"{path}: its .npy header says {dtype.name} ({dtype.str}) but --dtype says "
            f"{declared.name}: pass --dtype {dtype.name} if the header is right"
        )
    if fortran_order and len(shape) > 1:
        raise UserError(f"{path}: a Fortran-ordered {shape} array; save it C-ordered (1-D)")
    return handle.tell()


def import_tokens(
    tokens: Sequence[str | Path],
    dtype: str,
    tokenizer: str,
    out: str | Path,
    *,
    val_tokens: int | None = None,
    val_files: Sequence[str | Path] = (),
    eos_id: int | None = None,
    overwrite: bool = False,
) -> ImportResult:
    """Token arrays in `tokens` (ids of `tokenizer`, `dtype` each) to OUT as `data prepare`
    writes it: train.bin, val.bin, tokenizer.json, meta.json.

    Validation is `val_files`, or the last `val_tokens` ids (default DEFAULT_VAL_FRACTION of
    them; 0: none). Output ids are `dtype` when it is unsigned, else the dtype the vocabulary
    implies (`token_dtype`). Every id is checked (`checks.finding`) before OUT is touched.
    """
    started = time.perf_counter()
    if dtype not in IMPORT_DTYPES:
        raise UserError(f"--dtype {dtype!r}: give one of {', '.join(IMPORT_DTYPES)}")
    if val_tokens is not None and val_files:
        raise UserError("give either --val-tokens or --val-files, not both")
    if val_tokens is not None and val_tokens < 0:
        raise UserError(f"--val-tokens must be >= 0, got {val_tokens}")
    if not tokens:
        raise UserError("no token files given")
    if bpe_vocab_size(tokenizer) is not None:
        raise UserError(
            f"--tokenizer {tokenizer}: imported tokens need the tokenizer that made them "
            "(a tokenizer.json or GPT-2 style directory), not one trained here"
        )
    loaded = load_tokenizer(tokenizer)
    eos = loaded.eos_id if eos_id is None else eos_id
    if not 0 <= eos < loaded.vocab_size:
        raise UserError(f"--eos-id {eos} is not an id of {tokenizer} (0..{loaded.vocab_size - 1})")
    paths = [Path(p).expanduser() for p in (*tokens, *val_files)]
    _refuse_repeats(paths)
    files = [open_token_file(path, dtype) for path in paths]
    train_files, held_out = files[: len(tokens)], files[len(tokens) :]
    splits = _plan_splits(train_files, held_out, val_tokens)
    out_dir = Path(os.path.normpath(Path(out).expanduser()))
    clear_abandoned(out_dir)
    check_out_dir(out_dir, overwrite, [Source("tokens", p) for p in paths], tokenizer)
    out_dtype = np.dtype(dtype) if dtype != "int32" else token_dtype(loaded.vocab_size)
    with sigterm_raises("stopped, and removed the unfinished output"), output_errors(out_dir):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        work_dir = sibling_dir(out_dir, "tmp")
        try:
            loaded.save(work_dir / TOKENIZER_FILE)
            writer = _Writer(loaded.vocab_size, eos, out_dtype)
            split_meta = {
                name: writer.write(work_dir / f"{name}.bin", pieces)
                for name, pieces in splits.items()
            }
            writer.check()
            meta = new_meta(
                out_dir,
                loaded.identity,
                loaded.sha256,
                loaded.vocab_size,
                eos,
                splits=split_meta,
                val_target_tokens=split_meta["val"].tokens,
                inputs=tuple(writer.inputs[f] for f in files),
            )
            meta = replace(meta, dtype=out_dtype.name)
            (work_dir / META_FILE).write_text(meta_to_json(meta), encoding="utf-8")
            replace_dir(work_dir, out_dir)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
    input_bytes = sum(f.tokens * f.dtype.itemsize for f in files)
    return ImportResult(meta, time.perf_counter() - started, input_bytes, tuple(writer.linked))


def _refuse_repeats(paths: list[Path]) -> None:
    """A file given twice would be trained on twice, or land in both splits."""
    seen: dict[Path, Path] = {}
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            raise UserError(f"token file {path} is given twice (as {seen[resolved]} too)")
        seen[resolved] = path


def _plan_splits(
    train_files: list[TokenFile], held_out: list[TokenFile], val_tokens: int | None
) -> dict[str, list[Piece]]:
    """Which ids go to train and val: the held-out files, or the last `val_tokens` ids."""
    if held_out:
        return {
            "train": [Piece(f, 0, f.tokens) for f in train_files],
            "val": [Piece(f, 0, f.tokens) for f in held_out],
        }
    total = sum(f.tokens for f in train_files)
    target = math.ceil(total * DEFAULT_VAL_FRACTION) if val_tokens is None else val_tokens
    if target >= total:
        raise UserError(
            f"--val-tokens {target:,} would leave nothing to train on ({total:,} tokens given): "
            "lower it, or give --val-files"
        )
    train: list[Piece] = []
    val: list[Piece] = []
    cut, position = total - target, 0
    for f in train_files:
        head = min(max(cut - position, 0), f.tokens)
        if head:
            train.append(Piece(f, 0, head))
        if head < f.tokens:
            val.append(Piece(f, head, f.tokens - head))
        position += f.tokens
    return {"train": train, "val": val}


class _Writer:
    """Streams pieces into split files, hashing and checking every id once on the way."""

    def __init__(self, vocab_size: int, eos_id: int, dtype: np.dtype) -> None:
        self.vocab_size, self.eos_id, self.dtype = vocab_size, eos_id, dtype
        self.stats: dict[TokenFile, TokenStats] = {}
        self.hashes: dict[TokenFile, hashlib._Hash] = {}
        self.inputs: dict[TokenFile, InputInfo] = {}
        self.linked: list[str] = []

    def write(self, target: Path, pieces: list[Piece]) -> SplitMeta:
        digest, documents, count = hashlib.sha256(), 0, 0
        whole = (
            len(pieces) == 1
            and pieces[0].file.offset == 0
            and pieces[0].tokens == pieces[0].file.tokens
            and pieces[0].file.dtype == self.dtype.newbyteorder("<")
        )
        linked = whole and _try_link(pieces[0].file.path, target)
        if linked:
            self.linked.append(target.name)
        with open(os.devnull if linked else target, "wb") as sink:
            for piece in pieces:
                for ids in self._read(piece):
                    data = ids.astype(self.dtype, copy=False).tobytes()
                    digest.update(data)
                    documents += int(np.count_nonzero(ids == self.eos_id))
                    count += ids.size
                    if not linked:
                        sink.write(data)
        return SplitMeta(target.name, count, documents, digest.hexdigest())

    def _read(self, piece: Piece) -> Iterator[np.ndarray]:
        """The piece's ids a chunk at a time, counted and hashed as the input they are."""
        f = piece.file
        stats = self.stats.setdefault(f, TokenStats(self.vocab_size, self.eos_id))
        digest = self.hashes.setdefault(f, hashlib.sha256())
        try:
            with f.path.open("rb") as handle:
                handle.seek(f.offset + piece.start * f.dtype.itemsize)
                left = piece.tokens
                while left:
                    ids = np.fromfile(handle, dtype=f.dtype, count=min(left, _CHUNK_TOKENS))
                    if ids.size == 0:
                        raise UserError(f"{f.path} ended early: was it changed while importing?")
                    left -= ids.size
                    stats.update(ids)
                    digest.update(ids.tobytes())
                    yield ids
        except OSError as exc:
            raise UserError(f"cannot read token file {f.path}: {exc.strerror or exc}") from exc
        if stats.tokens == f.tokens:
            self.inputs[f] = InputInfo(
                str(f.path), f.offset + f.tokens * f.dtype.itemsize, digest.hexdigest()
            )

    def check(self) -> None:
        """Refuse the first input whose ids show a wrong dtype or tokenizer, naming the fix."""
        for f, stats in self.stats.items():
            found = finding(stats)
            if found is None:
                continue
            fix = (
                f"the file was probably written as {found.written_as}: import it with "
                f"--dtype {found.written_as.split('/')[0]}"
                if found.written_as
                else "check --dtype, --tokenizer and --eos-id against how the file was written"
            )
            raise UserError(f"{f.path} read as {f.dtype.name}: {found.what}; {fix}")


def _try_link(source: Path, target: Path) -> bool:
    """Hard-link `source` as `target`; False where the file system cannot (then it is copied)."""
    try:
        os.link(source, target)
    except OSError:
        return False
    return True
