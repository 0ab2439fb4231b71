"""A source's repeat scatter and the rho it allows (``planner.trust.repeat_noise``), against
hand-derived values."""

from __future__ import annotations

import math

import pytest

from planner.trust.published_runs import PublishedRow, read_published_runs
from planner.trust.repeat_noise import RepeatNoise, pooled_sigma_ln, repeat_groups, repeat_means, repeat_noise_by_source, rho_noise_ceiling


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_pooled_sigma_is_the_within_group_scatter_of_the_logs() -> None:
    # logs (0, 0.1): mean 0.05, squares 0.005; logs (1, 1.2, 1.1): mean 1.1, squares 0.02; dof 1 + 2
    sigma, dof = pooled_sigma_ln([[1.0, math.exp(0.1)], [math.e, math.exp(1.2), math.exp(1.1)], [7.0]])
    assert dof == 3
    assert sigma == pytest.approx(math.sqrt(0.025 / 3))


def test_two_far_pairs_swap_independently() -> None:
    # Ranks (1,2,3,4); a swap inside one pair gives sum d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8, both swaps 0.6.
    # A pair log-gap d swaps when d + sigma*(z1 - z2) < 0: p = Phi(-d / (sigma*sqrt 2)) = Phi(-1) here, so
    # E[rho] = (1-p)^2 + 2p(1-p)*0.8 + p^2*0.6 = 1 - 0.4p and P(rho >= 0.8) = 1 - p^2.
    sigma = 0.05
    gap = sigma * math.sqrt(2.0)
    p = _phi(-1.0)
    ceiling = rho_noise_ceiling([1.0, math.exp(gap), 100.0, 100.0 * math.exp(gap)], sigma, target=0.8)
    assert ceiling.expected_rho == pytest.approx(1.0 - 0.4 * p, abs=0.003)
    assert ceiling.share_reaching_target == pytest.approx(1.0 - p * p, abs=0.005)


def test_a_configuration_read_twice_stays_a_tie() -> None:
    # True ranks (1.5, 1.5, 3) whatever the readings' order of the tied pair: rho = 1.5 / sqrt(1.5 * 2).
    ceiling = rho_noise_ceiling([5.0, 5.0, 500.0], 0.03, target=0.8)
    assert ceiling.expected_rho == pytest.approx(math.sqrt(3.0) / 2.0)
    assert ceiling.share_reaching_target == 1.0


def test_no_noise_scores_exactly_and_pure_noise_scores_nothing() -> None:
    assert rho_noise_ceiling([1.0, 2.0, 4.0, 8.0], 0.0, target=0.8).expected_rho == 1.0
    assert abs(rho_noise_ceiling([1.0, 1.001, 1.002, 1.003, 1.004], 10.0, target=0.8).expected_rho) < 0.02
    assert rho_noise_ceiling([1.0, 2.0], 0.05, target=0.8) is None
    assert rho_noise_ceiling([3.0, 3.0, 3.0], 0.05, target=0.8) is None


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="positive and finite"):
        pooled_sigma_ln([[1.0, -2.0]])
    with pytest.raises(ValueError, match="two readings"):
        pooled_sigma_ln([[1.0], [2.0]])
    with pytest.raises(ValueError, match="sigma_ln"):
        rho_noise_ceiling([1.0, 2.0, 3.0], float("nan"), target=0.8)


def test_repeat_means_are_geometric() -> None:
    assert repeat_means([("a",), ("b",), ("a",)], [2.0, 3.0, 8.0]) == pytest.approx([4.0, 3.0, 4.0])


def test_the_corpus_repeats_are_bigscience_readings_of_one_layout_on_several_days() -> None:
    rows = [r for r in read_published_runs() if isinstance(r, PublishedRow)]
    groups = {g[0].run: sorted(r.measured for r in g) for g in repeat_groups(rows)}
    # chronicles-prequel.md: TP 8, PP 6, DP 8, MBS 4 of the 181B model read on 02-21 to 02-26
    assert groups["tr11 181B h14336 L72 heads64 384GPU TP8 PP6 DP8 MBS4 GBS2048 fp16"] == [113.95, 114.11, 120.18, 120.85, 121.48]
    # NVIDIA's releases measure one configuration once each: a later release is other software, not a repeat
    noise = repeat_noise_by_source(rows)
    assert list(noise) == ["bigscience"]
    assert (noise["bigscience"].groups, noise["bigscience"].dof) == (10, 16)
    assert noise["bigscience"].sigma_pct == pytest.approx(3.35, abs=0.01)


def test_the_mape_floor_of_a_scatter() -> None:
    # E|exp(sigma z) - 1| = exp(sigma^2/2) (2 Phi(sigma) - 1): sigma = 1 gives exp(0.5) * 0.682689 = 1.12556
    assert RepeatNoise("s", 1.0, 5, 2).mape_floor_pct == pytest.approx(112.556, abs=0.01)
    # a small sigma: ~ sigma sqrt(2/pi), BigScience's 3.35 % scatter ~ 2.7 %
    assert RepeatNoise("s", 0.0335, 16, 10).mape_floor_pct == pytest.approx(3.35 * math.sqrt(2 / math.pi), abs=0.01)
