"""The chunked LM-head loss equals plain cross-entropy over full logits, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from layerwise.nn import losses


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


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("chunk", [7, 8192])
def test_reductions_match_full_logits_in_float32(
    monkeypatch: pytest.MonkeyPatch, reduction: str, chunk: int
) -> None:
    """50 tokens is not a multiple of 7: the last chunk is partial."""
    monkeypatch.setattr(losses, "CHUNK_TOKENS", chunk)
    torch.manual_seed(3)
    hidden, weight = torch.randn(50, 16), torch.randn(97, 16)
    targets = torch.randint(0, 97, (50,))
    with torch.no_grad():
        ours = losses.linear_cross_entropy(hidden, weight, targets, reduction=reduction)  # type: ignore[arg-type]
    theirs = F.cross_entropy(hidden @ weight.T, targets, reduction=reduction)
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_reductions_match_full_logits_under_bf16_autocast(
    monkeypatch: pytest.MonkeyPatch, reduction: str
) -> None:
    monkeypatch.setattr(losses, "CHUNK_TOKENS", 7)
    torch.manual_seed(4)
    hidden, weight = torch.randn(40, 16), torch.randn(61, 16)
    targets = torch.randint(0, 61, (40,))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours = losses.linear_cross_entropy(hidden, weight, targets, reduction=reduction)  # type: ignore[arg-type]
        theirs = F.cross_entropy(hidden @ weight.T, targets, reduction=reduction)
    exact = F.cross_entropy(hidden @ weight.T, targets, reduction=reduction)
    assert ours.dtype == torch.float32
    # The same bf16 matmul and float32 softmax as autocast's own path...
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-4, atol=1e-4)
    # ...and within bf16 rounding of the float32 loss (logits of size ~10, 8 mantissa bits).
    torch.testing.assert_close(ours, exact, rtol=2e-2, atol=0.15)


def test_sum_gradients_match_full_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(losses, "CHUNK_TOKENS", 7)
    torch.manual_seed(5)
    hidden = torch.randn(30, 8, requires_grad=True)
    weight = torch.randn(33, 8, requires_grad=True)
    targets = torch.randint(0, 33, (30,))
    ours = losses.linear_cross_entropy(hidden, weight, targets, reduction="sum")
    ours.backward()
    ours_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    theirs = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_grads[0], hidden.grad)
    torch.testing.assert_close(ours_grads[1], weight.grad)


def test_per_token_losses_refuse_gradients() -> None:
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(5, 8)
    with pytest.raises(RuntimeError, match=r"no_grad"):
        losses.linear_cross_entropy(hidden, weight, torch.tensor([0, 1, 2, 3]), reduction="none")
    with torch.inference_mode():
        per_token = losses.linear_cross_entropy(
            hidden, weight, torch.tensor([0, 1, 2, 3]), reduction="none"
        )
    assert per_token.shape == (4,)


def test_unknown_reduction_is_refused() -> None:
    with pytest.raises(ValueError, match="reduction"):
        losses.linear_cross_entropy(
            torch.randn(2, 4),
            torch.randn(3, 4),
            torch.tensor([0, 1]),
            reduction="max",  # type: ignore[arg-type]
        )
