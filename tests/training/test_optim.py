"""Weight-decay groups and learning-rate schedules."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from torch import nn

from layerwise.config.schema import OptimConfig
from layerwise.nn.model import Transformer
from layerwise.profiles.shape import LayerSpec, ModelShape
from layerwise.training.optim import build_optimizer, lr_at, param_groups


def tiny_model(tie: bool = False) -> Transformer:
    layer = LayerSpec(d_ffn=64, n_heads=2, n_kv_heads=1)
    shape = ModelShape(
        d_model=32, head_dim=16, vocab_size=64, layers=(layer, layer), tie_embeddings=tie
    )
    return Transformer(shape)


@pytest.mark.parametrize("tie", [False, True])
def test_only_linear_weights_decay(tie: bool) -> None:
    model = tiny_model(tie)
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)} - {
        id(model.embedding.weight)
    }
    assert {id(p) for p in decay["params"]} == linear_weights
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(model.embedding.weight) in no_decay_ids
    assert all(id(m.weight) in no_decay_ids for m in model.modules() if isinstance(m, nn.RMSNorm))
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_biases_do_not_decay_and_wrappers_do_not_matter() -> None:
    wrapped = nn.Sequential(nn.Linear(4, 4, bias=True), nn.LayerNorm(4))
    decay, no_decay = param_groups(wrapped, weight_decay=0.1)
    assert [p is wrapped[0].weight for p in decay["params"]] == [True]
    assert {id(p) for p in no_decay["params"]} == {
        id(wrapped[0].bias),
        id(wrapped[1].weight),
        id(wrapped[1].bias),
    }


def test_build_optimizer_uses_the_config() -> None:
    config = OptimConfig(lr=1e-3, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.05)
    optimizer = build_optimizer(tiny_model(), config, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert optimizer.defaults["betas"] == (0.8, 0.9) and optimizer.defaults["eps"] == 1e-6


def schedule(name: str, total: int = 100, **changes: float) -> list[float]:
    config = dataclasses.replace(
        OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, schedule=name), **changes
    )
    return [lr_at(step, total, config) for step in range(total)]


@pytest.mark.parametrize("name", ["cosine", "constant", "wsd"])
def test_warmup_is_linear_up_to_the_peak(name: str) -> None:
    lrs = schedule(name)
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lrs[10] == pytest.approx(1.0)


def test_cosine_decays_to_the_minimum_on_the_last_step() -> None:
    lrs = schedule("cosine", total=101)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[55] == pytest.approx(0.55)
    assert lrs[-1] == pytest.approx(0.1)


def test_constant_stays_at_the_peak() -> None:
    assert schedule("constant")[10:] == [1.0] * 90


def test_wsd_is_stable_then_decays_linearly() -> None:
    lrs = schedule("wsd", decay_fraction=0.2)
    assert lrs[10:80] == [1.0] * 70
    assert lrs[80:] == pytest.approx([1.0 - 0.9 * (i + 1) / 20 for i in range(20)])
    assert lrs[-1] == pytest.approx(0.1)
