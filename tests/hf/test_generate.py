"""Sampling with the KV cache: equal to the full forward, padding-proof, seeded."""

from __future__ import annotations

import pytest
import torch

from layerwise.hf.generate import (
    GREEDY,
    KVCache,
    Sampling,
    forward_cached,
    generate,
    left_pad,
    new_tokens_that_fit,
    past_context_warning,
)
from layerwise.nn.model import Transformer
from layerwise.profiles.shape import BlockOptions, LayerSpec, ModelShape
from layerwise.util.errors import UserError

SHAPE = ModelShape(
    d_model=32,
    head_dim=8,
    vocab_size=96,
    layers=(LayerSpec(48, 4, 2), LayerSpec(96, 6, 3), LayerSpec(64, 2, 1)),
)


def random_model(shape: ModelShape = SHAPE, seed: int = 0) -> Transformer:
    """A tiny model whose norm weights are not all ones, so a misplaced norm shows."""
    torch.manual_seed(seed)
    model = Transformer(shape, BlockOptions(max_seq_len=64))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


@torch.no_grad()
def test_incremental_decoding_equals_the_full_forward() -> None:
    model = random_model()
    tokens = torch.randint(0, 96, (2, 12))
    full = model(tokens)
    cache = KVCache(model, 2, 12)
    valid = torch.ones(2, 12, dtype=torch.bool)
    pieces = [forward_cached(model, tokens[:, :5], torch.arange(5).expand(2, 5), valid, cache)]
    for t in range(5, 12):
        pieces.append(
            forward_cached(model, tokens[:, t : t + 1], torch.full((2, 1), t), valid, cache)
        )
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


def test_a_left_padded_row_decodes_as_it_would_alone() -> None:
    model = random_model()
    short, long = [5, 17, 3], [9, 8, 7, 6, 5, 4, 3]
    alone = generate(model, [short], 10)
    batched = generate(model, [long, short], 10)
    assert batched[1] == alone[0]
    assert batched[0] == generate(model, [long], 10)[0]
    ids, valid = left_pad([long, short], pad_id=0)
    assert ids[1].tolist() == [0] * 4 + short and valid[1].sum() == 3


def test_the_cache_changes_nothing_but_speed() -> None:
    model = random_model()
    assert generate(model, [[1, 2, 3]], 12) == generate(model, [[1, 2, 3]], 12, use_cache=False)


def test_sampling_is_seeded_and_filters() -> None:
    model = random_model()
    hot = Sampling(temperature=1.5, top_p=0.9, seed=4)
    assert generate(model, [[1, 2]], 10, hot) == generate(model, [[1, 2]], 10, hot)
    top1 = Sampling(temperature=2.0, top_k=1, seed=1)
    assert generate(model, [[1, 2]], 10, top1) == generate(model, [[1, 2]], 10, GREEDY)
    limited = generate(model, [[1, 2]], 30, Sampling(temperature=3.0, seed=0, vocab_limit=10))
    assert all(t < 10 for t in limited[0])


def test_generation_stops_after_eos() -> None:
    model = random_model()
    first = generate(model, [[1, 2]], 1)[0][0]
    assert generate(model, [[1, 2]], 10, eos_id=first) == [[first]]
    heard: list[int] = []
    generate(model, [[1, 2]], 5, on_token=heard.append)
    assert len(heard) == 5


@torch.no_grad()
def test_generating_past_the_training_context_is_allowed_with_a_warning() -> None:
    """RoPE positions are a formula: past the 64-token training context the cache path extends
    them, and decodes what the same weights with a longer context compute in full."""
    model = random_model()
    longer = Transformer(SHAPE, BlockOptions(max_seq_len=128)).eval()
    longer.load_state_dict(model.state_dict())
    prompt = torch.randint(0, 96, (60,)).tolist()
    past = generate(model, [prompt], 10)
    assert past == generate(longer, [prompt], 10, use_cache=False) and len(past[0]) == 10
    assert new_tokens_that_fit(model, 60, 10) == 10
    assert "past the model's training context of 64" in str(past_context_warning(model, 60, 10))
    assert past_context_warning(model, 60, 4) is None
    assert new_tokens_that_fit(model, 60, None) == 4


def test_bad_generation_requests_are_refused() -> None:
    model = random_model()
    with pytest.raises(UserError, match="fills the model's training context of 64"):
        generate(model, [[1] * 64], None)
    with pytest.raises(UserError, match="top-p"):
        Sampling(top_p=1.5)
    with pytest.raises(UserError, match="at least one token"):
        generate(model, [[]], 3)
