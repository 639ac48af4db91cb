"""One forward pass that records what every block reads, adds and writes.

The block loop's observer gives each block's residual stream in and out; forward hooks on the
modules whose outputs join the residual stream give the attention and FFN updates separately.
Which modules those are depends on the norm order: with the reordered norm (OLMo2) the update
is the norm's output, with the pre-norm it is the sub-layer's own output. Hooks are fine here:
the analysed model is a loaded, unwrapped and uncompiled one, run once per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from layerwise.nn.model import Block, Transformer

FIRST_POSITION = 1
"""Token statistics leave out position 0, whose outlier norms dominate similarity measures."""


@dataclass
class BatchStates:
    """The residual stream of one batch of windows, detached, each [batch, seq, d_model]."""

    inputs: list[torch.Tensor] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    attn_updates: list[torch.Tensor] = field(default_factory=list)
    ffn_updates: list[torch.Tensor] = field(default_factory=list)
    final: torch.Tensor | None = None
    """The final norm's output, the LM head's input."""


def update_modules(block: Block) -> tuple[nn.Module, nn.Module]:
    """The modules whose outputs are added to the residual stream: (attention's, FFN's)."""
    if block.reordered:
        return block.attention_norm, block.ffn_norm
    return block.attention, block.ffn


@contextmanager
def recording_outputs(modules: list[nn.Module], into: list[torch.Tensor]) -> Iterator[None]:
    """Append each module's detached output to `into`, in call order, while the block is open."""

    def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        into.append(output.detach())

    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def collect_states(model: Transformer, tokens: torch.Tensor) -> BatchStates:
    """Run `tokens` [batch, seq] through `model` once and keep every block's states."""
    states = BatchStates()

    def observer(_index: int, block_input: torch.Tensor, block_output: torch.Tensor) -> None:
        states.inputs.append(block_input.detach())
        states.outputs.append(block_output.detach())

    attn, ffn = zip(*(update_modules(cast(Block, block)) for block in model.blocks), strict=True)
    with (
        recording_outputs(list(attn), states.attn_updates),
        recording_outputs(list(ffn), states.ffn_updates),
    ):
        states.final = model.hidden_states(tokens, observer).detach()
    return states


def token_rows(x: torch.Tensor) -> torch.Tensor:
    """[batch, seq, d] -> [tokens, d] without position 0, for token statistics."""
    return x[:, FIRST_POSITION:].flatten(0, 1)


def accumulate(total: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
    """`total + values` in float64 on the values' device: running sums stay where the model
    runs, so no batch waits on a copy to the host."""
    values = values.double()
    return values.clone() if total is None else total.add_(values)


@torch.no_grad()
def continue_from(model: Transformer, x: torch.Tensor, start: int) -> torch.Tensor:
    """The final-norm output when `x` enters the block loop at block `start` (may be past the
    end): how the model continues from a residual state, e.g. with a block skipped."""
    seq = x.shape[1]
    cos, sin = model.rope_cos[:seq], model.rope_sin[:seq]
    for block in model.blocks[start:]:
        x = block(x, cos, sin)
    return model.final_norm(x)
