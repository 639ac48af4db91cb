"""Hard-concrete gates against their closed forms (Louizos et al. 2018, eq. 12 and after)."""

from __future__ import annotations

import math

import pytest
import torch

from layerwise.nn.gates import (
    HIGH,
    LOW,
    TEMPERATURE,
    HardConcreteGate,
    expected_gates,
    initial_log_alpha,
    mean_gates,
    prob_nonzero,
    sample_gates,
)

LOG_ALPHAS = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0, 4.0])


def closed_form_zero(log_alpha: float) -> float:
    """P(gate == 0) = sigmoid(beta * log(-gamma / zeta) - log_alpha)."""
    return 1 / (1 + math.exp(-(TEMPERATURE * math.log(-LOW / HIGH) - log_alpha)))


def closed_form_one(log_alpha: float) -> float:
    """P(gate == 1) = sigmoid(log_alpha - beta * log((1 - gamma) / (zeta - 1)))."""
    return 1 / (1 + math.exp(-(log_alpha - TEMPERATURE * math.log((1 - LOW) / (HIGH - 1)))))


def draws(n: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.stack([sample_gates(LOG_ALPHAS) for _ in range(n)])


def test_a_gate_is_exactly_zero_and_exactly_one_as_often_as_the_closed_forms_say() -> None:
    samples = draws(40_000)
    for k, log_alpha in enumerate(LOG_ALPHAS.tolist()):
        zero = (samples[:, k] == 0).float().mean().item()
        one = (samples[:, k] == 1).float().mean().item()
        # binomial standard error at 40k draws is at most 0.0025
        assert zero == pytest.approx(closed_form_zero(log_alpha), abs=0.01)
        assert one == pytest.approx(closed_form_one(log_alpha), abs=0.01)
    assert prob_nonzero(LOG_ALPHAS).tolist() == pytest.approx(
        [1 - closed_form_zero(a) for a in LOG_ALPHAS.tolist()], abs=1e-6
    )


def test_the_mean_gate_is_the_mean_of_the_draws_and_samples_stay_in_the_unit_interval() -> None:
    samples = draws(40_000)
    assert samples.min() >= 0 and samples.max() <= 1
    assert mean_gates(LOG_ALPHAS).tolist() == pytest.approx(samples.mean(0).tolist(), abs=0.01)


def test_gradients_reach_log_alpha_through_a_sample() -> None:
    log_alpha = torch.zeros(8, requires_grad=True)
    torch.manual_seed(1)
    sample_gates(log_alpha).sum().backward()
    assert log_alpha.grad is not None and log_alpha.grad.abs().sum() > 0


def test_a_new_gate_is_open_with_the_asked_probability() -> None:
    assert prob_nonzero(torch.tensor(initial_log_alpha(0.9))).item() == pytest.approx(0.9)


def test_a_fixed_gate_is_exactly_zero_or_one_in_training_and_in_evaluation() -> None:
    gate = HardConcreteGate(6, init_keep=0.5, lr=0.1)
    kept = torch.tensor([True, False, True, True, False, False])
    gate.fix(kept)
    assert gate.is_fixed() and not gate.log_alpha.requires_grad
    torch.manual_seed(2)
    for mode in (True, False):
        gate.train(mode)
        for _ in range(50):
            assert gate().tolist() == kept.float().tolist()
    assert expected_gates(gate.log_alpha).tolist() == kept.float().tolist()
