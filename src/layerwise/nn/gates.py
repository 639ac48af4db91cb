"""Hard-concrete gates (Louizos, Welling & Kingma 2018): learnable on/off switches for units of
a layer's width, the L0 relaxation Sheared-LLaMA prunes FFN channels and attention heads with.

A gate's value is a stretched, clipped binary-concrete sample: exactly 0 or exactly 1 with
positive probability, anything in between otherwise, and differentiable in its `log_alpha`.
So the probability that a unit is in use, and with it a model's expected size, is a smooth
function of the gates that a constraint can push towards a budget.

A gate stands for a *unit* of channels (a block of `ffn_divisor` FFN channels, or one GQA group
of query heads and their key/value head), so that any pattern of open gates is a layer our
rounding rules allow. `fix` ends the learning: every gate becomes exactly 0 or 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOW, HIGH = -0.1, 1.1
"""The stretch interval (gamma, zeta): the concrete sample is stretched onto it and clipped to
[0, 1], which puts probability mass on exactly 0 and exactly 1."""
TEMPERATURE = 2 / 3
"""beta of the binary concrete, Louizos et al.'s choice and Sheared-LLaMA's."""
SATURATED = 1e4
"""A log_alpha whose samples are exactly 1 (its negative: exactly 0) whatever the noise."""
CONTROL_BETAS = (0.5, 0.999)
"""AdamW betas of the gates and of the multipliers that steer them: little momentum, so the size
answers the constraint within a few steps. With the usual 0.9 the size lags ~10 steps behind
and, on the tests' tiny run, overshot its target by 20-50% and oscillated; with 0.5 it settled
within 0.4% (measured)."""
_NOISE_EPS = 1e-6
"""Keeps the uniform noise off 0 and 1, where its logit is infinite."""


def prob_nonzero(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(gate > 0), in closed form: 1 - sigmoid(beta * log(-gamma / zeta) - log_alpha)."""
    return torch.sigmoid(log_alpha - TEMPERATURE * math.log(-LOW / HIGH))


def _stretch(s: torch.Tensor) -> torch.Tensor:
    return (s * (HIGH - LOW) + LOW).clamp(0.0, 1.0)


def sample_gates(log_alpha: torch.Tensor) -> torch.Tensor:
    """One draw of every gate (reparameterised, so gradients reach `log_alpha`)."""
    u = torch.rand_like(log_alpha).clamp(_NOISE_EPS, 1 - _NOISE_EPS)
    return _stretch(torch.sigmoid((u.log() - (-u).log1p() + log_alpha) / TEMPERATURE))


def expected_gates(log_alpha: torch.Tensor) -> torch.Tensor:
    """The gates' test-time value (Louizos et al.'s estimator): the noise at its median."""
    return _stretch(torch.sigmoid(log_alpha))


MEAN_GRID = 1024
"""Quantiles of the noise the mean of a gate is taken over (midpoint rule): deterministic, and
within 1e-3 of the exact integral."""


def mean_gates(log_alpha: torch.Tensor) -> torch.Tensor:
    """E[gate]: what a unit contributes on average while its gate is sampled."""
    u = (torch.arange(MEAN_GRID, dtype=log_alpha.dtype, device=log_alpha.device) + 0.5) / MEAN_GRID
    noise = u.log() - (-u).log1p()
    return _stretch(torch.sigmoid((noise + log_alpha.unsqueeze(-1)) / TEMPERATURE)).mean(-1)


def initial_log_alpha(keep: float) -> float:
    """The log_alpha whose gate is nonzero with probability `keep`."""
    return math.log(keep / (1 - keep)) + TEMPERATURE * math.log(-LOW / HIGH)


class HardConcreteGate(nn.Module):
    """`n_units` gates: sampled in training, their expected value in evaluation.

    `optimizer_group` gives the gates their own AdamW group (layerwise.training.optim): a
    constant learning rate, no weight decay (they are switches, not weights), little momentum.
    """

    def __init__(self, n_units: int, init_keep: float, lr: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.full((n_units,), initial_log_alpha(init_keep)))
        self.optimizer_group = {
            "name": "gates",
            "lr": lr,
            "betas": CONTROL_BETAS,
            "weight_decay": 0.0,
            "fixed_lr": True,
        }

    @property
    def n_units(self) -> int:
        return self.log_alpha.numel()

    def reset_parameters(self) -> None:
        """Tiny noise around the initial value (drawn on the CPU, from the seeded generator),
        so that the units of one layer can be told apart."""
        with torch.no_grad():
            self.log_alpha.add_(torch.randn(self.n_units).to(self.log_alpha.device) * 0.01)

    def forward(self) -> torch.Tensor:
        """The gates' values, shape [n_units], in [0, 1]."""
        if self.training:
            return sample_gates(self.log_alpha)
        return expected_gates(self.log_alpha)

    def prob_nonzero(self) -> torch.Tensor:
        return prob_nonzero(self.log_alpha)

    def keep_order(self) -> torch.Tensor:
        """Units from most to least wanted (ties: the lower index first)."""
        return torch.argsort(self.log_alpha.detach(), descending=True, stable=True)

    @torch.no_grad()
    def fix(self, kept: torch.Tensor) -> None:
        """Every gate exactly 1 for the units `kept` (a boolean mask), exactly 0 for the rest,
        and no more learning: the gated layer is now the narrower layer it stands for."""
        self.log_alpha.copy_(torch.where(kept, SATURATED, -SATURATED))
        self.log_alpha.requires_grad_(False)

    def is_fixed(self) -> bool:
        return bool((self.log_alpha.detach().abs() >= SATURATED).all())
