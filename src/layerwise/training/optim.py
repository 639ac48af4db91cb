"""AdamW with weight decay only where it regularises, and the learning-rate schedules.

The schedule is a pure function of the step, so a resumed run needs nothing but the step to be
back on it, and the trainer sets every step's learning rate itself (no scheduler object to save).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from layerwise.config.schema import OptimConfig, warmup_steps


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: the weights of linear layers decay, everything else does not.

    Decay is decided by the module that owns a parameter, not by its name, so it survives renames
    and wrappers (DDP, FSDP, torch.compile). Embeddings, norms and biases are excluded: decaying
    them pulls rarely seen token vectors and norm gains towards zero for no benefit. A weight
    shared by an embedding and a linear layer (tied LM head) counts as an embedding.

    A module may ask for a group of its own with an `optimizer_group` dict (a `name`, and AdamW
    settings such as `lr` and `weight_decay`; `fixed_lr: True` keeps its `lr` off the schedule,
    see `set_lr`): the gates and multipliers of learned shapes do.
    """
    decay: dict[int, nn.Parameter] = {}
    no_decay: dict[int, nn.Parameter] = {}
    own: dict[str, dict] = {}
    for module in model.modules():
        settings = getattr(module, "optimizer_group", None)
        for param in module.parameters(recurse=False):
            if not param.requires_grad:
                continue
            if settings is not None:
                group = own.setdefault(settings["name"], {**settings, "params": []})
                group["params"].append(param)
            elif isinstance(module, nn.Linear) and param is module.weight:
                decay.setdefault(id(param), param)
            else:
                no_decay.setdefault(id(param), param)
    for key in no_decay:
        decay.pop(key, None)
    return [
        {"params": list(decay.values()), "weight_decay": weight_decay},
        {"params": list(no_decay.values()), "weight_decay": 0.0},
        *own.values(),
    ]


def build_optimizer(
    model: nn.Module, config: OptimConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over the (already parallelised) model; the fused kernel on CUDA."""
    return torch.optim.AdamW(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        fused=True if device.type == "cuda" else None,
    )


def lr_at(step: int, total_steps: int, config: OptimConfig) -> float:
    """Learning rate of the optimizer step with 0-based index `step` out of `total_steps`.

    Linear warmup from lr/warmup to lr, then: `cosine` decays to lr * min_lr_ratio, reached on
    the last step; `constant` stays at lr; `wsd` (warmup-stable-decay) stays at lr until the last
    `decay_fraction` of the run and decays linearly to the minimum over it, so one long run can
    be branched into shorter ones that each end with a full decay.
    """
    peak, warmup = config.lr, warmup_steps(config, total_steps)
    floor = peak * config.min_lr_ratio
    if step < warmup:
        return peak * (step + 1) / warmup
    if config.schedule == "constant":
        return peak
    if config.schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup - 1)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))
    start = wsd_decay_start(total_steps, config)
    if step < start:
        return peak
    progress = (step - start + 1) / (total_steps - start)
    return peak + (floor - peak) * min(progress, 1.0)


def wsd_decay_start(total_steps: int, config: OptimConfig) -> int:
    """First step of WSD's decay: a checkpoint here can branch into a longer run."""
    decay = max(1, round(config.decay_fraction * total_steps))
    return max(warmup_steps(config, total_steps), total_steps - decay)


def branch_steps(total_steps: int, config: OptimConfig) -> frozenset[int]:
    """Steps whose checkpoints are kept whatever `checkpoint.keep` says, so that the run can be
    extended later: WSD's decay start (see layerwise.resume)."""
    if config.schedule == "wsd":
        return frozenset({wsd_decay_start(total_steps, config)})
    return frozenset()


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's `lr` for every group but those that keep their own (`fixed_lr`)."""
    for group in optimizer.param_groups:
        if not group.get("fixed_lr", False):
            group["lr"] = lr
