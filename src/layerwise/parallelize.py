"""Wrap a model for training from the outside: activation checkpointing, compilation, DDP/FSDP2.

The model code knows nothing of parallelism; this module applies, in the order that composes
(as torchtitan does), everything that changes how the model runs but not what it computes:

1. activation checkpointing per block, so a block's activations are recomputed in backward;
2. `torch.compile` per block, so each distinct block shape gets its own fused kernels while
   the embedding, LM head and chunked loss stay eager;
3. data parallelism: DDP around the whole model, or FSDP2's `fully_shard` on every block and
   then on the root, so each block's parameters are gathered just before it runs.

Reduced precision has one mechanism whatever the layout: the trainer's bf16 autocast. FSDP2
keeps float32 parameters (no `param_dtype`), so DDP and FSDP compute the same thing: with a
bf16 `param_dtype` on top of autocast, FSDP would run the residual stream and the norm gains in
bf16 where DDP keeps them in float32. The price is float32 all-gathers (twice the traffic of
bf16), which matters only for models large enough to need sharding at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

import torch
import torch._dynamo.config as dynamo_config
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from layerwise.distributed import DistInfo, is_distributed
from layerwise.errors import UserError

Strategy = Literal["none", "ddp", "fsdp"]

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
) -> nn.Module:
    """The model ready to train on this rank: wrapped blocks, then the data-parallel wrapper.

    Blocks are replaced in place inside `model.blocks`, so the returned module (the same object
    for "none" and "fsdp", a DDP wrapper for "ddp") shares its parameters with `model`.

    A single process without a process group trains the unwrapped model even under "ddp" or
    "fsdp": with one rank there is nothing to synchronise, and a config written for a cluster
    still runs on a laptop. Under torchrun, even with one process, the wrapper is applied, so a
    one-GPU torchrun exercises the same code as a cluster.
    """
    check_strategy(strategy, dist)
    blocks = transformer_blocks(model)
    if activation_checkpointing:
        checkpoint_blocks(blocks)
    if compile:
        compile_blocks(blocks)
    if strategy == "none" or not is_distributed():
        return model
    if strategy == "ddp":
        return wrap_ddp(model, dist)
    return shard_fsdp(model, blocks, dist)


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
