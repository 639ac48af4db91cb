"""`data prepare`: raw text to memory-mapped token files, streaming, in parallel, reproducibly.

The pipeline reads documents in input order, has worker processes tokenize batches of them and
writes the results back in input order, so the bytes on disk depend only on the inputs, the
tokenizer and the seed (never on the number of workers or on timing). Everything is written
into a temporary directory next to the output and renamed at the very end: a directory named
like the output is always complete. Which files are read is decided in `layerwise.data.inputs`; meta.json is `layerwise.data.meta`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from itertools import chain, pairwise
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tokenizers import Tokenizer

from layerwise.data.inputs import Source, resolve_inputs, unique_sources
from layerwise.data.meta import (
    META_FILE,
    META_FORMAT,
    TOKENIZER_FILE,
    SplitMeta,
    TokenMeta,
    meta_to_json,
    new_meta,
    token_dtype,
)
from layerwise.data.readers import ReadStats, read_documents
from layerwise.data.tokenizer import (
    LoadedTokenizer,
    bpe_vocab_size,
    char_batches,
    exit_with_parent,
    load_tokenizer,
    train_bpe_in_child,
)
from layerwise.util.errors import UserError
from layerwise.util.signals import sigterm_raises

DEFAULT_VAL_FRACTION = 0.005

_BATCH_CHARS = 1 << 18  # ~256 KB of text per task: IPC is amortised, Ctrl-C stops quickly
_IN_FLIGHT_PER_WORKER = 16  # slack: a descheduled worker holds up output, not the others
_SPLIT_CHUNK_TOKENS = 1 << 24  # tokens per step when separating validation documents
_OWN_FILES = frozenset({META_FILE, TOKENIZER_FILE, "train.bin", "val.bin"})
_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


# --- tokenizing ---------------------------------------------------------------------------


class EncodedBatch(NamedTuple):
    """A batch of documents as token ids, each document followed by EOS."""

    tokens: np.ndarray
    lengths: np.ndarray
    text_bytes: int


def encode_documents(
    tokenizer: Tokenizer, eos_id: int, dtype: np.dtype, texts: list[str]
) -> EncodedBatch:
    """Token ids of `texts` concatenated with EOS after each, built without a Python per-token loop.

    `encode_batch_fast` gives the same ids as `encode_batch` without computing the character
    offsets we would throw away, about 10% faster.
    """
    encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    id_lists = [encoding.ids for encoding in encodings]
    lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    body = np.fromiter(chain.from_iterable(id_lists), dtype=dtype, count=int(lengths.sum()))
    tokens = np.insert(body, np.cumsum(lengths), np.asarray(eos_id, dtype=dtype))
    text_bytes = sum(len(text.encode("utf-8")) for text in texts)
    return EncodedBatch(tokens, lengths + 1, text_bytes)


@dataclass
class _WorkerState:
    tokenizer: Tokenizer
    eos_id: int
    dtype: np.dtype


_WORKER: _WorkerState | None = None


def _init_worker(tokenizer_file: str, eos_id: int, dtype: str, parent_pid: int) -> None:
    """Each worker tokenizes on one thread (the pool is the parallelism) and leaves Ctrl-C
    to the parent, which stops the pool and cleans up. SIGTERM ends a worker at once: it holds
    nothing to clean up, the parent terminates its workers that way, and a worker that ignored
    it would outlive a parent that was killed. A parent killed by SIGKILL takes its workers
    with it (`exit_with_parent`): they would otherwise wait on the task queue forever.

    The tokenizer comes as a file path, not its JSON: a spawned child that fails before reading
    all of its start-up arguments would otherwise block the parent on a full pipe forever.
    """
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    exit_with_parent(parent_pid)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER = _WorkerState(Tokenizer.from_file(tokenizer_file), eos_id, np.dtype(dtype))


def _worker_encode(texts: list[str]) -> EncodedBatch:
    assert _WORKER is not None, "worker used before _init_worker"
    return encode_documents(_WORKER.tokenizer, _WORKER.eos_id, _WORKER.dtype, texts)


def _batches(texts: Iterable[str], stats: ReadStats) -> Iterator[tuple[list[str], int]]:
    """Documents grouped into batches of about _BATCH_CHARS, with the input bytes read so far."""
    for batch in char_batches(texts, _BATCH_CHARS):
        yield batch, stats.bytes_read


def _encode_in_order(
    loaded: LoadedTokenizer,
    tokenizer_file: Path,
    dtype: np.dtype,
    batches: Iterator[tuple[list[str], int]],
    workers: int,
) -> Generator[tuple[EncodedBatch, int], None, None]:
    """Encoded batches in input order; with several workers, a bounded number in flight."""
    if workers == 1:
        for texts, bytes_read in batches:
            yield encode_documents(loaded.tokenizer, loaded.eos_id, dtype, texts), bytes_read
        return
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(str(tokenizer_file), loaded.eos_id, dtype.str, os.getpid()),
    )
    pending: deque[tuple[Future[EncodedBatch], int]] = deque()
    try:
        for texts, bytes_read in batches:
            pending.append((_submit(pool, texts, workers), bytes_read))
            if len(pending) >= _IN_FLIGHT_PER_WORKER * workers:
                future, done = pending.popleft()
                yield future.result(), done
        while pending:
            future, done = pending.popleft()
            yield future.result(), done
    except BrokenProcessPool as exc:
        raise UserError(
            f"a tokenizer worker process stopped unexpectedly ({exc}); its own error, if any, "
            "is printed above"
        ) from exc
    except BaseException:
        _terminate_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(pool: ProcessPoolExecutor, texts: list[str], workers: int) -> Future[EncodedBatch]:
    """Queue a batch; the pool starts its workers here, and a failed start is the user's to fix."""
    try:
        return pool.submit(_worker_encode, texts)
    except OSError as exc:
        raise UserError(
            f"cannot start {workers} tokenizer worker processes ({exc.strerror or exc}): "
            "pass fewer --workers"
        ) from exc


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    """End the workers now: after an error or a signal nothing they compute is wanted, and
    shutting down would otherwise wait for every batch already handed to them (one can be a
    huge document), long after a batch scheduler's grace period.
    """
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((pool._processes or {}).values()):
        process.terminate()


# --- progress -----------------------------------------------------------------------------


ProgressUpdate = Callable[[str, int, int, int], None]


@contextmanager
def _progress(enabled: bool, total_bytes: int) -> Iterator[ProgressUpdate]:
    """A rich bar on stderr: phase, input MB read, documents, tokens, ETA. A no-op if disabled."""
    if not enabled:
        yield lambda phase, bytes_read, documents, tokens: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[documents]:,} docs"),
        TextColumn("{task.fields[tokens]:,} tokens"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def update(phase: str, bytes_read: int, documents: int, tokens: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total_bytes, documents=0, tokens=0)
            bar.update(tasks[phase], completed=bytes_read, documents=documents, tokens=tokens)

        yield update


# --- prepare ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareResult:
    meta: TokenMeta
    seconds: float

    @property
    def mb_per_s(self) -> float:
        """Throughput in MB (10^6 bytes) of UTF-8 text per second of the whole run."""
        return self.meta.text_bytes / 1e6 / max(self.seconds, 1e-9)


def default_workers() -> int:
    """All cores this process may run on (the affinity mask, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def prepare(
    inputs: Sequence[str | Path],
    tokenizer: str,
    out: str | Path,
    *,
    val_tokens: int | None = None,
    val_fraction: float | None = None,
    text_field: str = "text",
    seed: int = 0,
    overwrite: bool = False,
    skip_bad: bool = False,
    workers: int | None = None,
    show_progress: bool | None = None,
) -> PrepareResult:
    """Tokenize `inputs` into OUT/{train,val}.bin + meta.json + tokenizer.json.

    Validation takes whole documents, in an order drawn from `seed`, until it holds at least
    `val_tokens` (or `val_fraction` of all tokens; default DEFAULT_VAL_FRACTION).
    `show_progress=None` shows the bar only when stderr is a terminal. Nothing is replaced but
    an earlier output (see `check_out_dir`); repeated inputs are read once. SIGTERM raises
    Terminated once the workers are stopped and the partial output is removed. What an earlier
    run of OUT killed outright left is cleared first (`clear_abandoned`).
    """
    started = time.perf_counter()
    out_dir = Path(os.path.normpath(Path(out).expanduser()))
    workers = default_workers() if workers is None else workers
    trains_bpe = bpe_vocab_size(tokenizer) is not None
    _check_options(val_tokens, val_fraction, seed, workers)
    _check_not_in_worker(workers, trains_bpe)
    sources = resolve_inputs(inputs)
    if not sources:
        raise UserError("no inputs given")
    clear_abandoned(out_dir)
    check_out_dir(out_dir, overwrite, sources, None if trains_bpe else tokenizer)
    named_or_size = _named_or_bpe_size(tokenizer)
    options = _PrepareOptions(val_tokens, val_fraction, text_field, seed, skip_bad, workers)
    enabled = sys.stderr.isatty() if show_progress is None else show_progress
    with sigterm_raises("stopped, and removed the unfinished output"), output_errors(out_dir):
        sources, input_infos, repeats = unique_sources(sources)
        if repeats:
            _warn(f"ignoring {len(repeats)} repeated input(s), read once: {_listed(repeats)}")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        work_dir = sibling_dir(out_dir, "tmp")
        try:
            with _progress(enabled, sum(info.bytes for info in input_infos)) as progress:
                loaded = (
                    named_or_size
                    if isinstance(named_or_size, LoadedTokenizer)
                    else _train_on_inputs(named_or_size, sources, options, progress)
                )
                meta = _prepare_into(work_dir, sources, loaded, options, progress)
            meta = replace(meta, inputs=input_infos, data_dir=out_dir)
            (work_dir / META_FILE).write_text(meta_to_json(meta), encoding="utf-8")
            replace_dir(work_dir, out_dir)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
    return PrepareResult(meta, time.perf_counter() - started)


class _PrepareOptions(NamedTuple):
    val_tokens: int | None
    val_fraction: float | None
    text_field: str
    seed: int
    skip_bad: bool
    workers: int


def _check_options(
    val_tokens: int | None, val_fraction: float | None, seed: int, workers: int
) -> None:
    if val_tokens is not None and val_fraction is not None:
        raise UserError("give either --val-tokens or --val-fraction, not both")
    if val_tokens is not None and val_tokens < 0:
        raise UserError(f"--val-tokens must be >= 0, got {val_tokens}")
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")


def _check_not_in_worker(workers: int, trains_bpe: bool) -> None:
    """Fail fast where spawned workers would re-run the caller's script and deadlock.

    Worker processes, and the process that trains bpe:N, are spawned (fork is unsafe with the
    tokenizer's and torch's threads), and spawning re-imports the main script: unguarded, that
    script calls prepare() again inside each child, which would start children of its own.
    """
    spawned_main = getattr(sys.modules.get("__mp_main__"), "__name__", "") == "__mp_main__"
    if (workers > 1 or trains_bpe) and spawned_main:
        raise UserError(
            "prepare() with workers > 1 or a bpe:N tokenizer was called inside a child process; "
            "in a script, call it under `if __name__ == '__main__':`"
        )


def check_out_dir(
    out_dir: Path, overwrite: bool, sources: Sequence[Source], tokenizer: str | None
) -> None:
    """Refuse an output whose replacement would delete anything but an earlier output.

    Replacing OUT deletes it whole, so it must never hold an input (an --input file, the
    `tokenizer` files) or the current directory, and --overwrite applies only to an empty
    directory or to what `data prepare` wrote: a meta.json of its format (META_FORMAT) and the
    files that and the usual names say are its own (`_earlier_output_files`), nothing else. A
    folder of other files that happens to hold a meta.json, or a file a user put into an
    earlier output, is not ours to delete: the message names it.
    """
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"output {out_dir} exists and is not a directory: choose another --out")
    resolved = out_dir.resolve()
    if Path.cwd().resolve().is_relative_to(resolved):
        raise UserError(
            f"output {out_dir} is (or contains) the current directory, which replacing it "
            f"would delete: give --out a directory of its own, e.g. {out_dir / 'tokens'}"
        )
    for source in sources:
        if source.path.resolve().is_relative_to(resolved):
            raise UserError(
                f"input {source.path} lies inside the output directory {out_dir}, which "
                "replacing it would delete: give --out a directory outside the inputs"
            )
    tokenizer_path = None if tokenizer is None else Path(tokenizer).expanduser()
    if tokenizer_path is not None and tokenizer_path.resolve().is_relative_to(resolved):
        raise UserError(
            f"tokenizer {tokenizer} lies inside the output directory {out_dir}, which "
            f"replacing it would delete: copy it out of {out_dir} first and give that copy, "
            "or give --out another directory"
        )
    if not overwrite:
        raise UserError(
            f"output directory {out_dir} already exists (pass --overwrite to replace it)"
        )
    entries = sorted(entry.name for entry in out_dir.iterdir())
    if not entries:
        return
    ours = _earlier_output_files(out_dir)
    if ours is None:
        raise UserError(
            f"output directory {out_dir} is not empty and holds no prepared data (no "
            f"{META_FILE} written by `data prepare`; it holds {_listed(entries)}): --overwrite "
            "only replaces an earlier `data prepare` output; choose another --out, or empty or "
            "remove that directory yourself"
        )
    foreign = [name for name in entries if name not in ours or not _plain_file(out_dir / name)]
    if foreign:
        raise UserError(
            f"output directory {out_dir} holds an earlier `data prepare` output but also what "
            f"it did not write: {_listed(foreign)}; --overwrite replaces the directory whole, "
            f"so move those out of {out_dir} first, or choose another --out"
        )


def _earlier_output_files(out_dir: Path) -> frozenset[str] | None:
    """The names an earlier `data prepare` wrote into out_dir, or None when out_dir/meta.json
    is not one it wrote (no META_FORMAT marker).

    Read as plain JSON, not with read_meta: an output of an older or newer release, or a
    meta.json damaged after its marker, is still ours to replace. Its own names are the usual
    ones and the files meta.json names (split files, the tokenizer file).
    """
    path = out_dir / META_FILE
    if not _plain_file(path):
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != META_FORMAT:
        return None
    tokenizer, splits = document.get("tokenizer"), document.get("splits")
    described = [tokenizer, *(splits.values() if isinstance(splits, dict) else ())]
    named = {
        entry["file"]
        for entry in described
        if isinstance(entry, dict) and isinstance(entry.get("file"), str)
    }
    return _OWN_FILES | named


def _plain_file(path: Path) -> bool:
    """A regular file itself, not a link to one: we never write links."""
    return path.is_file() and not path.is_symlink()


@contextmanager
def output_errors(out_dir: Path) -> Iterator[None]:
    """A failed write (full disk, no permission) as a UserError that says what to do about OUT.

    Every OSError that gets this far comes from writing the output: failures to read an input
    or to start the workers are UserErrors by then. The message names OUT, not the temporary
    file that failed, whose name means nothing to the user and which is gone by then.
    """
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = out_dir.parent
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            advice = f"free space on the disk holding {where}, or choose --out on another disk"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            advice = f"choose --out in a directory you can write to, or fix the rights on {where}"
        else:
            advice = f"check the disk holding {where}, or choose another --out"
        raise UserError(
            f"cannot write the output {out_dir} ({reason}): {advice}; the partial output was "
            "removed"
        ) from exc


def _prepare_into(
    work_dir: Path,
    sources: list[Source],
    loaded: LoadedTokenizer,
    options: _PrepareOptions,
    progress: ProgressUpdate,
) -> TokenMeta:
    """Tokenize everything into work_dir/train.bin, then move validation documents to val.bin."""
    tokenizer_file = work_dir / TOKENIZER_FILE
    loaded.save(tokenizer_file)
    dtype = token_dtype(loaded.vocab_size)
    stats = ReadStats()
    documents = _batches(
        read_documents(sources, options.text_field, options.skip_bad, stats), stats
    )
    encoded = _encode_in_order(loaded, tokenizer_file, dtype, documents, options.workers)
    with closing(encoded) as batches:  # a failed write stops the workers now, not at GC
        doc_lengths, text_bytes = _write_tokens(work_dir / "train.bin", batches, progress)
    if doc_lengths.size == 0:
        raise UserError(f"no documents found in the inputs ({_describe_sources(sources)})")
    target = _val_target(int(doc_lengths.sum()), options.val_tokens, options.val_fraction)
    is_val = choose_validation(doc_lengths, target, options.seed)
    train_split, val_split = _split_out_validation(work_dir, dtype, doc_lengths, is_val)
    return new_meta(
        work_dir,
        loaded.identity,
        loaded.sha256,
        loaded.vocab_size,
        loaded.eos_id,
        splits={
            "train": train_split,
            "val": val_split,
        },
        seed=options.seed,
        val_target_tokens=target,
        text_bytes=text_bytes,
        invalid_utf8_documents=stats.invalid_utf8_documents,
        skipped_bad_records=stats.skipped_bad_records,
        empty_documents=stats.empty_documents,
    )


def _write_tokens(
    path: Path, batches: Iterable[tuple[EncodedBatch, int]], progress: ProgressUpdate
) -> tuple[np.ndarray, int]:
    """Append each batch's tokens to `path`; returns every document's length and the text bytes.

    The lengths (8 bytes a document) are all that is kept in memory.
    """
    lengths: list[np.ndarray] = []
    text_bytes = n_documents = n_tokens = 0
    with path.open("wb") as file:
        for batch, bytes_read in batches:
            file.write(batch.tokens.tobytes())
            lengths.append(batch.lengths)
            text_bytes += batch.text_bytes
            n_documents += batch.lengths.size
            n_tokens += batch.tokens.size
            progress("tokenizing", bytes_read, n_documents, n_tokens)
    return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64), text_bytes


def _named_or_bpe_size(spec: str) -> LoadedTokenizer | int:
    """A named tokenizer, loaded before any input is read so a bad SPEC fails at once; or N."""
    size = bpe_vocab_size(spec)
    return load_tokenizer(spec) if size is None else size


def _train_on_inputs(
    vocab_size: int, sources: list[Source], options: _PrepareOptions, progress: ProgressUpdate
) -> LoadedTokenizer:
    """For bpe:N, a first pass over the inputs trains the tokenizer the second pass applies."""
    stats = ReadStats()

    def reported(texts: Iterator[str]) -> Iterator[str]:
        for count, text in enumerate(texts, start=1):
            progress(f"training bpe:{vocab_size}", stats.bytes_read, count, 0)
            yield text

    texts = read_documents(sources, options.text_field, options.skip_bad, stats)
    loaded = train_bpe_in_child(vocab_size, reported(texts))
    if loaded.vocab_size < vocab_size:
        _warn(
            f"bpe:{vocab_size} asked for {vocab_size:,} ids but the inputs only support "
            f"{loaded.vocab_size:,} (no pairs left to merge): the tokenizer has "
            f"{loaded.vocab_size:,} ids, as meta.json records; add text for more"
        )
    return loaded


def _describe_sources(sources: list[Source]) -> str:
    return _listed([str(source.path) for source in sources], 3)


def _listed(items: Sequence[str], limit: int = 5) -> str:
    """The first few items, then how many more: a message stays one readable line."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _warn(message: str) -> None:
    """Something the user should know although the run goes on: stderr, like the summary."""
    print(f"layerwise: warning: {message}", file=sys.stderr)


def _val_target(total_tokens: int, val_tokens: int | None, val_fraction: float | None) -> int:
    if val_tokens is not None:
        return val_tokens
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    return math.ceil(total_tokens * fraction)


def choose_validation(doc_lengths: np.ndarray, target_tokens: int, seed: int) -> np.ndarray:
    """Mask of validation documents: whole documents in seeded random order until >= target.

    Raises a UserError when that would leave nothing to train on.
    """
    is_val = np.zeros(doc_lengths.size, dtype=bool)
    if target_tokens == 0:
        return is_val
    order = np.random.default_rng(seed).permutation(doc_lengths.size)
    reached = np.cumsum(doc_lengths[order])
    count = int(np.searchsorted(reached, target_tokens, side="left")) + 1
    if count >= doc_lengths.size:
        raise UserError(
            f"a validation split of {target_tokens} tokens would take all {doc_lengths.size} "
            f"documents ({int(reached[-1])} tokens): lower --val-tokens/--val-fraction "
            "(0 for no validation split) or add inputs"
        )
    is_val[order[:count]] = True
    return is_val


def _split_out_validation(
    work_dir: Path, dtype: np.dtype, doc_lengths: np.ndarray, is_val: np.ndarray
) -> tuple[SplitMeta, SplitMeta]:
    """Move validation documents from train.bin to val.bin, compacting train.bin in place, and
    describe both files, each with the sha256 of its bytes taken as they are written.

    In place (writes never overtake reads) so the disk holds the corpus once; a chunk of
    documents at a time so memory stays bounded.
    """
    train_path, val_path = work_dir / "train.bin", work_dir / "val.bin"
    offsets = np.concatenate(([0], np.cumsum(doc_lengths)))
    total = int(offsets[-1])
    train_hash, val_hash = hashlib.sha256(), hashlib.sha256()
    first = int(np.argmax(is_val)) if is_val.any() else doc_lengths.size
    tokens = np.memmap(train_path, dtype=dtype, mode="r+", shape=(total,)) if total else None
    write = int(offsets[first])
    for start in range(0, write, _SPLIT_CHUNK_TOKENS):  # the untouched head: hashed as it is
        assert tokens is not None
        train_hash.update(tokens[start : min(write, start + _SPLIT_CHUNK_TOKENS)].tobytes())
    with val_path.open("wb") as val_file:
        if first < doc_lengths.size:
            assert tokens is not None
            starts = np.arange(write, total, _SPLIT_CHUNK_TOKENS)
            bounds = np.searchsorted(offsets, starts)
            bounds = np.unique(np.concatenate((bounds, [doc_lengths.size])))
            for lo, hi in pairwise(bounds):
                chunk = np.array(tokens[offsets[lo] : offsets[hi]])
                mask = np.repeat(is_val[lo:hi], doc_lengths[lo:hi])
                held_out = chunk[mask].tobytes()
                val_file.write(held_out)
                val_hash.update(held_out)
                kept = chunk[~mask]
                tokens[write : write + kept.size] = kept
                train_hash.update(kept.tobytes())
                write += kept.size
    if tokens is not None:
        tokens.flush()
        del tokens
    os.truncate(train_path, write * dtype.itemsize)
    return (
        SplitMeta("train.bin", write, int((~is_val).sum()), train_hash.hexdigest()),
        SplitMeta("val.bin", total - write, int(is_val.sum()), val_hash.hexdigest()),
    )


def replace_dir(work_dir: Path, out_dir: Path) -> None:
    """Put the finished directory in place; an old one is moved aside first, then deleted.

    Should the second rename fail (or a signal land between the two), the old one goes back.
    """
    if not out_dir.exists():
        work_dir.rename(out_dir)
        return
    trash = sibling_dir(out_dir, "old")
    old = trash / out_dir.name
    try:
        out_dir.rename(old)
        try:
            work_dir.rename(out_dir)
        except BaseException:
            old.rename(out_dir)
            raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def sibling_dir(out_dir: Path, role: str) -> Path:
    """A new hidden directory next to OUT: same file system, so the final rename is atomic.

    Made with mkdir (not mkdtemp) so the output gets the usual umask permissions, not 0700.
    Its name, `.OUT.ROLE-HOST-PID-RANDOM`, says whose it is, so that once that process has
    ended without removing it (SIGKILL, a power cut) a later prepare of OUT can
    (`clear_abandoned`).
    """
    while True:
        owner = f"{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"
        candidate = out_dir.parent / f".{out_dir.name}.{role}-{owner}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate


def clear_abandoned(out_dir: Path) -> None:
    """Remove the folders an earlier prepare of OUT was killed before it could remove.

    Only folders named as `sibling_dir` names them, for this OUT, made on this host by a
    process that has ended: a prepare that still runs (here, or on another host sharing the
    disk) keeps its folder. A folder of the older unnamed scheme (`.OUT.tmp-RANDOM`) cannot
    be told from a running one's: it is named, and left. The one case where such a folder is
    the user's data, an earlier output moved aside while OUT itself is missing (the kill came
    between the two renames of `replace_dir`), is put back as OUT rather than removed.
    """
    pattern = re.compile(
        rf"\.{re.escape(out_dir.name)}\.(?P<role>tmp|old)-(?:(?P<host>.+)-(?P<pid>\d+)-)?"
        r"[0-9a-f]{8}"
    )
    try:
        entries = sorted(out_dir.parent.iterdir())
    except OSError:
        return
    abandoned: list[tuple[str, Path]] = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        if match["pid"] is None:
            _warn(
                f"left {entry} alone: a temporary folder of an earlier `data prepare` whose "
                "process cannot be told; remove it yourself if no `data prepare` of this --out "
                "still runs"
            )
        elif match["host"] == _HOST and _process_gone(int(match["pid"])):
            abandoned.append((match["role"], entry))
    for role, folder in sorted(abandoned):  # "old" first: its output may have to go back
        moved = folder / out_dir.name
        if role == "old" and moved.is_dir() and not os.path.lexists(out_dir):
            try:
                moved.rename(out_dir)
            except OSError as exc:
                _warn(
                    f"an earlier `data prepare` was killed while replacing {out_dir}; the "
                    f"earlier output is in {moved}, which could not be put back "
                    f"({exc.strerror or exc}): move it yourself"
                )
                continue
            _warn(
                f"put back {out_dir}: an earlier `data prepare` was killed while replacing it "
                f"and had moved it aside to {folder}"
            )
        shutil.rmtree(folder, ignore_errors=True)
        if os.path.lexists(folder):
            _warn(f"could not remove {folder}, left by a killed `data prepare`: remove it")


def _process_gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie has); False when that cannot be told."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):
        return False  # EPERM: it runs, as another user
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")
