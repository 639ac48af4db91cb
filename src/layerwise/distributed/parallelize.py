"""Wrap a model for training from the outside: activation checkpointing, compilation, DDP/FSDP2.

The model code knows nothing of parallelism; this module applies, in the order that composes
(as torchtitan does), everything that changes how the model runs but not what it computes:

0. the speed levers that change how a block computes (`SpeedOptions`): FP8 matmuls through
   torchao and a pinned attention kernel;
1. activation checkpointing per block, so a block's activations are recomputed in backward;
2. `torch.compile` per block, so each distinct block shape gets its own fused kernels, or of
   the whole model as one graph; the final norm, LM head and chunked loss can be compiled on
   their own as well (`compile_loss`), so they are not an eager island after compiled blocks;
3. data parallelism: DDP around the whole model, or FSDP2's `fully_shard` on every block and
   then on the root, so each block's parameters are gathered just before it runs.

Reduced precision has one mechanism whatever the layout: the trainer's bf16 autocast. FSDP2
keeps float32 parameters (no `param_dtype`), so DDP and FSDP compute the same thing: with a
bf16 `param_dtype` on top of autocast, FSDP would run the residual stream and the norm gains in
bf16 where DDP keeps them in float32. The price is float32 all-gathers (twice the traffic of
bf16), which matters only for models large enough to need sharding at all.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch._dynamo.config as dynamo_config
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from layerwise.distributed.env import DistInfo, is_distributed
from layerwise.nn.model import Attention, AttentionBackend
from layerwise.util.errors import UserError

Strategy = Literal["none", "ddp", "fsdp"]
CompileMode = Literal["blocks", "model"]
CUDA_ONLY_BACKENDS = frozenset({"cudnn", "efficient"})
HALF_ONLY_BACKENDS = frozenset({"flash", "cudnn"})
"""SDPA kernels that have no float32 version on CUDA: they need bf16 autocast there."""
FP8_MIN_CAPABILITY = (8, 9)
"""FP8 tensor cores start with Ada and Hopper (H100: 9.0)."""
FP8_DIM_MULTIPLE = 16
"""torch._scaled_mm needs both dimensions of an FP8 weight to be multiples of 16."""


@dataclass(frozen=True)
class SpeedOptions:
    """How fast a run computes the same model: the `run.*` speed levers, each off by default.

    `compile_mode` matters only when the run compiles; `compile_loss` is implied by a
    whole-model compile, whose graph already holds the loss.
    """

    compile_mode: CompileMode = "blocks"
    compile_loss: bool = False
    attention: AttentionBackend = "auto"
    fp8: bool = False


COMPILE_VARIANTS_PER_SHAPE = 2
"""Compiled graphs one block shape needs: grad enabled or not (training vs evaluation). Input
shapes never change within a run (evaluation pads its last batch), so no spare is needed."""
DEFAULT_RECOMPILE_LIMIT = dynamo_config.recompile_limit
DEFAULT_ACCUMULATED_LIMIT = dynamo_config.accumulated_recompile_limit


def parallelize(
    model: nn.Module,
    dist: DistInfo,
    strategy: Strategy,
    *,
    compile: bool,
    activation_checkpointing: bool,
    speed: SpeedOptions | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """The model ready to train on this rank: wrapped blocks, then the data-parallel wrapper.

    Blocks are replaced in place inside `model.blocks`, so the returned module (the same object
    for "none" and "fsdp", a DDP wrapper for "ddp") shares its parameters with `model`. Every
    step keeps parameter names unchanged, so checkpoints load whatever was switched on. `dtype`
    is the run's autocast dtype (None: float32), which some attention kernels need.

    A single process without a process group trains the unwrapped model even under "ddp" or
    "fsdp": with one rank there is nothing to synchronise, and a config written for a cluster
    still runs on a laptop. Under torchrun, even with one process, the wrapper is applied, so a
    one-GPU torchrun exercises the same code as a cluster.
    """
    speed = speed or SpeedOptions()
    check_strategy(strategy, dist)
    check_speed_options(speed, dist.device, dtype, strategy, compile)
    if speed.fp8:
        convert_to_fp8(model)
    set_attention_backend(model, speed.attention)
    blocks = transformer_blocks(model)
    if activation_checkpointing:
        checkpoint_blocks(blocks)
    whole_model = compile and speed.compile_mode == "model"
    if whole_model:
        compile_model(model)
    elif compile:
        compile_blocks(blocks)
    if speed.compile_loss and not whole_model:
        compile_loss(model, reset=not compile)
    if strategy == "none" or not is_distributed():
        return model
    if strategy == "ddp":
        return wrap_ddp(model, dist)
    return shard_fsdp(model, blocks, dist)


def check_speed_options(
    speed: SpeedOptions,
    device: torch.device,
    dtype: torch.dtype | None,
    strategy: str,
    compile: bool,
) -> None:
    """Refuse, before anything is built, a lever this device or layout cannot run.

    Without this a CUDA-only attention kernel fails on CPU deep inside the first forward pass
    ("No viable backend"), and FP8 fails inside torchao; the message here says what to change.
    """
    if speed.compile_mode not in get_args(CompileMode):
        raise UserError(
            f"unknown run.compile_mode {speed.compile_mode!r}; choose one of "
            f"{', '.join(get_args(CompileMode))}"
        )
    if compile and speed.compile_mode == "model" and strategy == "fsdp":
        raise UserError(
            "run.compile_mode=model does not compose with FSDP2, whose per-block hooks would "
            "break the graph; use run.compile_mode=blocks (the default) with fsdp"
        )
    check_attention_backend(speed.attention, device, dtype)
    if speed.fp8:
        check_fp8(device)


def check_attention_backend(backend: str, device: torch.device, dtype: torch.dtype | None) -> None:
    """The kernel must exist on this device for this dtype: on CPU only auto, flash and math."""
    if backend not in get_args(AttentionBackend):
        raise UserError(
            f"unknown run.attention {backend!r}; choose one of "
            f"{', '.join(get_args(AttentionBackend))}"
        )
    if backend in CUDA_ONLY_BACKENDS and device.type != "cuda":
        raise UserError(
            f"run.attention={backend} is a CUDA kernel and this run is on {device.type}; "
            "use run.attention=auto (or flash or math, which also run on CPU)"
        )
    if device.type == "cuda" and backend in HALF_ONLY_BACKENDS and dtype is None:
        raise UserError(
            f"run.attention={backend} has no float32 kernel on CUDA; use run.precision=bf16 "
            "(or auto) with it, or run.attention=auto"
        )


def check_fp8(device: torch.device) -> None:
    """FP8 training needs torchao and FP8 tensor cores; say which one is missing."""
    if importlib.util.find_spec("torchao") is None:
        raise UserError(
            "run.fp8=true needs torchao: pip install 'layerwise[fp8]' (or run.fp8=false)"
        )
    if device.type != "cuda":
        raise UserError(
            f"run.fp8=true needs a CUDA GPU with FP8 tensor cores (H100/H200, L40, RTX 40xx) "
            f"and this run is on {device.type}; set run.fp8=false"
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise UserError(
            f"run.fp8=true needs compute capability {FP8_MIN_CAPABILITY[0]}."
            f"{FP8_MIN_CAPABILITY[1]} or higher (H100, L40, RTX 40xx); "
            f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}; "
            "set run.fp8=false"
        )


def convert_to_fp8(model: nn.Module) -> None:
    """Swap the blocks' linear layers for torchao's Float8Linear (dynamic scaling), in place.

    Float8Linear subclasses nn.Linear and keeps its `weight`, so parameter names and
    checkpoints are unchanged. The LM head is left alone: the loss reads its weight directly
    and never calls it. Layers whose dimensions are not multiples of 16 stay in bf16, as FP8
    matmuls need them to be.
    """
    from torchao.float8 import convert_to_float8_training

    def wanted(module: nn.Module, name: str) -> bool:
        return (
            name.startswith("blocks.")
            and isinstance(module, nn.Linear)
            and module.in_features % FP8_DIM_MULTIPLE == 0
            and module.out_features % FP8_DIM_MULTIPLE == 0
        )

    convert_to_float8_training(model, module_filter_fn=wanted)


def set_attention_backend(model: nn.Module, backend: AttentionBackend) -> None:
    """Pin every attention layer's SDPA kernel (checked by `check_attention_backend`)."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.backend = backend


def check_strategy(strategy: str, dist: DistInfo) -> None:
    """Refuse a strategy that would silently train the wrong model."""
    if strategy not in get_args(Strategy):
        raise UserError(
            f"unknown parallelism strategy {strategy!r}; choose one of {', '.join(get_args(Strategy))}"
        )
    if strategy == "none" and dist.world_size > 1:
        raise UserError(
            f"parallelism strategy 'none' with {dist.world_size} processes would train "
            f"{dist.world_size} unrelated models; use ddp or fsdp under torchrun"
        )


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The per-layer blocks, the unit of checkpointing, compilation and sharding."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no `blocks` ModuleList to parallelize")
    return blocks


def checkpoint_blocks(blocks: nn.ModuleList) -> None:
    """Recompute each block's activations in backward instead of keeping them.

    PyTorch's non-reentrant checkpoint wrapper is used because it composes with compile and
    FSDP2, and its state-dict hooks hide the wrapper's name, so checkpoints load whether
    activation checkpointing was on or off when they were written.
    """
    for index, block in enumerate(blocks):
        blocks[index] = checkpoint_wrapper(block)


def compile_blocks(blocks: nn.ModuleList) -> None:
    """Compile every block in place, each specialised to its own static weight shapes.

    All blocks share one `forward` code object, and dynamo keeps at most `recompile_limit`
    (default 8) graphs per code object; past it, it logs one warning and runs the remaining
    blocks eagerly for the rest of the run. A layer-wise scaled model has up to one weight shape
    per layer (18 in the study), so the limit is raised to cover every distinct shape in every
    variant it meets. Static shapes are kept (dynamo's default for parameters) because the
    one-off compile per shape is small against a pre-training run, and the specialised kernels
    are faster than one symbolic-shape graph for all layers.

    `Module.compile` rather than `torch.compile(module)` keeps parameter names unchanged, so
    checkpoints are the same with and without compilation.

    Dynamo's caches and counters are process-wide: a second run in the same process (the next
    profile of a comparison, the next search trial) would count its new shapes against the
    first run's graphs and fall back to eager past the limit, biasing its throughput. So every
    call starts from a reset compiler with a limit sized for this model.
    """
    torch._dynamo.reset()
    set_recompile_limit(count_block_shapes(blocks))
    for block in blocks:
        block.compile()


def compile_model(model: nn.Module) -> None:
    """Compile the whole model (embedding, blocks, final norm, head and loss) as one graph.

    The alternative to `compile_blocks`: one graph lets inductor fuse across block boundaries
    and into the loss, at the price of a longer compile that grows with the number of layers.
    Dynamo unrolls the block loop and specialises each block to its own shapes, so a
    layer-wise model needs no raised recompile limit: one graph for training, one for
    evaluation. `Module.compile` keeps parameter names, so checkpoints stay interchangeable.
    """
    torch._dynamo.reset()
    set_recompile_limit(1)
    model.compile()


def compile_loss(model: nn.Module, *, reset: bool) -> None:
    """Compile the model's final norm + LM head + chunked loss (`head_loss`) as one graph.

    The loss's custom autograd function traces without a graph break, so the tail of the
    model fuses like the blocks do instead of running eagerly between them. The chunk size is
    fixed, so the graph is static: one for training, one for evaluation. `reset` starts from a
    fresh compiler when nothing else compiled in this run (compile_blocks resets it otherwise).
    """
    if reset:
        torch._dynamo.reset()
    head_loss = getattr(model, "head_loss", None)
    if head_loss is None:
        raise TypeError(f"{type(model).__name__} has no `head_loss` to compile")
    # nn.Module types attributes as Tensor | Module; this one is the model's method, compiled
    model.head_loss = torch.compile(head_loss, dynamic=False)  # type: ignore[assignment]


def count_block_shapes(blocks: nn.ModuleList) -> int:
    """How many distinct parameter-shape signatures the blocks have (one graph each)."""
    signatures = {tuple(tuple(p.shape) for p in block.parameters()) for block in blocks}
    return len(signatures)


def set_recompile_limit(n_shapes: int) -> None:
    """Let dynamo keep a graph for every block shape of this model (and at least its default)."""
    needed = max(n_shapes * COMPILE_VARIANTS_PER_SHAPE, DEFAULT_RECOMPILE_LIMIT)
    dynamo_config.recompile_limit = needed
    dynamo_config.accumulated_recompile_limit = max(needed, DEFAULT_ACCUMULATED_LIMIT)


def wrap_ddp(model: nn.Module, dist: DistInfo) -> nn.Module:
    """DDP over the whole model; it broadcasts rank 0's weights, so every rank starts equal.

    Gradients are reduced straight from DDP's buckets (no copy), which saves one model's worth
    of gradient memory.
    """
    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)


def shard_fsdp(model: nn.Module, blocks: nn.ModuleList, dist: DistInfo) -> nn.Module:
    """FSDP2 on each block, then on the root (embedding, final norm and LM head).

    Rank 0's weights are broadcast first: FSDP2 shards whatever each rank holds, and ranks that
    initialised with different seeds would otherwise train a mixture. The last block keeps its
    parameters gathered after forward, since backward needs them again at once.
    """
    broadcast_parameters(model)
    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    for index, block in enumerate(blocks):
        fully_shard(block, mesh=mesh, reshard_after_forward=index < len(blocks) - 1)
    fully_shard(model, mesh=mesh)
    return model


def broadcast_parameters(model: nn.Module) -> None:
    """Make every rank hold rank 0's parameters and buffers."""
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(tensor, src=0)


@contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce inside the block when `enabled` is False.

    The trainer wraps every micro-batch but the last of an accumulation step with
    `enabled=False`, so gradients are communicated once per optimizer step instead of once per
    micro-batch. For FSDP2 the flag is restored afterwards, so a forgotten final micro-batch
    can never leave the model unsynchronised.
    """
    if enabled:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
