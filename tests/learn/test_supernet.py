"""The gated supernet: fixed gates compute exactly the narrower model; the constraint adds a
gradient and not a number; the gates and multipliers have their own optimizer groups."""

from __future__ import annotations

import pytest
import torch

from layerwise.learn.budget import unit_costs
from layerwise.learn.supernet import GatedTransformer, kept_shape, narrow_model
from layerwise.profiles.shape import BlockOptions, LayerSpec, ModelShape, total_params
from layerwise.training.optim import param_groups, set_lr

SUPERNET = ModelShape(
    d_model=32, head_dim=8, vocab_size=50, layers=tuple(LayerSpec(128, 6, 3) for _ in range(3))
)


def supernet(norm_order: str = "reordered", tie: bool = False) -> GatedTransformer:
    shape = ModelShape(**{**SUPERNET.__dict__, "tie_embeddings": tie})
    torch.manual_seed(0)
    options = BlockOptions(max_seq_len=16, norm_order=norm_order)  # type: ignore[arg-type]
    return GatedTransformer(shape, options, unit_costs(shape, 16, "params", 16), 0.9, 0.05, 0.05)


def scramble(model: GatedTransformer) -> None:
    """Gates all over the place, as after some learning."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for gate in model.gates():
            gate.log_alpha.copy_(torch.randn(gate.n_units, generator=generator) * 3)


@pytest.mark.parametrize(("norm_order", "tie"), [("reordered", False), ("pre", True)])
def test_fixed_gates_compute_exactly_the_narrow_model_with_the_kept_weights(
    norm_order: str, tie: bool
) -> None:
    model = supernet(norm_order, tie)
    scramble(model)
    model.target = 25_000.0
    tokens = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(2))
    model.eval()
    model.fix()
    narrow = narrow_model(model).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), narrow(tokens), atol=1e-5, rtol=1e-5)
        model.train()  # sampling changes nothing once the gates are fixed
        torch.testing.assert_close(model(tokens), narrow(tokens), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in narrow.parameters()) == total_params(kept_shape(model))


def test_the_kept_shape_is_whole_ffn_blocks_and_whole_gqa_groups_near_the_target() -> None:
    model = supernet()
    scramble(model)
    model.target = model.expected_size().item()  # where the constraint leaves it
    model.fix()
    shape = kept_shape(model)
    for layer in shape.layers:
        assert layer.d_ffn % 16 == 0 and 16 <= layer.d_ffn <= 128
        assert layer.n_heads == 2 * layer.n_kv_heads and 1 <= layer.n_kv_heads <= 3
    step = max(model.costs.ffn_unit, model.costs.head_group)  # the most one unit weighs
    assert abs(total_params(shape) - model.target) <= step


def test_the_constraint_adds_its_gradient_but_not_its_value_to_the_loss() -> None:
    model = supernet()
    model.target = 20_000.0  # far below: the constraint pushes every gate shut
    with torch.no_grad():
        model.lagrange.values.copy_(torch.tensor([2.0, 1.0]))
    tokens = torch.randint(0, 50, (2, 17), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(4)
    loss = model(tokens[:, :-1], tokens[:, 1:])
    torch.manual_seed(4)
    plain = super(GatedTransformer, model).forward(tokens[:, :-1], tokens[:, 1:])
    assert loss.item() == plain.item()
    loss.backward()
    gap = model.relative_gap().item()
    assert gap > 0
    # ascent: the multipliers' gradients arrive negated, so a descent step raises them
    lambdas = model.lagrange.values.grad
    assert lambdas is not None
    assert lambdas.tolist() == pytest.approx([-gap, -gap * gap], rel=1e-5)


def test_gates_and_multipliers_get_their_own_constant_rate_groups() -> None:
    model = supernet()
    groups = param_groups(model, weight_decay=0.1)
    named = {g.get("name"): g for g in groups}
    assert len(named["gates"]["params"]) == 6 and named["gates"]["weight_decay"] == 0.0
    assert named["lagrange"]["params"] == [model.lagrange.values]
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    set_lr(optimizer, 7e-4)
    assert [g["lr"] for g in optimizer.param_groups] == [7e-4, 7e-4, 0.05, 0.05]
