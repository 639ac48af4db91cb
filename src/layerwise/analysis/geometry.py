"""How much each block writes into the residual stream, and the shape of what it leaves there.

Update ratios set the size of a sub-layer's update against the stream it is added to: a block
whose ratios are tiny barely changes the representation, whatever its width. Effective rank
(Roy & Vetterli 2007: exp of the entropy of the normalised singular values of the centred
states) says how many directions the states really use; anisotropy (mean cosine of random token
pairs) says how much they crowd into a common direction. Both come from running sums, so memory
does not grow with the number of windows: the [d x d] second moments give the singular values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layerwise.analysis.collect import BatchStates, accumulate, token_rows


class UpdateRatios:
    """Per-layer sums of ||attn(x)|| / ||x|| and ||ffn(h)|| / ||h|| per token, h = x + attn(x)."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        """[2, n_layers]: summed attention ratios, summed FFN ratios."""
        self.tokens = 0

    @torch.no_grad()
    def update(self, states: BatchStates) -> None:
        sums = []
        for layer, block_input in enumerate(states.inputs):
            x = token_rows(block_input).float()
            attn = token_rows(states.attn_updates[layer]).float()
            ffn = token_rows(states.ffn_updates[layer]).float()
            attn_ratio = attn.norm(dim=-1) / x.norm(dim=-1)
            ffn_ratio = ffn.norm(dim=-1) / (x + attn).norm(dim=-1)
            sums.append(torch.stack([attn_ratio.double().sum(), ffn_ratio.double().sum()]))
        self.sums = accumulate(self.sums, torch.stack(sums, dim=1))
        self.tokens += token_rows(states.inputs[0]).shape[0]

    def result(self) -> dict[str, list[float]]:
        assert self.sums is not None, "no batches were added"
        attn, ffn = (self.sums / self.tokens).cpu()
        return {"attn_update_ratio": attn.tolist(), "ffn_update_ratio": ffn.tolist()}


class Geometry:
    """Per-layer second moments (for effective rank) and sampled pair cosines (anisotropy)."""

    def __init__(self) -> None:
        self.moment: torch.Tensor | None = None
        """[n_layers, d, d]: summed outer products of the states."""
        self.total: torch.Tensor | None = None
        """[n_layers, d]: summed states."""
        self.cosine: torch.Tensor | None = None
        """[n_layers]: summed cosines of the sampled pairs."""
        self.tokens = 0
        self.pairs = 0

    @torch.no_grad()
    def update(self, outputs: list[torch.Tensor], sample: torch.Tensor) -> None:
        """Add a batch's block outputs; pairs are drawn from the token indices `sample`
        (already in random order: its two halves are paired)."""
        half = sample.numel() // 2
        first, second = sample[:half], sample[half : 2 * half]
        rows = [token_rows(out).float() for out in outputs]
        self.moment = accumulate(self.moment, torch.stack([x.T @ x for x in rows]))
        self.total = accumulate(self.total, torch.stack([x.sum(0) for x in rows]))
        cosines = [F.cosine_similarity(x[first], x[second], dim=-1).sum() for x in rows]
        self.cosine = accumulate(self.cosine, torch.stack(cosines))
        self.tokens += token_rows(outputs[0]).shape[0]
        self.pairs += half

    def result(self) -> dict[str, list[float]]:
        assert self.moment is not None and self.total is not None and self.cosine is not None
        mean = self.total / self.tokens
        covariance = self.moment / self.tokens - mean[:, :, None] * mean[:, None, :]
        return {
            "effective_rank": [effective_rank(c) for c in covariance],
            "anisotropy": (self.cosine / max(self.pairs, 1)).tolist(),
        }


def effective_rank(covariance: torch.Tensor) -> float:
    """exp(entropy) of the singular values of the states, normalised to sum to one; the
    singular values are the square roots of the covariance's eigenvalues (up to a constant)."""
    singular = torch.linalg.eigvalsh(covariance).clamp(min=0).sqrt()
    total = singular.sum()
    if total == 0:
        return 0.0
    p = singular / total
    return torch.exp(-torch.special.xlogy(p, p).sum()).item()
