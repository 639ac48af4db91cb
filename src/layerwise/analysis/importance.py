"""Layer importance: how much the loss rises without a block, and how much a block turns the
residual stream (Block Influence, ShortGPT), and whether the two agree.

Skipping block l reuses the recorded input of block l and runs only the blocks after it, so the
L skip passes of a batch cost about half of L full forward passes. The increase is also given
per million parameters of the block: a wide block is expected to matter more, and this says
whether it matters more than its size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layerwise.analysis.collect import BatchStates, accumulate, continue_from, token_rows
from layerwise.nn.losses import linear_cross_entropy
from layerwise.nn.model import Transformer
from layerwise.profiles.shape import ModelShape, layer_params
from layerwise.util import stats


class LayerImportance:
    """Per-layer sums of the skipped model's token losses and of block input/output cosines."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        """[2, n_layers]: the skipped models' summed losses, summed cosines."""
        self.tokens = 0
        self.cosine_tokens = 0

    @torch.no_grad()
    def update(self, model: Transformer, states: BatchStates, targets: torch.Tensor) -> None:
        flat_targets = targets.flatten()
        sums = []
        for layer, block_input in enumerate(states.inputs):
            hidden = continue_from(model, block_input, layer + 1)
            losses = linear_cross_entropy(
                hidden.flatten(0, 1), model.lm_head.weight, flat_targets, reduction="none"
            )
            cos = F.cosine_similarity(
                token_rows(block_input).float(), token_rows(states.outputs[layer]).float(), dim=-1
            )
            sums.append(torch.stack([losses.double().sum(), cos.double().sum()]))
        self.sums = accumulate(self.sums, torch.stack(sums, dim=1))
        self.tokens += flat_targets.numel()
        self.cosine_tokens += token_rows(states.inputs[0]).shape[0]

    def result(self, val_loss: float, shape: ModelShape) -> dict[str, object]:
        """Skip deltas against `val_loss` (the intact model's loss on the same tokens)."""
        assert self.sums is not None, "no batches were added"
        skip_loss, cosine = self.sums.cpu()
        delta = (skip_loss / self.tokens - val_loss).tolist()
        mparams = [layer_params(shape, layer) / 1e6 for layer in shape.layers]
        influence = (1 - cosine / self.cosine_tokens).tolist()
        return {
            "skip_delta": delta,
            "skip_delta_per_mparam": [d / m for d, m in zip(delta, mparams, strict=True)],
            "block_influence": influence,
            "skip_influence_spearman": spearman(delta, influence),
        }


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation across layers; None where it is undefined (fewer than 3
    layers, where any order is trivially perfect, or a constant list)."""
    return None if len(a) < 3 else stats.spearman(a, b)
