"""The fast affine split agrees with the DP; heavy end stages get fewer layers."""

import random

import numpy as np
import pytest

from costmodels.layout import end_stage_floors, uniform_split
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


def _brute_force_bottleneck(num_layers, layer_s, extras, caps, floors):
    """The min-max over every composition with floors[j] <= n_j <= caps[j] (small cases)."""
    best = None

    def walk(j, left, worst):
        nonlocal best
        if j == len(extras):
            if left == 0 and (best is None or worst < best):
                best = worst
            return
        for n in range(floors[j], min(caps[j], left) + 1):
            walk(j + 1, left - n, max(worst, n * layer_s + extras[j]))

    walk(0, num_layers, 0.0)
    return best


@pytest.mark.parametrize("seed", range(3))
def test_affine_split_with_empty_end_stages_matches_brute_force(seed):
    rng = random.Random(100 + seed)
    for _ in range(80):
        S = rng.randint(2, 6)
        L = rng.randint(max(1, S - 2), 12)
        t = rng.uniform(0.2, 3)
        extras = [rng.uniform(0, 6), *[0.0] * (S - 2), rng.uniform(0, 9)]
        caps = [rng.randint(0, L)] + [rng.randint(1, L) for _ in range(S - 2)] + [rng.randint(0, L)]
        floors = end_stage_floors(S)
        fast = split_affine(L, t, extras, caps, floors)
        brute = _brute_force_bottleneck(L, t, extras, caps, floors)
        assert (fast is None) == (brute is None), (L, S, extras, caps)
        if fast:
            assert fast.bottleneck_s == pytest.approx(brute)
            assert sum(fast.layers) == L
            assert all(f <= n <= c for n, f, c in zip(fast.layers, floors, caps))


def test_a_head_heavier_than_a_stage_of_layers_gets_a_stage_of_its_own():
    # 8 layers of 1 s on 4 stages; the head costs 4 layers' worth: alone on the last stage the
    # slowest stage takes 4 s, where keeping a layer there makes it 5 s
    extras = [0.0, 0.0, 0.0, 4.0]
    assert split_affine(8, 1.0, extras, [8] * 4).bottleneck_s == 5.0
    split = split_affine(8, 1.0, extras, [8] * 4, end_stage_floors(4))
    assert split.bottleneck_s == 4.0
    assert split.layers[3] == 0 and sum(split.layers) == 8
    # fewer layers than stages: only the empty-ended split exists
    assert split_affine(6, 1.0, [0.0] * 8, [6] * 8, end_stage_floors(8)).layers == (0, 1, 1, 1, 1, 1, 1, 0)


def test_rationale_says_when_an_end_stage_holds_no_layer():
    from planner.search.explain import end_stage_line

    assert end_stage_line([2, 3, 3, 2]) is None
    assert end_stage_line([0, 1, 1, 0]) == ("cut: the embedding and the head alone on their end stages (stage_layers 0, 1, ..., 0; "
                                           "Megatron-LM: --account-for-embedding/loss-in-pipeline-split)")
    assert end_stage_line([1, 1, 0]).startswith("cut: the head alone on its end stage")
