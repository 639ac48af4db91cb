"""Logit lens: what each layer's residual stream would predict if the model stopped there.

Each block's output is decoded through the model's own final norm and LM head. The loss says how
much of the prediction is formed by that depth; the KL divergence from the final distribution
says how far the layer's guess is from the model's final answer. Full logits are [tokens, vocab]
floats, so they are made a chunk of tokens at a time and never for the whole batch.
"""

from __future__ import annotations

import torch

from layerwise.analysis.collect import accumulate
from layerwise.nn.model import Transformer

CHUNK_TOKENS = 2048
NEAR_FINAL = 0.10
"""A layer 'has formed the prediction' when its loss is within this fraction of the final one."""


class LogitLens:
    """Per-layer sums of next-token loss and KL(final || layer) over every token seen."""

    def __init__(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self.sums: torch.Tensor | None = None
        """[2, n_layers + 1]: losses then KLs, per layer and (last column) of the model."""
        self.tokens = 0

    @torch.no_grad()
    def update(
        self,
        model: Transformer,
        outputs: list[torch.Tensor],
        final: torch.Tensor,
        targets: torch.Tensor,
    ) -> None:
        """Add one batch: block outputs [batch, seq, d] each, final-norm output, targets."""
        weight = model.lm_head.weight
        flat_targets = targets.flatten()
        flat_final = final.flatten(0, 1)
        flat_outputs = [out.flatten(0, 1) for out in outputs]
        sums = torch.zeros(2, self.n_layers + 1, dtype=torch.float64, device=final.device)
        for start in range(0, flat_targets.numel(), CHUNK_TOKENS):
            rows = slice(start, start + CHUNK_TOKENS)
            chunk_targets = flat_targets[rows, None]
            final_lp = torch.log_softmax(flat_final[rows] @ weight.T, dim=-1, dtype=torch.float32)
            sums[0, -1] -= final_lp.gather(1, chunk_targets).sum()
            final_p = final_lp.exp()
            for layer, out in enumerate(flat_outputs):
                decoded = model.final_norm(out[rows]) @ weight.T
                layer_lp = torch.log_softmax(decoded, dim=-1, dtype=torch.float32)
                sums[0, layer] -= layer_lp.gather(1, chunk_targets).sum()
                sums[1, layer] += (final_p * (final_lp - layer_lp)).sum()
        self.sums = accumulate(self.sums, sums)
        self.tokens += flat_targets.numel()

    def result(self) -> dict[str, object]:
        """Mean per-token loss and KL per layer, the model's own loss, the forming layer."""
        assert self.sums is not None, "no batches were added"
        means = (self.sums / self.tokens).cpu()
        loss, final = means[0, :-1].tolist(), means[0, -1].item()
        return {
            "val_loss": final,
            "logit_lens_loss": loss,
            "logit_lens_kl": means[1, :-1].tolist(),
            "first_layer_near_final": first_layer_near(loss, final),
        }


def first_layer_near(losses: list[float], final: float, tolerance: float = NEAR_FINAL) -> int:
    """The first layer whose loss is within `tolerance` (relative) of the final loss."""
    limit = final * (1 + tolerance)
    return next((i for i, loss in enumerate(losses) if loss <= limit), len(losses) - 1)
