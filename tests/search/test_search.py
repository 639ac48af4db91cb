"""Profile search without training: interpolation, the space, rank statistics, import cost."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from layerwise.profiles.recipes import SHAPES, interpolate
from layerwise.search.interp import pchip, per_layer
from layerwise.search.space import SearchSpace, baseline_params, shape_of
from layerwise.util.errors import UserError


def test_pchip_keeps_monotone_data_monotone_and_within_the_anchors() -> None:
    x = [0.0, 1.0, 2.5, 4.0, 7.0]
    y = [0.5, 0.6, 3.0, 3.1, 8.0]  # steep and flat stretches: where plain cubics overshoot
    values = pchip(x, y, np.linspace(0, 7, 200))
    assert np.all(np.diff(values) >= -1e-12)
    assert values.min() >= 0.5 - 1e-12 and values.max() <= 8.0 + 1e-12
    falling = pchip(x, y[::-1], np.linspace(0, 7, 200))
    assert np.all(np.diff(falling) <= 1e-12)


def test_pchip_reproduces_linear_data_and_passes_through_the_anchors() -> None:
    x = np.array([0.0, 1.25, 2.5, 3.75, 5.0])
    y = 1.0 + 0.6 * x
    query = np.linspace(0, 5, 37)
    np.testing.assert_allclose(pchip(x, y, query), 1.0 + 0.6 * query, atol=1e-12)
    bumpy = [0.5, 3.0, 1.0, 2.0, 0.5]
    np.testing.assert_allclose(pchip(x, bumpy, x), bumpy, atol=1e-12)
    peak = pchip(x, bumpy, np.linspace(0, 5, 101))
    assert peak.max() <= 3.0 + 1e-12  # a local extremum stays at its anchor


@pytest.mark.parametrize("name", ["isotropic", "vanilla", "framed", "reverse"])
def test_linear_baselines_are_exact_points_of_the_space(name: str) -> None:
    space = SearchSpace()
    shape = shape_of(baseline_params(name, space, 6), space, 6)
    recipe = SHAPES[name]
    np.testing.assert_allclose(shape.ffn, interpolate(recipe.ffn, 6), atol=1e-9)
    np.testing.assert_allclose(shape.qkv, interpolate(recipe.qkv, 6), atol=1e-9)
    assert shape.frame == recipe.frame


def test_linear_interpolation_and_single_anchor() -> None:
    assert per_layer([1.0, 3.0], 3, "linear") == [1.0, 2.0, 3.0]
    assert per_layer([2.0], 4, "pchip") == [2.0] * 4


def test_a_space_with_bad_ranges_is_refused() -> None:
    with pytest.raises(UserError, match="--ffn-range"):
        SearchSpace(ffn_range=(2.0, 1.0)).check()


def test_rank_correlations_match_their_definitions() -> None:
    from layerwise.util.stats import kendall, spearman

    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert spearman(a, [2.0, 4.0, 6.0, 8.0, 10.0]) == pytest.approx(1.0)
    assert kendall(a, a[::-1]) == pytest.approx(-1.0)
    # one swapped pair of 10: tau = (9 - 1) / 10; rho = 1 - 6 * 2 / (5 * 24)
    b = [1.0, 2.0, 4.0, 3.0, 5.0]
    assert kendall(a, b) == pytest.approx(0.8)
    assert spearman(a, b) == pytest.approx(0.9)


def test_import_layerwise_and_the_cli_parser_do_not_import_optuna() -> None:
    code = (
        "import sys, layerwise, layerwise.cli; layerwise.cli.build_parser(); "
        "print('optuna' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
