"""The chunked LM-head loss equals plain cross-entropy over full logits, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from layerwise import losses


def reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(hidden @ weight.T, targets)


@pytest.mark.parametrize("chunk", [7, 64, 8192])
def test_matches_full_logits_across_chunk_boundaries(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(losses, "CHUNK_TOKENS", chunk)
    torch.manual_seed(0)
    hidden = torch.randn(50, 16, requires_grad=True)
    weight = torch.randn(97, 16, requires_grad=True)
    targets = torch.randint(0, 97, (50,))
    ours = losses.linear_cross_entropy(hidden, weight, targets)
    (ours * 3.0).backward()
    ours_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    theirs = reference(hidden, weight, targets)
    (theirs * 3.0).backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_grads[0], hidden.grad)
    torch.testing.assert_close(ours_grads[1], weight.grad)


def test_without_gradients_gives_the_same_value() -> None:
    torch.manual_seed(1)
    hidden, weight = torch.randn(20, 8), torch.randn(33, 8)
    targets = torch.randint(0, 33, (20,))
    with torch.no_grad():
        torch.testing.assert_close(
            losses.linear_cross_entropy(hidden, weight, targets), reference(hidden, weight, targets)
        )


def test_bf16_autocast_stays_close_and_keeps_fp32_weight_gradients() -> None:
    torch.manual_seed(2)
    hidden = torch.randn(40, 16, requires_grad=True)
    weight = torch.randn(61, 16, requires_grad=True)
    targets = torch.randint(0, 61, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = losses.linear_cross_entropy(hidden, weight, targets)
    loss.backward()
    assert loss.dtype == torch.float32 and weight.grad.dtype == torch.float32
    assert loss.item() == pytest.approx(reference(hidden, weight, targets).item(), rel=2e-2)


def test_a_second_backward_is_refused() -> None:
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(5, 8, requires_grad=True)
    loss = losses.linear_cross_entropy(hidden, weight, torch.tensor([0, 1, 2, 3]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward"):
        loss.backward()
