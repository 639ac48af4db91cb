"""Rank correlations agree with scipy's, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from layerwise.util.stats import kendall, ranks, spearman

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("seed", range(5))
def test_rank_correlations_equal_scipy_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, size=12).astype(float).tolist()  # few values: many ties
    b = (np.asarray(a) + rng.normal(0, 2, size=12)).round().tolist()
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
    assert kendall(a, b) == pytest.approx(scipy_stats.kendalltau(a, b).statistic, abs=1e-12)
    assert ranks(a) == pytest.approx(scipy_stats.rankdata(a).tolist())


def test_undefined_correlations_are_none() -> None:
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
    assert kendall([2.0, 2.0], [1.0, 3.0]) is None
    assert spearman([1.0], [2.0]) is None
    assert spearman([1.0, 2.0], [3.0, 1.0]) == pytest.approx(-1.0)
