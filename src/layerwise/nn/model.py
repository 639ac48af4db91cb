"""A decoder-only transformer whose blocks each have their own FFN width and head count.

The study's block (OLMo2): reordered norm, QK-norm over the whole q and k projections, RoPE,
grouped-query attention through `scaled_dot_product_attention`, SwiGLU, no biases, untied LM head.
Every width comes from the `ModelShape` passed in; nothing here re-derives it. The model knows
nothing of training or parallelism: compilation, sharding and wrapping are applied from outside.

Initialisation follows OLMo2: every weight matrix from a normal distribution with std 0.02,
truncated at 3 std, norms at 1. The reordered norm normalises each sub-layer's output before it
joins the residual stream, so no depth- or width-dependent rescaling is needed, and all profiles
start from the same distribution whatever their per-layer widths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from layerwise.nn.losses import Reduction, linear_cross_entropy
from layerwise.profiles.shape import BlockOptions, LayerSpec, ModelShape

AttentionBackend = Literal["auto", "flash", "cudnn", "efficient", "math"]
"""The SDPA kernel attention runs with (`run.attention`); "auto" leaves the choice to PyTorch."""

SDPA_BACKENDS: dict[str, SDPBackend] = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
EXPANDED_KV_BACKENDS = frozenset({"cudnn", "efficient"})
"""Kernels that do not take SDPA's `enable_gqa`: k and v are expanded to the query heads."""

Observer = Callable[[int, torch.Tensor, torch.Tensor], None]
"""Called as `observer(index, block_input, block_output)` after each block, outside the block."""


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, float32, shape [max_seq_len, head_dim // 2]."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [batch, heads, seq, head_dim] by position (rotate-half convention)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return rotated.to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 whatever the activation dtype, returned in that dtype.

    Under bf16 autocast the activations arrive in bf16 while the weight stays float32; upcasting
    keeps the normalisation exact and lets PyTorch use its fused kernel.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
        """`alive` (0/1 per channel) takes the mean square over the live channels only, so a
        gated projection normalises exactly as the narrower one without the dead channels."""
        if alive is None:
            return F.rms_norm(x.float(), (x.shape[-1],), self.weight, self.eps).to(x.dtype)
        xf = x.float()
        mean_square = (xf.square() * alive).sum(-1, keepdim=True) / alive.sum().clamp(min=1)
        return (xf * torch.rsqrt(mean_square + self.eps) * self.weight).to(x.dtype)


KVExtend = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""Takes a block's new keys and values and returns all it attends to (a generation KV cache)."""


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    expand_kv: bool | None = None,
    backend: AttentionBackend = "auto",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal grouped-query attention of q [b, heads, s, hd] over k, v [b, kv_heads, s, hd].

    `mask` (boolean, broadcast to [b, heads, s, keys]) replaces the plain causal mask where
    keys precede the queries (a KV cache) or are padding.

    SDPA's `enable_gqa=True` lets each group of query heads share a k/v head without copying
    them, but only the flash and math kernels accept it: on CUDA in float32 it leaves only the
    slow math kernel, since the memory-efficient kernel, the only fused one that takes float32,
    does not accept it. There, and whenever the efficient or cuDNN kernel is asked for, k and v
    are expanded to the query head count (`repeat_interleave` on the head dim, the grouping
    `enable_gqa` uses) and SDPA is called without it. `expand_kv` forces the choice (tests).
    A `backend` other than "auto" pins the kernel, so a run measures the one it asked for.
    """
    if expand_kv is None:
        expand_kv = q.is_cuda and (q.dtype == torch.float32 or backend in EXPANDED_KV_BACKENDS)
    if backend == "auto":
        return _sdpa(q, k, v, expand_kv, mask)
    with sdpa_kernel(SDPA_BACKENDS[backend]):
        return _sdpa(q, k, v, expand_kv, mask)


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, expand_kv: bool, mask: torch.Tensor | None
) -> torch.Tensor:
    causal = mask is None
    if not expand_kv:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True
        )
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


def per_channel(gates: torch.Tensor, width: int) -> torch.Tensor:
    """Each unit's factor repeated over its channels: [units] -> [width]."""
    return gates.repeat_interleave(width // gates.numel())


class Attention(nn.Module):
    backend: AttentionBackend = "auto"
    """Set from outside (`parallelize.set_attention_backend`): how the run executes, not what
    the model is, so it is neither an option of the block nor part of a checkpoint."""

    def __init__(self, d_model: int, head_dim: int, layer: LayerSpec, eps: float) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = layer.n_heads, layer.n_kv_heads, head_dim
        q_dim, kv_dim = layer.n_heads * head_dim, layer.n_kv_heads * head_dim
        self.w_q = nn.Linear(d_model, q_dim, bias=False)
        self.w_k = nn.Linear(d_model, kv_dim, bias=False)
        self.w_v = nn.Linear(d_model, kv_dim, bias=False)
        self.w_o = nn.Linear(q_dim, d_model, bias=False)
        self.q_norm = RMSNorm(q_dim, eps=eps)
        self.k_norm = RMSNorm(kv_dim, eps=eps)
        self.gate: nn.Module | None = None
        """Learned shapes (layerwise.learn) set gates over the width here: called, a gate gives
        one factor in [0, 1] per GQA group (its query heads and their key/value head)."""

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        extend_kv: KVExtend | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`extend_kv` and `mask` are for decoding with a cache; training uses neither."""
        batch, seq, _ = x.shape
        gates = None if self.gate is None else self.gate()
        q, k = self.w_q(x), self.w_k(x)
        if gates is None:
            q, k = self.q_norm(q), self.k_norm(k)
        else:  # QK-norm spans all heads: a pruned group must not count in its statistics
            alive = (gates > 0).to(torch.float32)
            q = self.q_norm(q, per_channel(alive, q.shape[-1]))
            k = self.k_norm(k, per_channel(alive, k.shape[-1]))
        q = q.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.w_v(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if v.dtype != q.dtype:
            v = v.to(q.dtype)
        if extend_kv is not None:
            k, v = extend_kv(k, v)
        out = causal_attention(q, k, v, backend=self.backend, mask=mask)
        out = out.transpose(1, 2).reshape(batch, seq, -1)
        if gates is not None:
            out = out * per_channel(gates, out.shape[-1]).to(out.dtype)
        return self.w_o(out)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ffn: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ffn, bias=False)
        self.w3 = nn.Linear(d_model, d_ffn, bias=False)
        self.w2 = nn.Linear(d_ffn, d_model, bias=False)
        self.gate: nn.Module | None = None
        """As in `Attention`: one factor per `ffn_divisor` channels of the hidden width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.w1(x)) * self.w3(x)
        if self.gate is not None:
            hidden = hidden * per_channel(self.gate(), hidden.shape[-1]).to(hidden.dtype)
        return self.w2(hidden)


class Block(nn.Module):
    def __init__(self, shape: ModelShape, layer: LayerSpec, options: BlockOptions) -> None:
        super().__init__()
        self.reordered = options.norm_order == "reordered"
        self.attention = Attention(shape.d_model, shape.head_dim, layer, options.norm_eps)
        self.attention_norm = RMSNorm(shape.d_model, eps=options.norm_eps)
        self.ffn = SwiGLU(shape.d_model, layer.d_ffn)
        self.ffn_norm = RMSNorm(shape.d_model, eps=options.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        extend_kv: KVExtend | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.reordered:
            h = x + self.attention_norm(self.attention(x, cos, sin, extend_kv, mask))
            return h + self.ffn_norm(self.ffn(h))
        h = x + self.attention(self.attention_norm(x), cos, sin, extend_kv, mask)
        return h + self.ffn(self.ffn_norm(h))


class Transformer(nn.Module):
    rope_cos: torch.Tensor  # buffers, registered in __init__
    rope_sin: torch.Tensor

    def __init__(self, shape: ModelShape, options: BlockOptions | None = None) -> None:
        super().__init__()
        self.shape = shape
        self.options = options or BlockOptions()
        self.embedding = nn.Embedding(shape.vocab_size, shape.d_model)
        self.blocks = nn.ModuleList(Block(shape, layer, self.options) for layer in shape.layers)
        self.final_norm = RMSNorm(shape.d_model, eps=self.options.norm_eps)
        self.lm_head = nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        if shape.tie_embeddings:
            self.lm_head.weight = self.embedding.weight
        cos, sin = rope_tables(shape.head_dim, self.options.max_seq_len, self.options.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.options.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def residual_stream(
        self, tokens: torch.Tensor, observer: Observer | None = None
    ) -> torch.Tensor:
        """The last block's output [batch, seq, d_model], before the final norm.

        `observer(index, block_input, block_output)`, if given, is called after each block with
        its residual stream in and out ([batch, seq, d_model]), here in the loop rather than by
        hooks, which fire twice on checkpointed blocks and make compiled ones recompile. It sees
        the live tensors: it must not modify them, and should detach what it keeps.
        """
        seq = tokens.shape[1]
        if seq > self.options.max_seq_len:
            raise ValueError(
                f"sequence length {seq} exceeds max_seq_len={self.options.max_seq_len}"
            )
        cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        x = self.embedding(tokens)
        for index, block in enumerate(self.blocks):
            block_input, x = x, block(x, cos, sin)
            if observer is not None:
                observer(index, block_input, x)
        return x

    def hidden_states(self, tokens: torch.Tensor, observer: Observer | None = None) -> torch.Tensor:
        """Final-norm output [batch, seq, d_model], the input of the LM head; `observer` is as
        in `residual_stream`."""
        return self.final_norm(self.residual_stream(tokens, observer))

    def head_loss(
        self, x: torch.Tensor, targets: torch.Tensor, reduction: Reduction = "mean"
    ) -> torch.Tensor:
        """Final norm, LM head and loss of the residual stream `x` against `targets`.

        One method so that the whole tail of the model can be compiled as one graph
        (`run.compile_loss`) rather than left as an eager island after compiled blocks.
        """
        hidden = self.final_norm(x)
        return linear_cross_entropy(
            hidden.flatten(0, 1), self.lm_head.weight, targets.flatten(), reduction
        )

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        reduction: Reduction = "mean",
        observer: Observer | None = None,
    ) -> torch.Tensor:
        """Next-token cross-entropy against `targets` when given, else the logits.

        `reduction` is "mean" or "sum" (a scalar), or "none": the float32 loss of every token,
        shape [batch * seq] in row-major order (token t of sequence b at b * seq + t, so
        `.view(batch, seq)` restores the layout), for scoring under `torch.no_grad()`. The loss
        never materialises the full float32 logits: it is computed in chunks of tokens, which
        keeps memory flat in the vocabulary size. `observer` is as in `residual_stream`.
        """
        x = self.residual_stream(tokens, observer)
        if targets is None:
            return self.lm_head(self.final_norm(x))
        return self.head_loss(x, targets, reduction)
