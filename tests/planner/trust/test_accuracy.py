"""Accuracy statistics (``planner.trust.accuracy``), against hand-computed values."""

from __future__ import annotations

import pytest

from planner.trust.accuracy import average_ranks, error_pct, mape_pct, pick_regret_pct, spearman_rho


def test_error_and_mape() -> None:
    assert error_pct(110.0, 100.0) == pytest.approx(10.0)
    assert error_pct(90.0, 100.0) == pytest.approx(-10.0)
    assert mape_pct([10.0, -20.0, 0.0]) == pytest.approx(10.0)


def test_ties_share_the_mean_rank() -> None:
    assert list(average_ranks([3.0, 1.0, 1.0, 2.0])) == [4.0, 1.5, 1.5, 3.0]


def test_spearman_without_ties_is_one_minus_six_sum_d2_over_n_n2_minus_1() -> None:
    # ranks (1,2,3,4) vs (1,3,2,4): sum d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8
    assert spearman_rho([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0]) == pytest.approx(0.8)
    assert spearman_rho([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert spearman_rho([1.0, 2.0, 3.0], [1.0, 8.0, 27.0]) == pytest.approx(1.0)  # monotone, not linear


def test_spearman_with_ties_is_pearson_of_average_ranks() -> None:
    # x ranks (1, 2.5, 2.5, 4), y ranks (1, 2, 3, 4): centred (-1.5, 0, 0, 1.5) . (-1.5, -0.5, 0.5, 1.5) = 4.5;
    # norms sqrt(4.5) and sqrt(5): rho = 4.5 / sqrt(22.5)
    assert spearman_rho([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(4.5 / 22.5 ** 0.5)


def test_spearman_is_undefined_for_constants_and_short_lists() -> None:
    assert spearman_rho([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
    assert spearman_rho([1.0, 2.0], [1.0, 2.0]) is None


def test_the_pick_regret_is_what_the_predicted_best_loses() -> None:
    # predicted best is the second row (measured 90); the measured best is 100: 100/90 - 1
    assert pick_regret_pct([1.0, 3.0, 2.0], [100.0, 90.0, 80.0]) == pytest.approx(100.0 * (100.0 / 90.0 - 1.0))
    assert pick_regret_pct([3.0, 1.0], [100.0, 90.0]) == 0.0
    # one configuration read twice (the same prediction): its mean reading, (90 + 110) / 2
    assert pick_regret_pct([5.0, 5.0, 1.0], [90.0, 110.0, 120.0]) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        pick_regret_pct([], [])
