"""Cross-entropy over the LM head without materialising the full logits.

With a 50k vocabulary the float32 logits of a 48 x 1024 micro-batch take 10 GB, more than the
whole 180M model's activations. Computing the head and the loss a chunk of tokens at a time, and
the gradients in the same pass, keeps that to one chunk. Each chunk's logits are touched as few
times as possible: one float32 log-softmax gives the loss (a gather) and, exponentiated in place,
the softmax whose one-hot-corrected value is the gradient; the 1/n of the mean is applied to the
small matmul outputs rather than to the [chunk, vocab] gradient.

Reductions follow `F.cross_entropy`: "mean" (training), "sum", and "none", the float32 loss of
every token for scoring (evaluation, padded batches whose padding is dropped afterwards). "none"
has no backward: its gradient would need each token's output gradient, so the logits would have
to be recomputed in backward; it is refused rather than half supported.
"""

from __future__ import annotations

from typing import Literal

import torch

CHUNK_TOKENS = 8192

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "none")


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The matmul dtype autocast would pick on this device, else the input's own."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def _chunk(
    h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, with_grads: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token float32 losses of one chunk and, if asked, d(summed loss)/d(logits)."""
    log_probs = torch.log_softmax(h @ w.T, dim=-1, dtype=torch.float32)
    token_losses = -log_probs.gather(1, targets).squeeze(1)
    if not with_grads:
        return token_losses, None
    minus_one = log_probs.new_full(targets.shape, -1.0)
    return token_losses, log_probs.exp_().scatter_add_(1, targets, minus_one).to(h.dtype)


def _loss_and_grads(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype,
    grad_scale: float | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-token losses [tokens] and, if `grad_scale` is given, the gradients of their sum times it.

    A grad_scale of 1/tokens gives the gradients of the mean, 1 those of the sum.
    """
    n_tokens = hidden.shape[0]
    with_grads = grad_scale is not None
    w = weight.to(dtype)
    token_losses = torch.empty(n_tokens, dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if with_grads else None
    grad_weight = torch.empty_like(weight, dtype=torch.float32) if with_grads else None
    for start in range(0, n_tokens, CHUNK_TOKENS):
        rows = slice(start, start + CHUNK_TOKENS)
        h = hidden[rows].to(dtype)
        token_losses[rows], grad_logits = _chunk(h, w, targets[rows, None], with_grads)
        if grad_scale is None or grad_logits is None or grad_hidden is None or grad_weight is None:
            continue
        grad_hidden[rows] = (grad_logits @ w).mul_(grad_scale)
        chunk_grad_weight = (grad_logits.T @ h).float()
        if start == 0:
            torch.mul(chunk_grad_weight, grad_scale, out=grad_weight)
        else:
            grad_weight.add_(chunk_grad_weight, alpha=grad_scale)
    return token_losses, grad_hidden, grad_weight


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed loss times `scale` (1/tokens for the mean, 1 for the sum), gradients in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, dtype, scale):
        token_losses, grad_hidden, grad_weight = _loss_and_grads(
            hidden, weight, targets, dtype, scale
        )
        assert grad_weight is not None, "a grad_scale was given, so the gradients were computed"
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return token_losses.sum() * scale

    @staticmethod
    def backward(ctx, grad_output):
        """Scale the gradients computed in forward in place: no second [vocab, d] tensor.

        In place is safe because each is used once; a second backward through the same graph
        would see them already scaled, so it is refused.
        """
        if getattr(ctx, "consumed", False):
            raise RuntimeError("linear_cross_entropy supports one backward per forward")
        ctx.consumed = True
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden.mul_(grad_output), grad_weight.mul_(grad_output), None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T` against `targets` ([tokens, d] x [vocab, d]).

    "mean" and "sum" give a float32 scalar with gradients; "none" gives the float32 loss of each
    token, shape [tokens], in the order of `hidden`, and refuses inputs that require grad (call
    it under `torch.no_grad()`). Every target must be a valid class index: there is no
    `ignore_index`, so padded positions need some valid id and are dropped by the caller.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    dtype = _compute_dtype(hidden)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(hidden.device.type, enabled=False):
        if reduction == "none":
            if needs_grad:
                raise RuntimeError(
                    "linear_cross_entropy(reduction='none') gives per-token losses for scoring "
                    "and has no backward; call it under torch.no_grad() or torch.inference_mode()"
                )
            return _loss_and_grads(hidden, weight, targets, dtype, None)[0]
        if needs_grad:
            scale = 1.0 / hidden.shape[0] if reduction == "mean" else 1.0
            return _LinearCrossEntropy.apply(hidden, weight, targets, dtype, scale)
        token_losses = _loss_and_grads(hidden, weight, targets, dtype, None)[0]
        return token_losses.mean() if reduction == "mean" else token_losses.sum()
