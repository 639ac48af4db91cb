"""Sampling from our own `Transformer` with a KV cache, and the same without one (benchmark).

The cache is preallocated per layer with that layer's own KV head count, since layer-wise models
differ there; each step runs only the new tokens through the blocks, reusing the modules of the
model (no second implementation of the weights). Rows of a batch are left-padded: positions skip
the padding and padded keys are masked, so a padded row decodes exactly as it would alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from layerwise.nn.model import Transformer, rope_tables
from layerwise.util.errors import UserError


@dataclass(frozen=True)
class Sampling:
    """How the next token is drawn: greedy at temperature 0, else softmax(logits / T) after
    top-k and top-p (nucleus) filtering. `vocab_limit` masks ids past the tokenizer's own
    vocabulary (the embedding is padded to a multiple of 64)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    vocab_limit: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(
                f"--temperature {self.temperature} must be a finite number of at least 0 "
                "(0 for greedy decoding)"
            )
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top-k {self.top_k} must be at least 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"--top-p {self.top_p} must be in (0, 1]")
        filters = [
            f"{flag} {value}"
            for flag, value in (("--top-k", self.top_k), ("--top-p", self.top_p))
            if value is not None
        ]
        if self.temperature == 0 and filters:
            raise UserError(
                f"{' and '.join(filters)} would have no effect at --temperature 0, which is greedy "
                "decoding (always the most likely token); drop it, or sample with a temperature "
                "above 0"
            )


GREEDY = Sampling(temperature=0.0)
DEFAULT_NEW_TOKENS = 64
"""New tokens `layerwise generate` asks for when not told, cut to what the context leaves."""


def new_tokens_that_fit(model: Transformer, prompt_len: int, requested: int | None) -> int:
    """`requested` new tokens after a prompt of `prompt_len`, or by default DEFAULT_NEW_TOKENS
    cut to the room the model's training context leaves; a UserError, before any work, when by
    default there is no room. More than fits is allowed when asked for (see
    `past_context_warning`)."""
    if requested is not None:
        return requested
    context = model.options.max_seq_len
    room = context - prompt_len
    if room < 1:
        raise UserError(
            f"the prompt ({prompt_len} tokens) fills the model's training context of {context} "
            "tokens, leaving no room for new tokens; shorten --prompt, or ask for tokens past "
            "the context with --max-new-tokens"
        )
    return min(DEFAULT_NEW_TOKENS, room)


def past_context_warning(model: Transformer, prompt_len: int, new_tokens: int) -> str | None:
    """What to tell the user when the sequence runs past the training context: RoPE computes
    any position, so it is generated, but the model never saw such positions in training."""
    context = model.options.max_seq_len
    if prompt_len + new_tokens <= context:
        return None
    return (
        f"the prompt ({prompt_len} tokens) plus {new_tokens} new tokens run past the model's "
        f"training context of {context} tokens; the tokens past it come from positions the "
        "model was never trained on, and may be poor"
    )


def rope_covering(model: Transformer, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE cos and sin for positions 0..length-1: the model's own tables, extended past its
    training context when `length` needs it (the angles are a formula, not weights)."""
    if length <= model.rope_cos.shape[0]:
        return model.rope_cos, model.rope_sin
    cos, sin = rope_tables(model.shape.head_dim, length, model.options.rope_theta)
    return cos.to(model.rope_cos.device), sin.to(model.rope_sin.device)


class KVCache:
    """Keys and values of every layer, [batch, n_kv_heads of that layer, capacity, head_dim]."""

    def __init__(self, model: Transformer, batch: int, capacity: int) -> None:
        param = model.embedding.weight
        head_dim = model.shape.head_dim
        self.keys = [
            param.new_zeros(batch, layer.n_kv_heads, capacity, head_dim)
            for layer in model.shape.layers
        ]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.length = 0
        self.rope_cos, self.rope_sin = rope_covering(model, capacity)

    def append(self, index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Store the new keys and values of layer `index`; return all of them so far."""
        end = self.length + k.shape[2]
        self.keys[index][:, :, self.length : end] = k
        self.values[index][:, :, self.length : end] = v
        return self.keys[index][:, :, :end], self.values[index][:, :, :end]


def attention_mask(key_valid: torch.Tensor, seq: int, past: int) -> torch.Tensor:
    """Boolean [batch, 1, seq, past + seq]: causal and without padded keys; a padded query sees
    itself, so its softmax stays finite (its output is never used)."""
    total = past + seq
    q_pos = torch.arange(past, total, device=key_valid.device)[:, None]
    k_pos = torch.arange(total, device=key_valid.device)[None, :]
    allowed = (k_pos <= q_pos) & key_valid[:, None, None, :total]
    return allowed | (k_pos == q_pos)


def forward_cached(
    model: Transformer,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    key_valid: torch.Tensor,
    cache: KVCache,
) -> torch.Tensor:
    """Logits [batch, seq, vocab] of the new `tokens` at `positions`, extending `cache`."""
    seq = tokens.shape[1]
    rope = (cache.rope_cos[positions].unsqueeze(1), cache.rope_sin[positions].unsqueeze(1))
    mask = attention_mask(key_valid, seq, cache.length)
    x = model.embedding(tokens)
    for index, block in enumerate(model.blocks):
        x = block(x, *rope, extend_kv=partial(cache.append, index), mask=mask)
    cache.length += seq
    return model.lm_head(model.final_norm(x))


def next_token(logits: torch.Tensor, sampling: Sampling, rng: torch.Generator) -> torch.Tensor:
    """One id per row of `logits` [batch, vocab]."""
    logits = logits.float()
    if sampling.vocab_limit is not None:
        logits[:, sampling.vocab_limit :] = -torch.inf
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = logits / sampling.temperature
    if sampling.top_k is not None:
        kth = logits.topk(min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if sampling.top_p is not None:
        ordered, order = logits.sort(dim=-1, descending=True)
        before = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1)
        ordered = ordered.masked_fill(before >= sampling.top_p, -torch.inf)
        logits = torch.full_like(logits, -torch.inf).scatter(-1, order, ordered)
    return torch.multinomial(logits.softmax(-1), 1, generator=rng).squeeze(-1)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [batch, longest] padded on the left, and which of them are real."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    valid = torch.zeros((len(prompts), longest), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        valid[row, longest - len(prompt) :] = True
    return ids, valid


@torch.no_grad()
def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | None,
    sampling: Sampling = GREEDY,
    eos_id: int | None = None,
    on_token: Callable[[int], None] | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """New token ids for each prompt, up to `max_new_tokens` (None: DEFAULT_NEW_TOKENS or
    what fits in the context), each stopping after EOS. Asked for more than the training
    context holds, the cache path generates past it (`past_context_warning`).

    `on_token` hears each new id of the first row as it is drawn (streaming). `use_cache=False`
    recomputes the whole sequence every step with the model's own forward (the benchmark's
    baseline; unpadded prompts only).
    """
    device = model.embedding.weight.device
    ids, valid = left_pad(prompts, pad_id=eos_id or 0)
    ids, valid = ids.to(device), valid.to(device)
    batch, prompt_len = ids.shape
    max_new_tokens = new_tokens_that_fit(model, prompt_len, max_new_tokens)
    capacity = prompt_len + max_new_tokens
    if not use_cache and not bool(valid.all()):
        raise ValueError("recomputing without a cache needs prompts of equal length")
    if not use_cache and capacity > model.options.max_seq_len:
        raise ValueError("recomputing without a cache stays within the training context")
    rng = torch.Generator(device=device)
    rng.manual_seed(sampling.seed if sampling.seed is not None else torch.seed())
    key_valid = torch.ones((batch, capacity), dtype=torch.bool, device=device)
    key_valid[:, :prompt_len] = valid
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    cache = KVCache(model, batch, capacity) if use_cache else None
    step_ids, done = ids, torch.zeros(batch, dtype=torch.bool, device=device)
    new: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        if cache is not None:
            logits = forward_cached(model, step_ids, positions, key_valid, cache)[:, -1]
        else:
            logits = model(torch.cat([ids, *[t[:, None] for t in new]], dim=1))[:, -1]
        token = next_token(logits, sampling, rng)
        if on_token is not None and not bool(done[0]):
            on_token(int(token[0]))
        if eos_id is not None:
            token = torch.where(done, torch.full_like(token, eos_id), token)
            done |= token == eos_id
        new.append(token)
        if bool(done.all()):
            break
        step_ids, positions = token[:, None], positions[:, -1:] + 1
    return [trim(row, eos_id) for row in torch.stack(new, dim=1).tolist()] if new else [[]] * batch


def trim(ids: list[int], eos_id: int | None) -> list[int]:
    """Up to and including the first EOS."""
    if eos_id is not None and eos_id in ids:
        return ids[: ids.index(eos_id) + 1]
    return ids
