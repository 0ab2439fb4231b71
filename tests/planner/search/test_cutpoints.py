"""The fast affine split agrees with the DP; heavy end stages get fewer layers."""

import random

import numpy as np
import pytest

from costmodels.layout import uniform_split
from planner.search.cutpoints import split_affine, split_dp


def _table(num_layers, layer_s, extras, caps):
    cost = np.full((len(extras), num_layers + 1), np.inf)
    for j, (e, cap) in enumerate(zip(extras, caps)):
        for n in range(1, cap + 1):
            cost[j, n] = n * layer_s + e
    return cost


@pytest.mark.parametrize("seed", range(5))
def test_affine_split_matches_dynamic_programme(seed):
    rng = random.Random(seed)
    for _ in range(60):
        L = rng.randint(2, 40)
        S = rng.randint(1, min(L, 9))
        t = rng.uniform(0.2, 3)
        extras = [rng.choice([0.0, 0.0, rng.uniform(0, 6)]) for _ in range(S)]
        caps = [rng.randint(1, L) for _ in range(S)]
        dp = split_dp(L, _table(L, t, extras, caps))
        fast = split_affine(L, t, extras, caps)
        assert (dp is None) == (fast is None)
        if dp:
            assert fast.bottleneck_s == pytest.approx(dp.bottleneck_s)
            assert sum(fast.layers) == L
            assert all(1 <= n <= c for n, c in zip(fast.layers, caps))


def test_embedding_and_head_stages_get_fewer_layers_when_that_is_faster():
    # 32 layers of 1 s, 4 stages; the head costs 3 layers' worth, the embedding 1
    split = split_affine(32, 1.0, [1.0, 0.0, 0.0, 3.0], [32] * 4)
    assert split.bottleneck_s == 9.0  # (32 + 1 + 3) / 4
    assert split.layers == (8, 9, 10, 5) or split.layers[3] < split.layers[1]
    assert max(n + e for n, e in zip(split.layers, [1, 0, 0, 3])) == 9


def test_memory_caps_bind():
    split = split_affine(16, 1.0, [0.0] * 4, [2, 10, 10, 2])
    assert split.layers[0] <= 2 and split.layers[3] <= 2
    assert split.bottleneck_s == 6.0


def test_uniform_split_puts_extra_layers_first():
    assert uniform_split(10, 4) == [3, 3, 2, 2]
    assert uniform_split(96, 8) == [12] * 8
