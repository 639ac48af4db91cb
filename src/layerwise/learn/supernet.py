"""The gated supernet: every layer at the widest shape, a hard-concrete gate on each block of
FFN channels and each GQA group, and the Lagrangian that drives its expected size to a target.

The loss it trains on is the language-model loss plus `lambda1 * r + lambda2 * r**2`, r the
expected size's relative gap to the target; the multipliers rise by gradient ascent on the same
term (`LagrangeMultipliers`), so the constraint tightens until it holds (Sheared-LLaMA, Xia et
al. 2023). The reported loss is the language-model loss alone: the term joins the gradient,
not the number.

`fix` ends the learning: in each layer the expected number of open gates, rounded, are kept
(most wanted first), each kept unit's mean gate is folded into the weights it feeds, and every
gate becomes exactly 0 or 1. From then on the supernet computes exactly the narrower model
`narrow_model` builds from `kept_shape`, its kept weights copied in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import cast

import torch
from torch import nn

from layerwise.learn.budget import UnitCosts, rounded_counts
from layerwise.nn.gates import CONTROL_BETAS, HardConcreteGate, mean_gates
from layerwise.nn.losses import Reduction
from layerwise.nn.model import (
    Attention,
    Block,
    Observer,
    RMSNorm,
    SwiGLU,
    Transformer,
    per_channel,
)
from layerwise.profiles.shape import BlockOptions, LayerSpec, ModelShape


class LagrangeMultipliers(nn.Module):
    """lambda1 and lambda2, raised by gradient *ascent*: their gradient is negated before the
    optimizer sees it, so AdamW (in a group of their own, at a constant rate) climbs it, as
    Sheared-LLaMA's multipliers do."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.values = nn.Parameter(torch.zeros(2))
        self.values.register_hook(torch.neg)
        self.optimizer_group = {
            "name": "lagrange",
            "lr": lr,
            "betas": CONTROL_BETAS,
            "weight_decay": 0.0,
            "fixed_lr": True,
        }


class GatedTransformer(Transformer):
    """The supernet: a `Transformer` of the widest shape whose blocks carry gates."""

    def __init__(
        self,
        shape: ModelShape,
        options: BlockOptions,
        costs: UnitCosts,
        init_keep: float,
        gate_lr: float,
        lambda_lr: float,
    ) -> None:
        super().__init__(shape, options)
        self.costs = costs
        # plain lists: the gates are registered once, inside their blocks
        blocks = [cast(Block, block) for block in self.blocks]
        self.ffns: list[SwiGLU] = [block.ffn for block in blocks]
        self.attentions: list[Attention] = [block.attention for block in blocks]
        for ffn, attention, layer in zip(self.ffns, self.attentions, shape.layers, strict=True):
            ffn.gate = HardConcreteGate(layer.d_ffn // costs.ffn_channels, init_keep, gate_lr)
            attention.gate = HardConcreteGate(layer.n_kv_heads, init_keep, gate_lr)
        for gate in self.gates():
            gate.reset_parameters()
        self.lagrange = LagrangeMultipliers(lambda_lr)
        self.target = float(costs.fixed)
        """The constraint's target for the next step, set by the ShapeLearning callback."""
        self.constrained = True
        """False once the gates are fixed: no constraint, nothing left to learn in them."""

    def gates(self) -> Iterator[HardConcreteGate]:
        """Every layer's FFN gate, then every layer's attention gate."""
        for module in (*self.ffns, *self.attentions):
            assert isinstance(module.gate, HardConcreteGate)
            yield module.gate

    def layer_gates(self) -> list[tuple[HardConcreteGate, HardConcreteGate]]:
        """(FFN gate, attention gate) of each layer."""
        gates = list(self.gates())
        return list(zip(gates[: self.shape.n_layers], gates[self.shape.n_layers :], strict=True))

    def expected_units(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Expected open FFN units and GQA groups of each layer, shape [n_layers] each."""
        pairs = self.layer_gates()
        ffn = torch.stack([f.prob_nonzero().sum() for f, _ in pairs])
        heads = torch.stack([a.prob_nonzero().sum() for _, a in pairs])
        return ffn, heads

    def expected_size(self) -> torch.Tensor:
        """E[parameters] (or FLOPs per token): differentiable in every gate."""
        ffn, heads = self.expected_units()
        costs = self.costs
        return costs.fixed + costs.ffn_unit * ffn.sum() + costs.head_group * heads.sum()

    def relative_gap(self) -> torch.Tensor:
        return (self.expected_size() - self.target) / self.target

    def penalty(self) -> torch.Tensor:
        gap, (lambda1, lambda2) = self.relative_gap(), self.lagrange.values
        return lambda1 * gap + lambda2 * gap.square()

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        reduction: Reduction = "mean",
        observer: Observer | None = None,
    ) -> torch.Tensor:
        loss = super().forward(tokens, targets, reduction, observer)
        if not (self.training and self.constrained and targets is not None):
            return loss
        penalty = self.penalty()
        # adds the constraint's gradient and leaves the value (the logged loss) unchanged
        return loss + (penalty - penalty.detach())

    @torch.no_grad()
    def fix(self) -> None:
        """Keep the expected number of open units, rounded so that the size lands nearest the
        target (at least one per layer and kind), the most wanted units of each layer; fold
        their mean gates into the weights they scale; make every gate exactly 0 or 1."""
        modules: list[SwiGLU | Attention] = [*self.ffns, *self.attentions]
        gates = list(self.gates())
        ffn, heads = self.expected_units()
        costs, n = self.costs, self.shape.n_layers
        counts = rounded_counts(
            [float(v) for v in (*ffn, *heads)],
            [gate.n_units for gate in gates],
            [costs.ffn_unit] * n + [costs.head_group] * n,
            costs.fixed,
            self.target,
        )
        for module, gate, count in zip(modules, gates, counts, strict=True):
            weight = scaled_weight(module)
            kept = torch.zeros(gate.n_units, dtype=torch.bool, device=weight.device)
            kept[gate.keep_order()[:count]] = True
            factor = torch.where(kept, mean_gates(gate.log_alpha), 0.0)
            weight.mul_(per_channel(factor, weight.shape[1]).to(weight.dtype))
            gate.fix(kept)
        self.stop_learning()

    def stop_learning(self) -> None:
        """The state after `fix` (also on resuming past it): no constraint, frozen gates."""
        self.constrained = False
        for gate in self.gates():
            gate.log_alpha.requires_grad_(False)
        self.lagrange.values.requires_grad_(False)

    def is_fixed(self) -> bool:
        return all(gate.is_fixed() for gate in self.gates())


def scaled_weight(module: SwiGLU | Attention) -> torch.Tensor:
    """The weight a module's gate scales the input of: the FFN's down or attention's output
    projection, whose columns are the gated channels."""
    return module.w2.weight if isinstance(module, SwiGLU) else module.w_o.weight


def _kept_units(module: SwiGLU | Attention) -> list[int]:
    gate = module.gate
    assert isinstance(gate, HardConcreteGate)
    return [int(i) for i in torch.nonzero(gate.log_alpha > 0).flatten()]


def kept_shape(model: GatedTransformer) -> ModelShape:
    """The widths the fixed gates leave: whole FFN units and GQA groups, so a valid layer."""
    costs, layers = model.costs, []
    for ffn, attention in zip(model.ffns, model.attentions, strict=True):
        groups = len(_kept_units(attention))
        d_ffn = len(_kept_units(ffn)) * costs.ffn_channels
        layers.append(LayerSpec(d_ffn=d_ffn, n_heads=groups * costs.group, n_kv_heads=groups))
    return replace(model.shape, layers=tuple(layers))


def _channels(units: list[int], width: int) -> torch.Tensor:
    """The channel indices of `units`, each `width` channels wide."""
    return torch.cat([torch.arange(u * width, (u + 1) * width) for u in units])


@torch.no_grad()
def narrow_model(model: GatedTransformer) -> Transformer:
    """The plain model of `kept_shape(model)` with the supernet's kept weights copied in: after
    `fix`, it computes what the supernet computes."""
    assert model.is_fixed(), "fix the gates first"
    device = model.lm_head.weight.device
    narrow = Transformer(kept_shape(model), model.options).to(device)
    for name in ("embedding", "final_norm", "lm_head"):
        getattr(narrow, name).weight.copy_(getattr(model, name).weight)
    head_dim, costs = model.shape.head_dim, model.costs
    for index, (ffn, attention) in enumerate(zip(model.ffns, model.attentions, strict=True)):
        source, target = cast(Block, model.blocks[index]), cast(Block, narrow.blocks[index])
        hidden = _channels(_kept_units(ffn), costs.ffn_channels).to(device)
        groups = _kept_units(attention)
        q = _channels(groups, costs.group * head_dim).to(device)
        kv = _channels(groups, head_dim).to(device)
        rows: list[tuple[nn.Linear | RMSNorm, nn.Linear | RMSNorm, torch.Tensor]] = [
            (target.ffn.w1, ffn.w1, hidden),
            (target.ffn.w3, ffn.w3, hidden),
            (target.attention.w_q, attention.w_q, q),
            (target.attention.w_k, attention.w_k, kv),
            (target.attention.w_v, attention.w_v, kv),
            (target.attention.q_norm, attention.q_norm, q),
            (target.attention.k_norm, attention.k_norm, kv),
        ]
        for into, frm, channels in rows:
            into.weight.copy_(frm.weight.index_select(0, channels))
        target.ffn.w2.weight.copy_(ffn.w2.weight.index_select(1, hidden))
        target.attention.w_o.weight.copy_(attention.w_o.weight.index_select(1, q))
        target.attention_norm.weight.copy_(source.attention_norm.weight)
        target.ffn_norm.weight.copy_(source.ffn_norm.weight)
    return narrow
