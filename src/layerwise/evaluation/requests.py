"""Token requests: what the model scores for each choice of each example.

Context and continuation are tokenized together and split where the context's own tokens end,
so a token that merges across the boundary is scored as the model would have produced it, and
the scored tokens are exactly those that spell the continuation after that context. A request
longer than the model's sequence length loses tokens on the left (the start of the context),
never the continuation unless it alone is longer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

from layerwise.evaluation.formats import Example


@dataclass(frozen=True)
class Request:
    """`tokens[-n_cont:]` are scored, each given the tokens before it."""

    tokens: tuple[int, ...]
    n_cont: int


def _encode(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [encoding.ids for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]


def build_requests(
    examples: Sequence[Example], tokenizer: Tokenizer, seq_len: int, eos_id: int
) -> list[Request]:
    """One request per choice, example by example and choice by choice.

    A context that tokenizes to nothing is given the end-of-document token, so the first
    continuation token still has something to be predicted from.
    """
    pairs = [ex.choice(i) for ex in examples for i in range(ex.n_choices)]
    contexts = sorted({context for context, _ in pairs})
    context_lengths = dict(zip(contexts, map(len, _encode(tokenizer, contexts)), strict=True))
    joint = _encode(tokenizer, [context + continuation for context, continuation in pairs])
    requests = []
    for (context, _), ids in zip(pairs, joint, strict=True):
        n_cont = max(1, len(ids) - context_lengths[context])
        if n_cont >= len(ids):
            ids = [eos_id, *ids]
        kept = ids[-(seq_len + 1) :]
        requests.append(Request(tuple(kept), min(n_cont, len(kept) - 1)))
    return requests


def choice_offsets(examples: Sequence[Example]) -> list[int]:
    """Where each example's requests start in `build_requests`' list, plus the end."""
    offsets = [0]
    for example in examples:
        offsets.append(offsets[-1] + example.n_choices)
    return offsets
