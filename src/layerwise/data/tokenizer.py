"""Tokenizers from a SPEC string: a HF `tokenizer.json`, a GPT-2 style directory, or `bpe:N`.

Every spec ends up as the same small wrapper, so the data pipeline never cares where the
vocabulary came from, and meta.json can record what produced the tokens (identity and hash):
two token directories are only comparable when those match.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from layerwise.util.errors import UserError

EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>")
"""End-of-document tokens we recognise, most common first (GPT-2/NeoX, Llama/T5, Gemma, ...)."""

BPE_EOS = "<|endoftext|>"
GPT2_VOCAB_FILES = ("encoder.json", "vocab.json")
GPT2_MERGES_FILES = ("vocab.bpe", "merges.txt")
_BPE_SPEC = re.compile(r"bpe:(\d+)")
_MIN_BPE_VOCAB = 257  # the 256 byte-level symbols plus the end-of-document token
_SEND_CHARS = 1 << 18  # text per message to the training process: IPC amortised
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class LoadedTokenizer:
    """A tokenizer plus the facts the token files depend on.

    `vocab_size` is one more than the largest id (not the count of entries) because it bounds
    the ids written to disk and so decides the file dtype and which models can read them.
    """

    tokenizer: Tokenizer
    eos_id: int
    vocab_size: int
    identity: str
    sha256: str

    def save(self, path: Path) -> None:
        """Write a `tokenizer.json` that reloads to the same encoder, whatever the spec was."""
        path.write_text(self.tokenizer.to_str(), encoding="utf-8")


def bpe_vocab_size(spec: str) -> int | None:
    """N for a `bpe:N` spec, None for a spec naming files (those need no training corpus)."""
    text = spec.strip()
    if not text.startswith("bpe:"):
        return None
    match = _BPE_SPEC.fullmatch(text)
    if match is None or int(match.group(1)) < _MIN_BPE_VOCAB:
        raise UserError(
            f"bad tokenizer spec {spec!r}: in bpe:N, N is the vocabulary size, a positive integer "
            f"of at least {_MIN_BPE_VOCAB} (the 256 byte symbols plus the end-of-document token), "
            "e.g. bpe:32000"
        )
    return int(match.group(1))


def load_tokenizer(spec: str | Path) -> LoadedTokenizer:
    """Load a tokenizer from a `tokenizer.json` file or a GPT-2 style directory."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_gpt2_dir(path)
    if path.is_file():
        return _load_hf_json(path)
    raise UserError(
        f"tokenizer {str(spec)!r} not found: give a tokenizer.json file, a directory with "
        "encoder.json/vocab.json and vocab.bpe/merges.txt, or bpe:N to train one"
    )


def train_bpe(vocab_size: int, texts: Iterable[str]) -> LoadedTokenizer:
    """Train a byte-level BPE on `texts`, with `<|endoftext|>` as its end-of-document token.

    Byte-level so that no text is ever out of vocabulary; the identity is the spec itself and
    the hash is that of the trained JSON, since that is what makes two runs comparable. When
    the texts run out of pairs to merge, the vocabulary comes out smaller than `vocab_size`:
    the result's `vocab_size` is the real one.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BPE_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return _trained(tokenizer, tokenizer.to_str(), vocab_size)


def train_bpe_in_child(vocab_size: int, texts: Iterable[str]) -> LoadedTokenizer:
    """`train_bpe` in a child process, so that a signal stops the training within moments.

    The trainer is native code that keeps the calling thread until it returns, a minute or more
    on a large corpus, and Python runs signal handlers only after that: SIGTERM (a batch
    scheduler's time limit, whose SIGKILL follows 30 s later) and Ctrl-C would wait for the
    whole training. Here this process reads the texts and sends them over a pipe, and waits
    for the result in a system call a signal interrupts; on any exception, the signal's
    included, it kills the child (nothing there to clean up). The child ignores SIGINT and
    SIGTERM, which a terminal or `scancel` send to every process of the job, so that this
    process alone decides, and ends when this process does, even by SIGKILL
    (`exit_with_parent`). Same texts, same trainer: the result equals `train_bpe`'s.

    Spawned, not forked (forking a process that runs tokenizer and torch threads is unsafe), so
    a script calling this must do it under `if __name__ == '__main__':`.
    """
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(
        target=_bpe_child,
        args=(vocab_size, theirs, os.getpid()),
        name="layerwise-bpe-trainer",
        daemon=True,  # so that no exit path of ours can wait on it
    )
    try:
        try:
            child.start()
        except OSError as exc:
            raise UserError(
                f"cannot start the process that trains bpe:{vocab_size} "
                f"({exc.strerror or exc}): free some memory, or give a trained tokenizer "
                "instead of bpe:N"
            ) from exc
        finally:
            theirs.close()
        serialised = _exchange(ours, texts)
    except BaseException:
        if child.pid is not None:
            child.kill()
        raise
    finally:
        if child.pid is not None:
            child.join()
        ours.close()
    if serialised is None:
        raise UserError(
            f"the BPE training process stopped unexpectedly ({_how_it_ended(child.exitcode)}); "
            "its own error, if any, is printed above"
        )
    return _trained(Tokenizer.from_str(serialised), serialised, vocab_size)


def _exchange(connection: Connection, texts: Iterable[str]) -> str | None:
    """Send the texts to the training process, then its result; None if it ended before."""
    try:
        for batch in char_batches(texts, _SEND_CHARS):
            connection.send(batch)
        connection.send(None)
        result: str = connection.recv()
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return None
    return result


def exit_with_parent(parent_pid: int) -> None:
    """Make this child process end when its parent `parent_pid` does, even by SIGKILL.

    A child the parent had no chance to stop would otherwise run on, orphaned, holding CPUs
    and memory. On Linux the kernel sends SIGKILL (prctl PR_SET_PDEATHSIG) when the thread
    that started this process ends; elsewhere a daemon thread checks the parent's pid every
    second. Either way, a parent gone already (before this ran) ends this process at once.
    """
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent_pid:
        os._exit(1)
    if not armed:
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def _bpe_child(vocab_size: int, connection: Connection, parent_pid: int) -> None:
    """The training process: texts from the pipe until None, the trained JSON back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    exit_with_parent(parent_pid)

    def received() -> Iterator[str]:
        while (batch := connection.recv()) is not None:
            yield from batch

    connection.send(train_bpe(vocab_size, received()).tokenizer.to_str())


def char_batches(texts: Iterable[str], chars_per_batch: int) -> Iterator[list[str]]:
    """Texts grouped into lists of about `chars_per_batch` characters (a long text alone), so
    each hand-over to another process is worth its overhead."""
    batch: list[str] = []
    chars = 0
    for text in texts:
        batch.append(text)
        chars += len(text)
        if chars >= chars_per_batch:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = ", perhaps out of memory" if exitcode == -signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit status {exitcode}"


def _trained(tokenizer: Tokenizer, serialised: str, vocab_size: int) -> LoadedTokenizer:
    """A trained BPE: its identity is the spec, its hash that of its JSON (`serialised`)."""
    return _wrap(tokenizer, f"bpe:{vocab_size}", _sha256_text(serialised), f"bpe:{vocab_size}")


def _load_hf_json(path: Path) -> LoadedTokenizer:
    """A HF tokenizers JSON file, identified by its file name and the hash of its bytes."""
    data = _read_bytes(path)
    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:
        raise UserError(f"{path}: not a HF tokenizers JSON file ({exc})") from exc
    return _wrap(tokenizer, f"tokenizer.json:{path.name}", hashlib.sha256(data).hexdigest(), path)


def _load_gpt2_dir(path: Path) -> LoadedTokenizer:
    """GPT-2's published encoder + merges files, assembled as GPT-2's own byte-level BPE."""
    vocab_file = _first_existing(path, GPT2_VOCAB_FILES)
    merges_file = _first_existing(path, GPT2_MERGES_FILES)
    digest = hashlib.sha256()
    for file in (vocab_file, merges_file):
        digest.update(file.name.encode() + b"\0" + _read_bytes(file) + b"\0")
    try:
        model = models.BPE.from_file(str(vocab_file), str(merges_file))
    except Exception as exc:
        raise UserError(
            f"{path}: cannot build a BPE from {vocab_file.name} + {merges_file.name} ({exc})"
        ) from exc
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    present = [token for token in EOS_CANDIDATES if tokenizer.token_to_id(token) is not None]
    tokenizer.add_special_tokens(present)
    return _wrap(tokenizer, f"gpt2-bpe:{path.name}", digest.hexdigest(), path)


def _wrap(tokenizer: Tokenizer, identity: str, sha256: str, origin: str | Path) -> LoadedTokenizer:
    """Attach EOS and vocabulary bound, failing here rather than after hours of tokenizing."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if not vocab:
        raise UserError(f"tokenizer {origin}: empty vocabulary")
    return LoadedTokenizer(
        tokenizer=tokenizer,
        eos_id=_detect_eos(tokenizer, origin),
        vocab_size=max(vocab.values()) + 1,
        identity=identity,
        sha256=sha256,
    )


def _detect_eos(tokenizer: Tokenizer, origin: str | Path) -> int:
    """The id appended after every document: the first known end-of-document token present."""
    for token in EOS_CANDIDATES:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    raise UserError(
        f"tokenizer {origin} has no end-of-document token (looked for {', '.join(EOS_CANDIDATES)})"
    )


def _first_existing(directory: Path, names: tuple[str, ...]) -> Path:
    """The GPT-2 files go by two naming conventions; accept either."""
    for name in names:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise UserError(f"tokenizer directory {directory} has none of {' / '.join(names)}")


def _read_bytes(path: Path) -> bytes:
    """File bytes, with an unreadable file reported as a user error naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read tokenizer file {path}: {exc.strerror or exc}") from exc


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
