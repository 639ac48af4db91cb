"""The precision a model computes in: one mechanism (autocast) for training, evaluation, analysis
and generation alike, so a run is scored in the precision it was trained in. FSDP and DDP keep
float32 parameters; autocast decides the matmul dtype."""

from __future__ import annotations

import contextlib

import torch


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; float32 (None) elsewhere unless bf16 is asked for."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
