"""Paired statistics: the exact t quantile against table values, and intervals on known numbers."""

from __future__ import annotations

import pytest

from layerwise.util.stats import BETTER, UNDECIDED, WORSE, paired_difference, t_cdf, t_quantile


@pytest.mark.parametrize(
    ("p", "df", "table"),
    [
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 4, 2.7764),
        (0.975, 9, 2.2622),
        (0.975, 29, 2.0452),
        (0.95, 3, 2.3534),
        (0.995, 5, 4.0321),
        (0.975, 1000, 1.9623),
    ],
)
def test_t_quantile_matches_the_printed_tables(p: float, df: int, table: float) -> None:
    assert t_quantile(p, df) == pytest.approx(table, abs=1e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-table, abs=1e-4)
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_the_interval_of_known_differences() -> None:
    # d = 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5), t(0.975, 4) = 2.776445 -> 3 +- 1.963243.
    diff = paired_difference({s: float(s + 1) for s in range(5)}, dict.fromkeys(range(5), 0.0))
    assert diff is not None and diff.pairs == 5
    assert (diff.mean, diff.low, diff.high) == pytest.approx((3.0, 1.036757, 4.963243), abs=1e-6)
    assert diff.verdict("lower") == WORSE and diff.verdict("higher") == BETTER


def test_differences_are_paired_by_seed_not_pooled() -> None:
    # Seed noise (+-1) swamps the gap between rows but cancels within each seed.
    reference = {0: 5.0, 1: 6.0, 2: 4.0}
    row = {0: 4.9, 1: 5.91, 2: 3.89, 7: 0.0}  # seed 7 has no partner and is left out
    diff = paired_difference(row, reference)
    assert diff is not None and diff.pairs == 3
    assert diff.high is not None and diff.high < 0 and diff.verdict("lower") == BETTER


def test_an_interval_containing_zero_or_one_pair_is_undecided() -> None:
    wide = paired_difference({0: 1.0, 1: -1.0}, {0: 0.0, 1: 0.0})
    assert wide is not None and wide.verdict("lower") == UNDECIDED == "not distinguishable at 95%"
    single = paired_difference({0: 1.0}, {0: 0.0})
    assert single is not None and single.low is None and single.verdict("lower") == UNDECIDED
    assert "no interval" in single.describe()
    assert paired_difference({0: 1.0}, {1: 0.0}) is None
