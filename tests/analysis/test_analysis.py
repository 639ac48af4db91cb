"""The analysis measures on tiny random models and synthetic features: CKA, logit lens, skips,
attention entropy, geometry, and the shape of every per-layer result."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from layerwise.analysis import AnalysisOptions, analyze_model
from layerwise.analysis.attention import attention_entropy, head_entropy
from layerwise.analysis.cka import Grams, MinibatchCKA, hsic
from layerwise.analysis.geometry import effective_rank
from layerwise.analysis.importance import spearman
from layerwise.analysis.lens import first_layer_near
from layerwise.analysis.outputs import distinct_runs
from layerwise.nn.model import Transformer
from layerwise.profiles.shape import BlockOptions, LayerSpec, ModelShape

SHAPE = ModelShape(
    d_model=32,
    head_dim=8,
    vocab_size=50,
    layers=(LayerSpec(64, 4, 2), LayerSpec(32, 2, 1), LayerSpec(96, 4, 2), LayerSpec(48, 2, 2)),
)
PER_LAYER = (
    "logit_lens_loss",
    "logit_lens_kl",
    "skip_delta",
    "skip_delta_per_mparam",
    "block_influence",
    "attn_update_ratio",
    "ffn_update_ratio",
    "effective_rank",
    "anisotropy",
    "cka",
    "attention_entropy",
)


def tiny_model(norm_order: str = "reordered") -> Transformer:
    torch.manual_seed(0)
    return Transformer(SHAPE, BlockOptions(norm_order=norm_order, max_seq_len=64)).eval()  # type: ignore[arg-type]


def windows(n: int = 6, seq: int = 17, seed: int = 1) -> torch.Tensor:
    return torch.randint(
        0, SHAPE.vocab_size, (n, seq), generator=torch.Generator().manual_seed(seed)
    )


def analyse(model: Transformer, data: torch.Tensor, **kwargs):
    options = AnalysisOptions(cka_tokens=32, entropy_windows=2)
    return analyze_model(model, SHAPE, iter(data.split(3)), options, **kwargs)


def cka(x: torch.Tensor, y: torch.Tensor) -> float:
    accumulator = MinibatchCKA()
    accumulator.update(Grams.of([x]), Grams.of([y]))
    return accumulator.result()[0][0]


def features(n: int = 64, d: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_cka_of_a_representation_with_itself_is_one() -> None:
    x = features()
    accumulator = MinibatchCKA()
    accumulator.update(Grams.of([x, torch.tanh(x @ features(12, 20, 1))]))
    result = torch.tensor(accumulator.result())
    assert torch.allclose(result.diagonal(), torch.ones(2), atol=1e-12)
    assert torch.allclose(result, result.T, atol=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_scaling_and_translation() -> None:
    x, y = features(seed=2), features(d=7, seed=3)
    y = y + 0.5 * x[:, :7]
    q, _ = torch.linalg.qr(features(12, 12, seed=4))
    reference = cka(x, y)
    assert 0.05 < reference < 0.95
    assert cka(x @ q, y) == pytest.approx(reference, abs=1e-10)
    assert cka(3.7 * x, 0.2 * y) == pytest.approx(reference, abs=1e-10)
    assert cka(x + 5.0, y - 2.0) == pytest.approx(reference, abs=1e-10)
    assert cka(x, x @ q * 2.5) == pytest.approx(1.0, abs=1e-10)


def test_unbiased_hsic_equals_the_u_statistic_over_distinct_index_tuples() -> None:
    """Song et al. 2012: mean over distinct (i, j, q, r) of k_ij l_ij + k_ij l_qr - 2 k_ij l_iq."""
    x, y = features(n=7, d=3, seed=5), features(n=7, d=4, seed=6)
    gram_x, gram_y = x @ x.T, y @ y.T
    terms = [
        gram_x[i, j] * (gram_y[i, j] + gram_y[q, r] - 2 * gram_y[i, q])
        for i, j, q, r in itertools.permutations(range(7), 4)
    ]
    direct = torch.stack(terms).mean().item()
    assert hsic(Grams.of([x]), Grams.of([y]))[0, 0].item() == pytest.approx(direct, rel=1e-9)


def test_minibatch_cka_agrees_with_full_batch_linear_cka() -> None:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(4000, 16, generator=generator, dtype=torch.float64)
    y = x[:, :8] @ torch.randn(8, 10, generator=generator, dtype=torch.float64)
    y = y + 2.0 * torch.randn(4000, 10, generator=generator, dtype=torch.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    full = (yc.T @ xc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    accumulator = MinibatchCKA()
    for rows in torch.arange(4000).split(250):
        accumulator.update(Grams.of([x[rows]]), Grams.of([y[rows]]))
    assert accumulator.result()[0][0] == pytest.approx(full.item(), abs=0.01)


def test_every_per_layer_list_has_one_entry_per_layer() -> None:
    result, cross = analyse(tiny_model(), windows())
    n = SHAPE.n_layers
    for key in PER_LAYER:
        assert len(result[key]) == n, key
    assert all(len(row) == n for row in result["cka"])
    assert cross is None
    assert result["tokens"] == 6 * 16


def test_the_last_layers_logit_lens_loss_is_the_models_loss() -> None:
    model, data = tiny_model(), windows()
    result, _ = analyse(model, data)
    with torch.no_grad():
        loss = model(data[:, :-1], data[:, 1:]).item()
    assert result["val_loss"] == pytest.approx(loss, rel=1e-6)
    assert result["logit_lens_loss"][-1] == pytest.approx(loss, rel=1e-6)
    assert result["logit_lens_kl"][-1] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("norm_order", ["reordered", "pre"])
def test_skipping_a_block_with_zero_output_projections_changes_nothing(norm_order: str) -> None:
    model = tiny_model(norm_order)
    with torch.no_grad():
        model.blocks[2].attention.w_o.weight.zero_()
        model.blocks[2].ffn.w2.weight.zero_()
    result, _ = analyse(model, windows())
    assert result["skip_delta"][2] == pytest.approx(0.0, abs=1e-6)
    assert result["block_influence"][2] == pytest.approx(0.0, abs=1e-6)
    assert result["attn_update_ratio"][2] == 0.0 and result["ffn_update_ratio"][2] == 0.0
    assert all(abs(d) > 1e-6 for i, d in enumerate(result["skip_delta"]) if i != 2)


def test_attention_entropies_are_normalised_and_padded_for_missing_heads() -> None:
    entropy = attention_entropy(tiny_model(), windows(n=2))
    assert [len(row) for row in entropy] == [4] * SHAPE.n_layers
    for layer, row in zip(SHAPE.layers, entropy, strict=True):
        present, padding = row[: layer.n_heads], row[layer.n_heads :]
        assert all(0.0 <= v <= 1.0 for v in present)
        assert all(math.isnan(v) for v in padding)


def test_a_head_that_attends_uniformly_has_entropy_one() -> None:
    attention = tiny_model().blocks[0].attention
    seq = 9
    zeros_q, keys = torch.zeros(1, seq, 4 * 8), torch.randn(1, seq, 2 * 8)
    cos, sin = tiny_model().rope_cos[:seq], tiny_model().rope_sin[:seq]
    assert torch.allclose(head_entropy(attention, zeros_q, keys, cos, sin), torch.ones(4))


def test_cross_run_cka_compares_models_of_different_widths() -> None:
    torch.manual_seed(1)
    other = Transformer(
        ModelShape(32, 8, 50, (LayerSpec(32, 2, 1), LayerSpec(128, 4, 2))),
        BlockOptions(max_seq_len=64),
    ).eval()
    _, cross = analyse(tiny_model(), windows(), against=other)
    assert cross is not None and len(cross) == SHAPE.n_layers and len(cross[0]) == 2


def test_effective_rank_counts_the_directions_used() -> None:
    assert effective_rank(torch.eye(6, dtype=torch.float64)) == pytest.approx(6.0)
    line = torch.zeros(6, 6, dtype=torch.float64)
    line[0, 0] = 4.0
    assert effective_rank(line) == pytest.approx(1.0)


def test_spearman_uses_average_ranks_for_ties_and_first_layer_near_final() -> None:
    assert spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]) == pytest.approx(1.0)
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert spearman([1.0, 1.0, 2.0], [1.0, 2.0, 3.0]) == pytest.approx(math.sqrt(3) / 2)
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
    assert first_layer_near([9.0, 5.4, 5.2, 5.0], 5.0) == 1


def test_a_run_named_twice_is_analysed_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 21: `analyze R R` used to give two identical rows."""
    (tmp_path / "r").mkdir()
    named = [tmp_path / "r", tmp_path / "." / "r", tmp_path / "s"]
    assert distinct_runs(named) == [tmp_path / "r", tmp_path / "s"]
    assert "analysed once" in capsys.readouterr().err
