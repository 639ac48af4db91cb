"""`layerwise plan`: what a config will cost before a GPU is asked for it.

Parameters and FLOPs per token come from the shape the run will train (`layerwise.profiles`, the
same accounting as the trainer's MFU). Memory is an estimate, counted per GPU:

- weights, gradients and AdamW's two moments in float32 (16 bytes per parameter; the trainer
  keeps float32 parameters under bf16 autocast), all replicated under DDP (gradients reduced from
  DDP's buckets, no copy) and divided by the GPU count under FSDP2, which then also holds the
  gathered parameters of the embedding/head and of two blocks (the current and the prefetched);
- activations saved for backward at the micro-batch: per token and layer the residual inputs
  (float32), and in the compute dtype the q/k/v projections, their QK-norm and RoPE outputs,
  the attention output, the output-projection and FFN outputs before their norms, and the
  SwiGLU's four hidden-width tensors; with activation checkpointing only each block's input is
  kept and one block's activations are recomputed at a time;
- a transient peak, the larger of the loss's one chunk of logits (float32 log-softmax plus the
  matmul output) and one block's activation gradients during backward: they are not alive at
  the same time.

Not counted: the CUDA context and allocator fragmentation (typically 1-3 GiB per GPU), NCCL
buffers, and torch.compile workspaces, hence the headroom asked for before declaring a fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from layerwise.config.schema import Config, batch_plan, total_steps
from layerwise.nn.losses import CHUNK_TOKENS
from layerwise.profiles.shape import (
    ModelShape,
    flops_per_token,
    layer_params,
    non_embedding_params,
    total_params,
)
from layerwise.util.errors import UserError

GIB = 2**30
FP32 = 4
ADAMW_STATE_BYTES = 2 * FP32
HEADROOM = 0.9
"""A configuration fits when its estimate stays under this share of the GPU's memory."""

DEFAULT_PEAK_TFLOPS = 989.0
"""H100 SXM dense bf16 tensor-core peak, the card the study trained on."""


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU of one layout, by what holds them."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    transient: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.transient


def layer_activation_bytes(shape: ModelShape, compute_bytes: int) -> list[int]:
    """Bytes saved for backward per token in each block (see the module docstring)."""
    d, sizes = shape.d_model, []
    for layer in shape.layers:
        q_dim = layer.n_heads * shape.head_dim
        kv_dim = layer.n_kv_heads * shape.head_dim
        compute = 4 * q_dim + 4 * kv_dim + 2 * d + 4 * layer.d_ffn
        sizes.append(2 * d * FP32 + compute * compute_bytes)
    return sizes


def _block_params(shape: ModelShape) -> list[int]:
    return [layer_params(shape, layer) for layer in shape.layers]


def estimate_memory(
    shape: ModelShape,
    tokens: int,
    gpus: int,
    strategy: str,
    checkpointing: bool,
    compute_bytes: int = 2,
) -> Memory:
    """Per-GPU bytes to train `shape` on micro-batches of `tokens` tokens (`strategy`: "ddp",
    which a single process also follows, or "fsdp")."""
    params = total_params(shape)
    shards = gpus if strategy == "fsdp" else 1
    per_layer = layer_activation_bytes(shape, compute_bytes)
    if checkpointing:
        saved = shape.n_layers * shape.d_model * FP32 + max(per_layer)
    else:
        saved = sum(per_layer)
    head = 3 * shape.d_model * FP32  # embedding output, final norm input and output
    gathered = 0
    if strategy == "fsdp" and gpus > 1:
        embedding = params - sum(_block_params(shape))
        gathered = (embedding + 2 * max(_block_params(shape))) * FP32
    chunk = min(tokens, CHUNK_TOKENS) * shape.vocab_size
    return Memory(
        weights=params * FP32 // shards + gathered,
        gradients=params * FP32 // shards,
        optimizer=params * ADAMW_STATE_BYTES // shards,
        activations=tokens * (saved + head),
        transient=max(chunk * (FP32 + compute_bytes), tokens * max(per_layer)),
    )


@dataclass(frozen=True)
class Layout:
    strategy: str
    checkpointing: bool
    memory: Memory

    @property
    def name(self) -> str:
        return f"{self.strategy.upper()}{' + act. ckpt' if self.checkpointing else ''}"


@dataclass(frozen=True)
class RunPlan:
    """What `layerwise plan` prints: sizes, the run's length, memory per layout, and time."""

    shape: ModelShape
    gpus: int
    gpu_memory: int
    micro_batch: int
    seq_len: int
    accum_steps: int
    tokens_per_step: int
    steps: int
    mfu: float
    peak_tflops: float
    layouts: tuple[Layout, ...]
    chosen: Layout
    """The layout the config asks for (`parallel.strategy`, `activation_checkpointing`)."""

    @property
    def params(self) -> int:
        return total_params(self.shape)

    @property
    def flops_per_token(self) -> int:
        return flops_per_token(self.shape, self.seq_len)

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def seconds(self) -> float:
        achieved = self.gpus * self.peak_tflops * 1e12 * self.mfu
        return self.flops_per_token * self.tokens / achieved

    def fits(self, layout: Layout) -> bool:
        return layout.memory.total <= HEADROOM * self.gpu_memory


def plan_run(
    config: Config, shape: ModelShape, gpus: int, gpu_memory: int, mfu: float, peak_tflops: float
) -> RunPlan:
    """The estimate for `config` trained as `shape` on `gpus` GPUs of `gpu_memory` bytes."""
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu}: give a fraction of the peak in (0, 1], e.g. 0.4")
    batch = batch_plan(config, gpus)
    tokens = batch.micro_batch * batch.seq_len
    compute_bytes = FP32 if config.run.precision == "fp32" else 2
    layouts = tuple(
        Layout(strategy, ckpt, estimate_memory(shape, tokens, gpus, strategy, ckpt, compute_bytes))
        for strategy in ("ddp", "fsdp")
        for ckpt in (False, True)
    )
    wanted = "fsdp" if config.parallel.strategy == "fsdp" else "ddp"
    chosen = next(
        layout
        for layout in layouts
        if (layout.strategy, layout.checkpointing)
        == (wanted, config.parallel.activation_checkpointing)
    )
    return RunPlan(
        shape=shape,
        gpus=gpus,
        gpu_memory=gpu_memory,
        micro_batch=batch.micro_batch,
        seq_len=batch.seq_len,
        accum_steps=batch.accum_steps,
        tokens_per_step=batch.tokens_per_step,
        steps=total_steps(config),
        mfu=mfu,
        peak_tflops=peak_tflops,
        layouts=layouts,
        chosen=chosen,
    )


def _gib(value: int) -> str:
    return f"{value / GIB:.1f}"


def duration(seconds: float) -> str:
    hours = seconds / 3600
    if hours < 1:
        return f"{seconds / 60:.1f} min"
    return f"{hours:,.1f} h ({hours / 24:.1f} days)" if hours >= 24 else f"{hours:,.2f} h"


def render_plan(plan: RunPlan) -> str:
    """The plan as text: sizes and run length, a memory table per layout, time, warnings."""
    shape = plan.shape
    lines = [
        f"parameters: {plan.params:,} ({plan.params / 1e9:.3f}B; "
        f"{non_embedding_params(shape):,} without embedding and LM head); {shape.n_layers} "
        f"layers, d_model {shape.d_model}",
        f"FLOPs per token (training, forward + backward): {plan.flops_per_token / 1e9:.2f} GFLOPs",
        f"run: {plan.steps:,} steps x {plan.tokens_per_step:,} tokens = "
        f"{plan.tokens / 1e9:.2f}B tokens; micro-batch {plan.micro_batch} x {plan.seq_len} per "
        f"GPU, {plan.accum_steps} accumulation step(s) on {plan.gpus} GPU(s)",
        f"time at {plan.mfu:.0%} MFU of {plan.peak_tflops:g} TFLOPs per GPU: "
        f"{duration(plan.seconds)} ({plan.flops_per_token * plan.tokens:.3g} FLOPs)",
        "",
        f"memory per GPU (GiB, estimate; {_gib(plan.gpu_memory)} GiB GPUs, fits under "
        f"{HEADROOM:.0%}):",
        "| layout | weights | grads | AdamW | activations | transient | total | fits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for layout in plan.layouts:
        m = layout.memory
        marker = " (config)" if layout == plan.chosen else ""
        lines.append(
            f"| {layout.name}{marker} | {_gib(m.weights)} | {_gib(m.gradients)} | "
            f"{_gib(m.optimizer)} | {_gib(m.activations)} | {_gib(m.transient)} | "
            f"{_gib(m.total)} | {'yes' if plan.fits(layout) else 'NO'} |"
        )
    lines += [f"warning: {w}" for w in plan_warnings(plan)]
    return "\n".join(lines)


def plan_warnings(plan: RunPlan) -> list[str]:
    """Why the configured layout will not fit, and which layout would, if any."""
    if plan.fits(plan.chosen):
        return []
    fitting = [layout.name for layout in plan.layouts if plan.fits(layout)]
    alternative = (
        f"{', '.join(fitting)} would fit (parallel.strategy / parallel.activation_checkpointing)"
        if fitting
        else "no layout fits: lower batch.micro_batch, use more GPUs, or larger ones"
    )
    need = math.ceil(plan.chosen.memory.total / GIB)
    return [
        f"the configured layout ({plan.chosen.name}) needs about {need} GiB per GPU, more than "
        f"{HEADROOM:.0%} of {_gib(plan.gpu_memory)} GiB; {alternative}"
    ]
