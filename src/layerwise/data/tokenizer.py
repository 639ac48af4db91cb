"""Tokenizers from a SPEC string: a HF `tokenizer.json`, a GPT-2 style directory, or `bpe:N`.

Every spec ends up as the same small wrapper, so the data pipeline never cares where the
vocabulary came from, and meta.json can record what produced the tokens (identity and hash):
two token directories are only comparable when those match.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
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
    serialised = tokenizer.to_str()
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
