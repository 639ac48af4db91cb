"""One optimizer step and one validation pass: the work the training loop repeats.

Both run identically on one process or under torchrun (DDP or FSDP2), eager or compiled, in
float32 or under bf16 autocast. Autocast covers the forward pass only; backward runs outside it,
as the AMP recipe prescribes (its ops take the dtypes autocast chose in forward).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor

from layerwise.config.schema import BatchPlan
from layerwise.data.loader import TokenWindows
from layerwise.distributed.env import DistInfo, all_reduce_sum
from layerwise.distributed.parallelize import gradient_sync
from layerwise.nn.precision import autocast
from layerwise.training.optim import set_lr
from layerwise.util.errors import UserError


class NonFiniteLoss(UserError):
    """The loss or gradient norm became NaN or infinite; the run stops before the bad update."""


@dataclass(frozen=True)
class StepResult:
    loss: float
    grad_norm: float
    stop: bool
    """Some rank asked to stop (a signal): every rank stops after this step, together."""


def forward_backward(
    model: nn.Module,
    windows: torch.Tensor,
    plan: BatchPlan,
    device: torch.device,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """Accumulate the gradients of this rank's share of a step; returns its mean loss.

    Each window holds seq_len + 1 tokens: inputs and targets shifted by one. Gradients are
    synchronised across ranks only in the last micro-batch.
    """
    total = torch.zeros((), device=device)
    micro_batches = windows.split(plan.micro_batch)
    for index, micro in enumerate(micro_batches):
        micro = micro.to(device, non_blocking=True)
        last = index == len(micro_batches) - 1
        with gradient_sync(model, enabled=last):
            with autocast(device, dtype):
                loss = model(micro[:, :-1], micro[:, 1:]) / plan.accum_steps
            loss.backward()
        total += loss.detach()
    return total


def clip_gradients(model: nn.Module, max_norm: float | None) -> torch.Tensor:
    """Total gradient norm before clipping; with no limit it is only measured."""
    limit = math.inf if max_norm is None else max_norm
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), limit)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    windows: torch.Tensor,
    plan: BatchPlan,
    *,
    step: int,
    lr: float,
    grad_clip: float | None,
    dtype: torch.dtype | None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> StepResult:
    """One optimizer step on this rank's windows; `step` (1-based) only names it in errors.

    The loss and the stop request (asked after the backward pass, so a signal that arrives
    during this step stops the run after it) are reduced in one collective, which every step
    needs anyway to log the global loss, and read back with the gradient norm in one host
    sync. A non-finite loss or gradient norm raises before the update, so the weights (and any
    checkpoint written later) never hold its result.
    """
    device = next(model.parameters()).device
    set_lr(optimizer, lr)
    loss = forward_backward(model, windows, plan, device, dtype)
    flags = torch.tensor(float(stop_requested()), device=device)
    reduced = all_reduce_sum(torch.stack([loss, flags]))
    norm = clip_gradients(model, grad_clip).reshape(1).to(reduced.dtype)
    summed_loss, stops, grad_norm = torch.cat([reduced, norm]).tolist()
    mean_loss = summed_loss / plan.world_size
    if not (math.isfinite(mean_loss) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(
            f"training diverged at step {step}: loss {mean_loss}, gradient norm {grad_norm}. The "
            "update was not applied; lower optim.lr or raise optim.warmup_steps, then start a "
            "new run"
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=mean_loss, grad_norm=grad_norm, stop=stops > 0)


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for summing losses over many windows; MPS has no float64, so float32 there."""
    return torch.float32 if device.type == "mps" else torch.float64


@torch.no_grad()
def evaluate(
    model: nn.Module,
    windows: TokenWindows,
    indices: np.ndarray,
    micro_batch: int,
    dist: DistInfo,
    dtype: torch.dtype | None,
) -> float:
    """Mean loss per token over the validation windows `indices`, split across ranks.

    Every forward pass has the same shape: a short last batch is padded with repeats of a
    window whose losses are discarded, so a compiled model never recompiles for it, and every
    rank runs the same number of passes, which FSDP's collective parameter gathers need. Sums
    of per-token losses are reduced, not means, so unequal shares weigh correctly.
    """
    mine = np.array_split(indices, dist.world_size)[dist.rank]
    n_batches = math.ceil(math.ceil(len(indices) / dist.world_size) / micro_batch)
    totals = torch.zeros(2, dtype=accumulator_dtype(dist.device), device=dist.device)
    model.eval()
    for b in range(n_batches):
        chunk = mine[b * micro_batch : (b + 1) * micro_batch]
        padded = np.concatenate([chunk, np.repeat(indices[:1], micro_batch - len(chunk))])
        batch = windows.get(padded).to(dist.device)
        with autocast(dist.device, dtype):
            losses = model(batch[:, :-1], batch[:, 1:], reduction="none")
        real = losses.view(micro_batch, -1)[: len(chunk)]
        totals[0] += real.sum().to(totals.dtype)
        totals[1] += real.numel()
    model.train()
    all_reduce_sum(totals)
    return (totals[0] / totals[1]).item()
