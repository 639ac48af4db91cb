"""Checks that token ids are read with the dtype they were written in, torch-free.

A token file carries no dtype of its own: an int32 array read as uint16 gives twice as many
"tokens", every other one 0 (the high halves), and trains without an error on half-empty text;
a uint16 array read as 32-bit glues two ids into one, mostly beyond the vocabulary. Both have
signatures in the ids themselves, which `TokenStats` counts chunk by chunk (the whole data on
import, a sample of windows when a run opens its data) and `finding` turns into a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from layerwise.util.errors import UserError

_MIN_PARITY_SAMPLE = 256  # odd positions needed before the every-other-zero signature counts
_MIN_EOS_SAMPLE = 1 << 16  # tokens without one EOS that no real corpus has
_GUARD_WINDOWS = 32
_GUARD_WINDOW_TOKENS = 512


@dataclass
class TokenStats:
    """Running counts over a stream of ids; chunks must be fed in order (position parity)."""

    vocab_size: int
    eos_id: int
    tokens: int = 0
    odd: int = 0
    odd_zeros: int = 0
    even_zeros: int = 0
    out_of_vocab: int = 0
    glued: int = 0
    negative: int = 0
    largest: int = 0
    first_bad: int = -1
    eos: int = 0

    def update(self, ids: np.ndarray, start: int | None = None) -> None:
        """Count `ids` (any integer dtype), which begin at stream position `start` (default: right
        after the ids counted so far; a sample passes where it was read)."""
        if ids.size == 0:
            return
        start = self.tokens if start is None else start
        first_odd = (start + 1) % 2  # index in `ids` of the first odd stream position
        odd, even = ids[first_odd::2], ids[1 - first_odd :: 2]
        self.odd += odd.size
        self.odd_zeros += int(np.count_nonzero(odd == 0))
        self.even_zeros += int(np.count_nonzero(even == 0))
        self.eos += int(np.count_nonzero(ids == self.eos_id))
        self.largest = max(self.largest, int(ids.max()))
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            values = ids[bad].astype(np.int64)
            if self.first_bad < 0:
                self.first_bad = start + int(np.argmax(bad))
            self.out_of_vocab += values.size
            self.negative += int(np.count_nonzero(values < 0))
            halves_fit = ((values & 0xFFFF) < self.vocab_size) & ((values >> 16) < self.vocab_size)
            self.glued += int(np.count_nonzero(halves_fit & (values >= 1 << 16)))
        self.tokens += ids.size


@dataclass(frozen=True)
class Finding:
    """What is wrong, in numbers, and the dtype the file was probably written in (if known)."""

    what: str
    written_as: str | None


def finding(stats: TokenStats, check_eos: bool = True) -> Finding | None:
    """The first problem the counts show, most telling first; None when the ids look right."""
    even = stats.tokens - stats.odd
    if stats.odd >= _MIN_PARITY_SAMPLE:
        odd_share, even_share = stats.odd_zeros / stats.odd, stats.even_zeros / max(even, 1)
        if odd_share >= 0.3 and even_share <= odd_share / 10:
            return Finding(
                f"{odd_share:.1%} of odd positions are 0 against {even_share:.1%} of even ones "
                f"({stats.odd_zeros / stats.tokens:.1%} of all {stats.tokens:,} tokens read): "
                "the zeros are the high halves of 32-bit ids read as 16-bit",
                "int32/uint32",
            )
    if stats.out_of_vocab:
        share = f"{stats.out_of_vocab:,} of {stats.tokens:,} ids ({stats.out_of_vocab / stats.tokens:.1%})"
        where = f"first at token {stats.first_bad:,}"
        if stats.glued >= 0.9 * stats.out_of_vocab:
            return Finding(
                f"{share} are beyond the vocabulary of {stats.vocab_size:,} (largest "
                f"{stats.largest:,}, {where}), and nearly all split into two valid 16-bit ids: "
                "pairs of 16-bit ids read as one 32-bit id",
                "uint16",
            )
        kind = "negative or " if stats.negative else ""
        return Finding(
            f"{share} are {kind}beyond the vocabulary of {stats.vocab_size:,} (largest "
            f"{stats.largest:,}, {where}): the tokens come from another tokenizer, or the dtype "
            "is wrong",
            None,
        )
    if check_eos and stats.tokens >= _MIN_EOS_SAMPLE and stats.eos == 0:
        return Finding(
            f"the end-of-document id {stats.eos_id} never appears in {stats.tokens:,} tokens: "
            "documents are separated by another id, or the tokenizer is not the one the tokens "
            "were made with",
            None,
        )
    if check_eos and stats.tokens >= _MIN_EOS_SAMPLE and stats.eos > stats.tokens // 2:
        return Finding(
            f"the end-of-document id {stats.eos_id} is {stats.eos / stats.tokens:.1%} of "
            f"{stats.tokens:,} tokens, more than any corpus of documents has",
            None,
        )
    return None


def guard_token_file(
    path: Path, dtype: np.dtype, n_tokens: int, vocab_size: int, meta_file: Path
) -> None:
    """Refuse, before a run's first step, a token file whose ids disagree with its meta.json.

    Reads `_GUARD_WINDOWS` windows spread over the file (about 16k ids, a few milliseconds) and
    looks for the dtype-mismatch signatures and ids beyond the vocabulary.
    """
    tokens = np.memmap(path, dtype=dtype, mode="r", shape=(n_tokens,))
    stats = TokenStats(vocab_size, -1)
    length = min(_GUARD_WINDOW_TOKENS, n_tokens)
    starts = np.linspace(0, n_tokens - length, _GUARD_WINDOWS).astype(np.int64)
    for start in np.unique(starts):
        stats.update(np.asarray(tokens[start : start + length]), int(start))
    del tokens
    found = finding(stats, check_eos=False)
    if found is None:
        return
    fix = (
        f"the file was probably written as {found.written_as}: import it again with "
        f"`layerwise data import --dtype {found.written_as.split('/')[0]}`"
        if found.written_as
        else f"prepare or import the data again with the tokenizer {meta_file} names"
    )
    raise UserError(
        f"{path} does not hold what {meta_file} says ({dtype.name} ids below "
        f"{vocab_size:,}): {found.what}; {fix}"
    )
