"""The built model is exactly the shape it was given, and its loss is the plain cross-entropy."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from layerwise.model import BlockOptions, Transformer
from layerwise.profiles import PRESETS, ProfileSpec, build_shape, total_params

TINY = ProfileSpec(
    ffn=(0.5, 3.8, 0.5),
    qkv=(0.5, 1.0, 0.5),
    frame=True,
    n_layers=4,
    d_model=64,
    head_dim=16,
    gqa_group=2,
    vocab_size=97,
    ffn_divisor=32,
)


@pytest.mark.parametrize("name", list(PRESETS))
def test_analytic_params_equal_built_model(name: str) -> None:
    shape = build_shape(PRESETS[name])
    with torch.device("meta"):
        model = Transformer(shape)
    assert sum(p.numel() for p in model.parameters()) == total_params(shape)


def test_tied_embeddings_share_one_matrix() -> None:
    shape = build_shape(replace(TINY, tie_embeddings=True))
    model = Transformer(shape)
    assert model.lm_head.weight is model.embedding.weight
    assert sum(p.numel() for p in model.parameters()) == total_params(shape)


def test_blocks_take_their_widths_from_the_shape() -> None:
    shape = build_shape(TINY)
    model = Transformer(shape)
    for block, layer in zip(model.blocks, shape.layers, strict=True):
        assert block.ffn.w1.out_features == layer.d_ffn
        assert block.attention.w_q.out_features == layer.n_heads * shape.head_dim
        assert block.attention.w_k.out_features == layer.n_kv_heads * shape.head_dim


@pytest.mark.parametrize("norm_order", ["reordered", "pre"])
def test_chunked_loss_and_gradients_match_full_logits(norm_order: str) -> None:
    torch.manual_seed(0)
    model = Transformer(build_shape(TINY), BlockOptions(norm_order=norm_order))  # type: ignore[arg-type]
    tokens = torch.randint(0, 97, (3, 17))
    loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    chunked = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(tokens[:, :-1])
    reference = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    for ours, theirs in zip(chunked, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_model_is_causal() -> None:
    torch.manual_seed(0)
    model = Transformer(build_shape(TINY)).eval()
    tokens = torch.randint(0, 97, (1, 12))
    changed = tokens.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 97
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_initial_loss_is_near_uniform() -> None:
    """OLMo2's small init: an untrained model should be close to log(vocab)."""
    torch.manual_seed(0)
    model = Transformer(build_shape(TINY))
    tokens = torch.randint(0, 97, (4, 33))
    with torch.no_grad():
        loss = model(tokens[:, :-1], tokens[:, 1:]).item()
    assert abs(loss - torch.log(torch.tensor(97.0)).item()) < 0.3


def test_bf16_autocast_runs_on_cpu() -> None:
    model = Transformer(build_shape(TINY))
    tokens = torch.randint(0, 97, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    assert torch.isfinite(loss)
    assert (
        model.lm_head.weight.grad is not None and model.lm_head.weight.grad.dtype == torch.float32
    )
