"""Attention entropy per head: does a head look at a few tokens or spread over all it can see?

The model calls fused attention and never forms the probabilities, so they are recomputed from
the hooked queries and keys (after QK-norm; RoPE and the 1/sqrt(head_dim) scale applied here as
the model does) on a few windows, one window at a time to bound the [heads, seq, seq] memory.
A query at position t sees t + 1 keys, so its entropy is divided by log(t + 1): 0 is a head that
attends to one token, 1 one that attends uniformly. Position 0 sees one key and is left out.
"""

from __future__ import annotations

import math
from typing import cast

import torch

from layerwise.analysis.collect import recording_outputs
from layerwise.nn.model import Attention, Block, Transformer, apply_rope


@torch.no_grad()
def attention_entropy(model: Transformer, tokens: torch.Tensor) -> list[list[float]]:
    """Mean normalised entropy [layer][head] over the windows `tokens` [batch, seq >= 2];
    layers with fewer heads than the widest are padded with NaN."""
    per_window = [_window_entropy(model, window[None]) for window in tokens]
    mean = torch.stack(per_window).mean(0)
    return mean.tolist()


def _window_entropy(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """[layers, max_heads] for one window [1, seq]."""
    queries: list[torch.Tensor] = []
    keys: list[torch.Tensor] = []
    blocks = cast(list[Block], list(model.blocks))
    with (
        recording_outputs([b.attention.q_norm for b in blocks], queries),
        recording_outputs([b.attention.k_norm for b in blocks], keys),
    ):
        model.hidden_states(tokens)
    seq = tokens.shape[1]
    cos, sin = model.rope_cos[:seq], model.rope_sin[:seq]
    max_heads = max(b.attention.n_heads for b in blocks)
    out = torch.full((len(blocks), max_heads), math.nan, dtype=torch.float64)
    for layer, block in enumerate(blocks):
        entropy = head_entropy(block.attention, queries[layer], keys[layer], cos, sin)
        out[layer, : entropy.numel()] = entropy.double().cpu()
    return out


def head_entropy(
    attention: Attention, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Mean normalised entropy per head [heads] of one window's normed q [1, seq, q_dim] and
    k [1, seq, kv_dim]."""
    seq, head_dim = q.shape[1], attention.head_dim
    q = q.view(1, seq, attention.n_heads, head_dim).transpose(1, 2)
    k = k.view(1, seq, attention.n_kv_heads, head_dim).transpose(1, 2)
    q, k = apply_rope(q, cos, sin).float(), apply_rope(k, cos, sin).float()
    k = k.repeat_interleave(attention.n_heads // attention.n_kv_heads, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
    visible = torch.ones(seq, seq, dtype=torch.bool, device=q.device).tril()
    log_p = torch.log_softmax(scores.masked_fill(~visible, -math.inf), dim=-1)
    p = log_p.exp()
    entropy = -torch.special.xlogy(p, p).sum(-1)[0]  # [heads, seq]
    keys_seen = torch.arange(1, seq + 1, device=q.device, dtype=torch.float32)
    normalised = entropy[:, 1:] / keys_seen[1:].log()
    return normalised.mean(-1)
