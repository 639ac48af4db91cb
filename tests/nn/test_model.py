"""The built model is exactly the shape it was given, and its loss is the plain cross-entropy."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from layerwise.nn.model import Transformer, causal_attention
from layerwise.profiles.recipes import PRESETS, ProfileSpec, shape_from_spec
from layerwise.profiles.shape import BlockOptions, total_params

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
    shape = shape_from_spec(PRESETS[name])
    with torch.device("meta"):
        model = Transformer(shape)
    assert sum(p.numel() for p in model.parameters()) == total_params(shape)


def test_tied_embeddings_share_one_matrix() -> None:
    shape = shape_from_spec(replace(TINY, tie_embeddings=True))
    model = Transformer(shape)
    assert model.lm_head.weight is model.embedding.weight
    assert sum(p.numel() for p in model.parameters()) == total_params(shape)


def test_blocks_take_their_widths_from_the_shape() -> None:
    shape = shape_from_spec(TINY)
    model = Transformer(shape)
    for block, layer in zip(model.blocks, shape.layers, strict=True):
        assert block.ffn.w1.out_features == layer.d_ffn
        assert block.attention.w_q.out_features == layer.n_heads * shape.head_dim
        assert block.attention.w_k.out_features == layer.n_kv_heads * shape.head_dim


@pytest.mark.parametrize("norm_order", ["reordered", "pre"])
def test_chunked_loss_and_gradients_match_full_logits(norm_order: str) -> None:
    torch.manual_seed(0)
    model = Transformer(shape_from_spec(TINY), BlockOptions(norm_order=norm_order))  # type: ignore[arg-type]
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
    model = Transformer(shape_from_spec(TINY)).eval()
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
    model = Transformer(shape_from_spec(TINY))
    tokens = torch.randint(0, 97, (4, 33))
    with torch.no_grad():
        loss = model(tokens[:, :-1], tokens[:, 1:]).item()
    assert abs(loss - torch.log(torch.tensor(97.0)).item()) < 0.3


def test_bf16_autocast_runs_on_cpu() -> None:
    model = Transformer(shape_from_spec(TINY))
    tokens = torch.randint(0, 97, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    assert torch.isfinite(loss)
    assert (
        model.lm_head.weight.grad is not None and model.lm_head.weight.grad.dtype == torch.float32
    )


def test_per_token_losses_keep_the_batch_layout() -> None:
    """reduction="none" gives [batch * seq] losses, token t of sequence b at b * seq + t."""
    torch.manual_seed(0)
    model = Transformer(shape_from_spec(TINY))
    tokens = torch.randint(0, 97, (3, 17))
    with torch.no_grad():
        per_token = model(tokens[:, :-1], tokens[:, 1:], reduction="none")
        summed = model(tokens[:, :-1], tokens[:, 1:], reduction="sum")
        mean = model(tokens[:, :-1], tokens[:, 1:])
        logits = model(tokens[:, :-1])
        second_alone = model(tokens[1:2, :-1], tokens[1:2, 1:], reduction="none")
    reference = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    assert per_token.shape == (3 * 16,) and per_token.dtype == torch.float32
    torch.testing.assert_close(per_token.view(3, 16), reference)
    torch.testing.assert_close(per_token.view(3, 16)[1], second_alone)
    torch.testing.assert_close(summed, per_token.sum())
    torch.testing.assert_close(mean, per_token.mean())


def test_observer_sees_every_block_and_reproduces_the_logits() -> None:
    torch.manual_seed(0)
    model = Transformer(shape_from_spec(TINY)).eval()
    tokens = torch.randint(0, 97, (2, 11))
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def observer(index: int, block_input: torch.Tensor, block_output: torch.Tensor) -> None:
        seen.append((index, block_input.detach().clone(), block_output.detach().clone()))

    with torch.no_grad():
        logits = model(tokens, observer=observer)
        embedded = model.embedding(tokens)
    assert [index for index, _, _ in seen] == list(range(len(model.blocks)))
    for _, block_input, block_output in seen:
        assert block_input.shape == block_output.shape == (2, 11, model.shape.d_model)
    torch.testing.assert_close(seen[0][1], embedded)
    for (_, _, output), (_, next_input, _) in itertools.pairwise(seen):
        torch.testing.assert_close(next_input, output)
    with torch.no_grad():
        from_last = model.lm_head(model.final_norm(seen[-1][2]))
    torch.testing.assert_close(from_last, logits)


def test_hidden_states_without_observer_is_unchanged() -> None:
    torch.manual_seed(0)
    model = Transformer(shape_from_spec(TINY)).eval()
    tokens = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        plain = model.hidden_states(tokens)
        observed = model.hidden_states(tokens, observer=lambda *_: None)
    torch.testing.assert_close(plain, observed, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_expanded_kv_attention_equals_enable_gqa(dtype: torch.dtype, kv_heads: int) -> None:
    torch.manual_seed(0)
    q = torch.randn(2, 4, 9, 16, dtype=dtype)
    k, v = torch.randn(2, 2, kv_heads, 9, 16, dtype=dtype).unbind(0)
    grouped = causal_attention(q, k, v, expand_kv=False)
    expanded = causal_attention(q, k, v, expand_kv=True)
    assert expanded.shape == grouped.shape == q.shape
    torch.testing.assert_close(expanded, grouped)
