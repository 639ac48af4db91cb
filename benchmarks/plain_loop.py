"""Plain: what a user writes with nothing but PyTorch, the reference our step is measured against.

A nanoGPT-style loop, independent of our model code on purpose (it reads only the per-layer
widths of the `ModelShape` and the token file's dtype from meta.json): its own embedding and
blocks of the same widths, SDPA attention with GQA, SwiGLU, RMSNorm, QK-norm, RoPE, an untied
head, `F.cross_entropy` over the full logits, `torch.optim.AdamW` with no fused flag,
gradient clipping, batches cut from a `np.memmap` of the token file; on GPU bf16 autocast and
`torch.compile(model)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from layerwise.profiles.shape import ModelShape
from timing import StepClock, StepTimes
from train_setup import OPTIM, Settings


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on [batch, heads, seq, head_dim], pairing the two halves of each head."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, first * sin + second * cos), dim=-1).type_as(x)


class PlainBlock(nn.Module):
    """OLMo2's block: norms on each sub-layer's output (reordered), QK-norm, GQA, SwiGLU."""

    def __init__(self, d_model: int, head_dim: int, heads: int, kv_heads: int, d_ffn: int) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q = nn.Linear(d_model, heads * head_dim, bias=False)
        self.k = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.v = nn.Linear(d_model, kv_heads * head_dim, bias=False)
        self.o = nn.Linear(heads * head_dim, d_model, bias=False)
        self.q_norm = nn.RMSNorm(heads * head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(kv_heads * head_dim, eps=1e-6)
        self.attn_norm = nn.RMSNorm(d_model, eps=1e-6)
        self.gate = nn.Linear(d_model, d_ffn, bias=False)
        self.up = nn.Linear(d_model, d_ffn, bias=False)
        self.down = nn.Linear(d_ffn, d_model, bias=False)
        self.mlp_norm = nn.RMSNorm(d_model, eps=1e-6)

    def attend(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_norm(self.q(x)).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_norm(self.k(x)).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v.to(q.dtype), is_causal=True, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn_norm(self.attend(x, cos, sin))
        return x + self.mlp_norm(self.down(F.silu(self.gate(x)) * self.up(x)))


class PlainGPT(nn.Module):
    """Embedding, blocks of the given per-layer widths, final norm, untied head, full-logit loss."""

    def __init__(self, shape: ModelShape, max_seq_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(shape.vocab_size, shape.d_model)
        self.blocks = nn.ModuleList(
            PlainBlock(shape.d_model, shape.head_dim, spec.n_heads, spec.n_kv_heads, spec.d_ffn)
            for spec in shape.layers
        )
        self.norm = nn.RMSNorm(shape.d_model, eps=1e-6)
        self.head = nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        freqs = 500_000.0 ** (-torch.arange(0, shape.head_dim, 2).float() / shape.head_dim)
        angles = torch.arange(max_seq_len).float()[:, None] * freqs[None, :]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        cos, sin = self.cos[:t], self.sin[:t]
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


class PlainLoop:
    """A nanoGPT-style loop: memmap batches, autocast, AdamW with decay on matrices, clipping."""

    name = "plain"

    def __init__(self, shape: ModelShape, settings: Settings, data_dir: Path) -> None:
        self.device = torch.device(settings.device)
        self.batch, self.seq_len = settings.micro_batch, settings.seq_len
        torch.manual_seed(settings.seed)
        self.model = PlainGPT(shape, settings.seq_len).to(self.device)
        self.forward: Callable[..., torch.Tensor] = (
            torch.compile(self.model) if settings.compile else self.model
        )
        params = list(self.model.parameters())
        self.optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in params if p.dim() >= 2], "weight_decay": OPTIM.weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
            ],
            lr=OPTIM.lr,
            betas=OPTIM.betas,
        )
        dtype = json.loads((data_dir / "meta.json").read_text(encoding="utf-8"))["dtype"]
        self.tokens = np.memmap(data_dir / "train.bin", dtype=dtype, mode="r")
        self.generator = torch.Generator().manual_seed(settings.seed)

    def batch_from_memmap(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(
            len(self.tokens) - self.seq_len - 1, (self.batch,), generator=self.generator
        )
        rows = np.stack([self.tokens[s : s + self.seq_len + 1] for s in starts.tolist()])
        window = torch.from_numpy(rows.astype(np.int64))
        if self.device.type == "cuda":
            window = window.pin_memory().to(self.device, non_blocking=True)
        return window[:, :-1], window[:, 1:]

    def step(self, times: StepTimes) -> None:
        clock = StepClock(self.device)
        inputs, targets = self.batch_from_memmap()
        clock.fetched()
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
        ):
            loss = self.forward(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), OPTIM.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        clock.stop(times, loss.item())
