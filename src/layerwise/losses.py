"""Cross-entropy over the LM head without materialising the full logits.

With a 50k vocabulary the float32 logits of a 48 x 1024 micro-batch take 10 GB, more than the
whole 180M model's activations. Computing the head and the loss a chunk of tokens at a time, and
the gradients in the same pass, keeps that to one chunk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_TOKENS = 8192


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would pick on this device, else the input's own."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def _chunk_loss_and_grads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype,
    with_grads: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Summed loss over all tokens and, if asked, d(mean loss)/d(hidden) and d(mean loss)/d(weight)."""
    n_tokens = hidden.shape[0]
    w = weight.to(dtype)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if with_grads else None
    grad_weight = torch.zeros_like(weight, dtype=torch.float32) if with_grads else None
    for start in range(0, n_tokens, CHUNK_TOKENS):
        h = hidden[start : start + CHUNK_TOKENS].to(dtype)
        t = targets[start : start + CHUNK_TOKENS]
        logits = (h @ w.T).float()
        total += F.cross_entropy(logits, t, reduction="sum")
        if with_grads:
            grad_logits = logits.softmax(dim=-1)
            grad_logits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            grad_logits = (grad_logits / n_tokens).to(dtype)
            grad_hidden[start : start + CHUNK_TOKENS] = (grad_logits @ w).to(hidden.dtype)
            grad_weight += (grad_logits.T @ h).float()
    return total, grad_hidden, grad_weight


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype):  # type: ignore[override]
        total, grad_hidden, grad_weight = _chunk_loss_and_grads(
            hidden, weight, targets, dtype, True
        )
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / hidden.shape[0]

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets` ([tokens, d] x [vocab, d])."""
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(hidden, weight, targets, dtype)
        total, _, _ = _chunk_loss_and_grads(hidden, weight, targets, dtype, False)
        return total / hidden.shape[0]
