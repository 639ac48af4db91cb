"""Cross-entropy over the LM head without materialising the full logits.

With a 50k vocabulary the float32 logits of a 48 x 1024 micro-batch take 10 GB, more than the
whole 180M model's activations. Computing the head and the loss a chunk of tokens at a time, and
the gradients in the same pass, keeps that to one chunk. Each chunk's logits are touched as few
times as possible: one float32 log-softmax gives the loss (a gather) and, exponentiated in place,
the softmax whose one-hot-corrected value is the gradient; the 1/n of the mean is applied to the
small matmul outputs rather than to the [chunk, vocab] gradient.
"""

from __future__ import annotations

import torch

CHUNK_TOKENS = 8192


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would pick on this device, else the input's own."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def _chunk(
    h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, with_grads: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed loss of one chunk and, if asked, d(summed loss)/d(logits) in the matmul dtype."""
    log_probs = torch.log_softmax(h @ w.T, dim=-1, dtype=torch.float32)
    loss = -log_probs.gather(1, targets).sum()
    if not with_grads:
        return loss, None
    minus_one = log_probs.new_full(targets.shape, -1.0)
    return loss, log_probs.exp_().scatter_add_(1, targets, minus_one).to(h.dtype)


def _loss_and_grads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype,
    with_grads: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Summed loss over all tokens and, if asked, the gradients of the *mean* loss."""
    n_tokens = hidden.shape[0]
    scale = 1.0 / n_tokens
    w = weight.to(dtype)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if with_grads else None
    grad_weight = torch.empty_like(weight, dtype=torch.float32) if with_grads else None
    for start in range(0, n_tokens, CHUNK_TOKENS):
        rows = slice(start, start + CHUNK_TOKENS)
        h = hidden[rows].to(dtype)
        loss, grad_logits = _chunk(h, w, targets[rows, None], with_grads)
        total += loss
        if grad_logits is None or grad_hidden is None or grad_weight is None:
            continue
        grad_hidden[rows] = (grad_logits @ w).mul_(scale)
        chunk_grad_weight = (grad_logits.T @ h).float()
        if start == 0:
            torch.mul(chunk_grad_weight, scale, out=grad_weight)
        else:
            grad_weight.add_(chunk_grad_weight, alpha=scale)
    return total, grad_hidden, grad_weight


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype):  # type: ignore[override]
        total, grad_hidden, grad_weight = _loss_and_grads(hidden, weight, targets, dtype, True)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / hidden.shape[0]

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        """Scale the gradients computed in forward in place: no second [vocab, d] tensor.

        In place is safe because each is used once; a second backward through the same graph
        would see them already scaled, so it is refused.
        """
        if getattr(ctx, "consumed", False):
            raise RuntimeError("linear_cross_entropy supports one backward per forward")
        ctx.consumed = True
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden.mul_(grad_output), grad_weight.mul_(grad_output), None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets` ([tokens, d] x [vocab, d])."""
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _LinearCrossEntropy.apply(hidden, weight, targets, dtype)
        total, _, _ = _loss_and_grads(hidden, weight, targets, dtype, False)
        return total / hidden.shape[0]
