"""A model's per-layer widths (`ModelShape`) and what they cost: parameters and training FLOPs.

`BlockOptions` are the block's choices that leave its size unchanged (norm order, RoPE, init):
the config's defaults and the model's come from here. The shape is data, computed once from a recipe (layerwise.profiles.recipes) and passed down;
the model, the planner and every report read the widths from it and never re-derive them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LayerSpec:
    """The widths of one transformer block."""

    d_ffn: int
    n_heads: int
    n_kv_heads: int


@dataclass(frozen=True)
class ModelShape:
    """Everything about a model's size: the single source of truth for its per-layer widths."""

    d_model: int
    head_dim: int
    vocab_size: int
    layers: tuple[LayerSpec, ...]
    tie_embeddings: bool = False

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def layer_params(shape: ModelShape, layer: LayerSpec) -> int:
    """Parameters of one block: q/k/v/o projections, QK-norm weights, SwiGLU, two norms."""
    d = shape.d_model
    q_dim = layer.n_heads * shape.head_dim
    kv_dim = layer.n_kv_heads * shape.head_dim
    attention = 2 * d * q_dim + 2 * d * kv_dim + q_dim + kv_dim
    return attention + 3 * d * layer.d_ffn + 2 * d


def embedding_params(shape: ModelShape) -> int:
    """Input embedding plus LM head (one matrix when tied)."""
    copies = 1 if shape.tie_embeddings else 2
    return copies * shape.vocab_size * shape.d_model


def total_params(shape: ModelShape) -> int:
    """Exactly `sum(p.numel() for p in model.parameters())` of the built model."""
    blocks = sum(layer_params(shape, layer) for layer in shape.layers)
    return blocks + embedding_params(shape) + shape.d_model


def non_embedding_params(shape: ModelShape) -> int:
    return total_params(shape) - embedding_params(shape)


def layer_flops_per_token(shape: ModelShape, layer: LayerSpec, seq_len: int) -> int:
    """Training FLOPs (forward + backward) one token spends in one block.

    6 FLOPs per matmul weight (2 forward, 4 backward) plus attention's score and value products,
    12 * q_dim * seq_len, counted without a causal discount as in PaLM's MFU convention. Each layer
    uses its own head count: a single model-wide head count would misstate layer-wise models.
    """
    d = shape.d_model
    q_dim = layer.n_heads * shape.head_dim
    kv_dim = layer.n_kv_heads * shape.head_dim
    matmul_weights = 2 * d * q_dim + 2 * d * kv_dim + 3 * d * layer.d_ffn
    return 6 * matmul_weights + 12 * q_dim * seq_len


def flops_per_token(shape: ModelShape, seq_len: int) -> int:
    """Training FLOPs per token of the whole model: blocks plus the LM head matmul."""
    blocks = sum(layer_flops_per_token(shape, layer, seq_len) for layer in shape.layers)
    return blocks + 6 * shape.vocab_size * shape.d_model


Metric = Literal["params", "flops"]


def measure(shape: ModelShape, metric: Metric, seq_len: int) -> int:
    return total_params(shape) if metric == "params" else flops_per_token(shape, seq_len)


NormOrder = Literal["reordered", "pre"]


@dataclass(frozen=True)
class BlockOptions:
    """Choices about the block that leave its parameter count unchanged."""

    norm_order: NormOrder = "reordered"
    rope_theta: float = 500_000.0
    norm_eps: float = 1e-6
    max_seq_len: int = 4096
    init_std: float = 0.02
