"""Lower bounds of the simulated makespan (``costmodels.pipeline_bound``): exact where the
closed forms are (1F1B and interleaved 1F1B with uniform stages, Narayanan et al. SC21 Sec. 2.2;
ZB-H1 with F = B = W, Qi et al. ICLR 2024), and never above the simulator on random shapes and
random stage times (with p2p), which is what makes the search's pruning safe."""

from __future__ import annotations

import random

import pytest

from costmodels.layer_costs import PassTimes
from costmodels.pipeline import price_pipeline
from costmodels.pipeline_bound import (
    any_cut_makespan_lower_bound_s,
    bound_pipeline,
    held_alive_at_peak,
    held_lower_bound,
    makespan_lower_bound_s,
    peak_inflight,
    stages_by_rank,
)
from costmodels.schedules.actions import FORWARD, RELEASING_KINDS
from costmodels.schedules.generate import generate_schedule
from costmodels.schedules.registry import SCHEDULES, shape_violations
from costmodels.simulator import StageTimes

SEARCHED = ["gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "zb-h1", "zb-h2", "interleaved-zb", "zbv", "dualpipev"]


def uniform(stages: int, f: float, b: float, w: float) -> StageTimes:
    return StageTimes((f,) * stages, (b,) * stages, (w,) * stages, (1.0,) * stages, (0.0,) * (stages - 1))


@pytest.mark.parametrize("pp, m", [(2, 4), (4, 8), (8, 8), (4, 13), (8, 3)])
def test_1f1b_bound_is_the_exact_makespan(pp: int, m: int) -> None:
    if m < pp:
        pytest.skip("1F1B needs M >= pp")
    times = uniform(pp, 1.0, 1.5, 0.5)
    assert makespan_lower_bound_s("1f1b", pp, 1, m, times) == pytest.approx((m + pp - 1) * 3.0)
    assert price_pipeline("1f1b", pp, 1, m, times).makespan_s == pytest.approx((m + pp - 1) * 3.0)


@pytest.mark.parametrize("pp, v, m", [(2, 2, 4), (4, 2, 8), (4, 4, 16)])
def test_interleaved_bound_is_exact_with_full_rounds(pp: int, v: int, m: int) -> None:
    times = uniform(pp * v, 0.5, 0.75, 0.25)
    chunk = 1.5
    expected = (m * v + pp - 1) * chunk
    assert makespan_lower_bound_s("interleaved-1f1b", pp, v, m, times) == pytest.approx(expected)
    assert price_pipeline("interleaved-1f1b", pp, v, m, times).makespan_s == pytest.approx(expected)


@pytest.mark.parametrize("pp, m", [(4, 8), (8, 16)])
def test_zb_h1_bound_is_3m_plus_p_minus_1(pp: int, m: int) -> None:
    times = uniform(pp, 1.0, 1.0, 1.0)
    assert makespan_lower_bound_s("zb-h1", pp, 1, m, times) == pytest.approx(3 * m + pp - 1)


def random_shape(rng: random.Random) -> tuple[str, int, int, int]:
    while True:
        name = rng.choice(SEARCHED)
        pp = rng.choice([1, 2, 3, 4, 5, 8])
        if pp == 1 and name != "1f1b":
            continue
        v = {"one": 1, "two": 2, "looped": rng.choice([2, 3, 4])}[SCHEDULES[name].stages_per_rank]
        m = rng.choice([1, 2, 3, pp, pp + 1, 2 * pp, 3 * pp + 1, 12])
        if pp == 1:
            v = 1
        if not shape_violations(name, pp, v, m):
            return name, pp, v, m


def random_times(rng: random.Random, stages: int) -> StageTimes:
    def draw() -> tuple[float, ...]:
        return tuple(rng.uniform(0.0, 2.0) for _ in range(stages))

    p2p = tuple(rng.choice([0.0, rng.uniform(0.0, 0.5)]) for _ in range(stages - 1))
    return StageTimes(draw(), draw(), draw(), tuple(rng.uniform(1.0, 5.0) for _ in range(stages)), p2p)


def test_bound_never_exceeds_the_simulator_on_random_shapes_and_times() -> None:
    rng = random.Random(11)
    tight = 0
    for _ in range(600):
        name, pp, v, m = random_shape(rng)
        times = random_times(rng, pp * v)
        exact = price_pipeline(name, pp, v, m, times)
        bound = makespan_lower_bound_s(name, pp, v, m, times)
        assert bound <= exact.makespan_s * (1 + 1e-12), (name, pp, v, m)
        tight += bound >= 0.9 * exact.makespan_s
        priced = bound_pipeline(name, pp, v, m, times)
        assert priced.busy_s == pytest.approx(exact.busy_s)
        assert priced.peak_inflight_microbatches == exact.peak_inflight_microbatches
        for lower, simulated in zip(priced.peak_activation_bytes, exact.peak_activation_bytes):
            assert lower <= simulated * (1 + 1e-12)
        if v == 1:
            assert priced.peak_activation_bytes == pytest.approx(exact.peak_activation_bytes)
    assert tight > 300  # a bound that is always 0 would pass the line above


def test_bound_with_held_bytes_never_exceeds_the_simulator() -> None:
    """Held bytes (``StageTimes.held_bytes``: gradients that live from a stage's first W or full backward to its
    last): with one stage per rank the closed form (activation peak plus the stage's held bytes) is the simulated
    peak (below it by the split backward's retained bytes, which the closed form leaves out); with several and
    enough microbatches (``held_alive_at_peak``) the closed-form activation bound plus all the rank's held bytes
    stays at most it; with fewer, the bound takes the held bytes at the peak of the rank's running sum over its
    action order, the simulator's, and is exact."""
    rng = random.Random(12)
    kinds = {"one stage": 0, "all alive": 0, "from the order": 0}
    for _ in range(600):
        name, pp, v, m = random_shape(rng)
        plain = random_times(rng, pp * v)
        held = tuple(rng.uniform(0.0, 20.0) for _ in range(pp * v))
        retained = tuple(rng.uniform(0.0, 3.0) for _ in range(pp * v)) if rng.random() < 0.5 else ()
        times = StageTimes(plain.forward_s, plain.backward_input_s, plain.backward_weight_s, plain.activation_bytes,
                           plain.p2p_s, retained, held, tuple(h * rng.uniform(0.0, 1.0) for h in held))
        exact = price_pipeline(name, pp, v, m, times)
        priced = bound_pipeline(name, pp, v, m, times)
        kind = "one stage" if v == 1 else "all alive" if held_alive_at_peak(name, pp, v, m) else "from the order"
        kinds[kind] += 1
        for rank in range(pp):
            lower = priced.peak_activation_bytes[rank] + priced.peak_held_bytes[rank]
            simulated = exact.peak_activation_bytes[rank] + exact.peak_held_bytes[rank]
            assert lower <= simulated * (1 + 1e-12), (name, pp, v, m, rank)
            if kind == "from the order" or (kind == "one stage" and not retained):
                assert lower == pytest.approx(simulated, rel=1e-12), (name, pp, v, m, rank)
    assert min(kinds.values()) > 50, kinds


def test_held_lower_bound_never_exceeds_the_simulator() -> None:
    """``held_lower_bound`` (the per-cut memory bound's, without the action order): the closed-form activation
    bound plus it stays at most the simulated peak of activations plus held bytes, and is below it somewhere."""
    rng = random.Random(13)
    below = 0
    for _ in range(600):
        name, pp, v, m = random_shape(rng)
        if v == 1:
            continue
        plain = random_times(rng, pp * v)
        held = tuple(rng.uniform(0.0, 20.0) for _ in range(pp * v))
        times = StageTimes(plain.forward_s, plain.backward_input_s, plain.backward_weight_s, plain.activation_bytes,
                           plain.p2p_s, held_bytes=held, held_kept_bytes=tuple(h * rng.uniform(0.0, 1.0) for h in held))
        exact = price_pipeline(name, pp, v, m, times)
        counts = peak_inflight(name, pp, v, m)
        for rank, own in enumerate(stages_by_rank(name, pp, v)):
            smallest = min(times.activation_bytes[s] for s in own)
            lower = counts[rank] * smallest + held_lower_bound([held[s] for s in own], smallest)
            simulated = exact.peak_activation_bytes[rank] + exact.peak_held_bytes[rank]
            assert lower <= simulated * (1 + 1e-12), (name, pp, v, m, rank)
            below += lower < simulated * 0.999
    assert below > 0


def layer_times(cut: list[int], layer: PassTimes, emb: PassTimes, head: PassTimes) -> StageTimes:
    def per_stage(attr: str) -> tuple[float, ...]:
        out = [n * getattr(layer, attr) for n in cut]
        out[0] += getattr(emb, attr)
        out[-1] += getattr(head, attr)
        return tuple(out)

    stages = len(cut)
    return StageTimes(per_stage("forward_s"), per_stage("backward_input_s"), per_stage("backward_weight_s"),
                      (1.0,) * stages, (0.0,) * (stages - 1))


def random_cut(rng: random.Random, layers: int, stages: int) -> list[int]:
    bars = sorted(rng.sample(range(1, layers), stages - 1))
    edges = [0, *bars, layers]
    return [edges[i + 1] - edges[i] for i in range(stages)]


def random_cut_with_empty_ends(rng: random.Random, layers: int, stages: int) -> list[int]:
    """A random cut whose first and/or last stage may hold no layer (the embedding or the head alone)."""
    while True:
        empty_first, empty_last = rng.random() < 0.5, rng.random() < 0.5
        inner = stages - empty_first - empty_last
        if 1 <= inner <= layers:
            break
    cut = random_cut(rng, layers, inner) if inner > 1 else [layers]
    return [0] * empty_first + cut + [0] * empty_last


def _check_any_cut_bound(rng: random.Random, name: str, pp: int, v: int, m: int, layers: int, cut_of) -> None:
    """The any-cut bound stays below the per-cut bound and the simulated makespan of ``cut_of``'s cut."""
    layer = PassTimes(rng.uniform(0.1, 1), rng.uniform(0.1, 2), rng.uniform(0.0, 1))
    emb = PassTimes(rng.uniform(0, 0.3), 0.0, rng.uniform(0, 0.3))
    head = PassTimes(rng.uniform(0, 2), rng.uniform(0, 2), rng.uniform(0, 1))
    any_cut = any_cut_makespan_lower_bound_s(name, pp, v, m, layer, emb, head, layers)
    cut = cut_of(rng, layers, pp * v)
    times = layer_times(cut, layer, emb, head)
    assert any_cut <= makespan_lower_bound_s(name, pp, v, m, times) * (1 + 1e-12), (name, pp, v, m, cut)
    assert any_cut <= price_pipeline(name, pp, v, m, times).makespan_s * (1 + 1e-12), (name, pp, v, m, cut)


def test_any_cut_bound_is_below_the_bound_of_every_cut() -> None:
    rng = random.Random(5)
    for _ in range(400):
        name, pp, v, m = random_shape(rng)
        _check_any_cut_bound(rng, name, pp, v, m, rng.randint(pp * v, 4 * pp * v + 3), random_cut)


def test_peak_inflight_reads_the_registry() -> None:
    assert peak_inflight("1f1b", 4, 1, 8) == (4, 3, 2, 1)
    assert peak_inflight("zb-h2", 4, 1, 8) == (7, 7, 7, 7)
    assert peak_inflight("chimera", 4, 1, 4) == price_pipeline("chimera", 4, 1, 4, uniform(4, 1, 1, 1)).peak_inflight_microbatches


def test_any_cut_bound_covers_cuts_whose_end_stages_hold_no_layer() -> None:
    rng = random.Random(11)
    for _ in range(600):
        name, pp, v, m = random_shape(rng)
        if pp * v >= 2:
            layers = rng.randint(max(1, pp * v - 2), 2 * pp * v + 3)
            _check_any_cut_bound(rng, name, pp, v, m, layers, random_cut_with_empty_ends)


@pytest.mark.parametrize("name", sorted(n for n, s in SCHEDULES.items() if s.stages_per_rank != "one" and n != "custom"))
def test_a_rank_of_several_stages_holds_its_peak_count_less_at_most_one_when_its_first_release_starts(name: str) -> None:
    """``held_lower_bound``'s premise: when a rank's first W or full backward starts, at least its peak in-flight
    count less one stage-microbatches are in flight (all of it in every schedule but dualpipev, one fewer there on
    every rank but the last: its last warm-up forward comes after its first W)."""
    short = 0
    for pp in (2, 3, 4, 6, 8):
        for m in (1, 2, 3, pp, pp + 1, 2 * pp, 3 * pp + 1, 32):
            for v in {"two": (2,), "looped": (2, 3, 4)}[SCHEDULES[name].stages_per_rank]:
                if shape_violations(name, pp, v, m):
                    continue
                counts = peak_inflight(name, pp, v, m)
                for rank, actions in enumerate(generate_schedule(name, pp, v, m).ranks):
                    first = next(i for i, a in enumerate(actions) if a.kind in RELEASING_KINDS)
                    inflight = sum(a.kind == FORWARD for a in actions[:first])
                    assert inflight >= counts[rank] - 1, (pp, v, m, rank)
                    short += inflight < counts[rank]
    assert (short > 0) == (name == "dualpipev")


def _all_held_alive_at_a_peak(actions: list, own: list[int], peak: int) -> bool:
    """Whether, at some action's start, the rank's in-flight count is ``peak``, every stage of ``own`` has
    started its W or full backward passes and none has finished them."""
    passes = {s: sum(a.kind in RELEASING_KINDS and a.stage == s for a in actions) for s in own}
    done = dict.fromkeys(own, 0)
    started: set[int] = set()
    inflight = 0
    for a in actions:
        if a.kind in RELEASING_KINDS:
            started.add(a.stage)
        inflight += a.kind == FORWARD
        if inflight == peak and started == set(own) and all(done[s] < passes[s] for s in own):
            return True
        if a.kind in RELEASING_KINDS:
            done[a.stage] += 1
            inflight -= 1
    return False


@pytest.mark.parametrize("name", sorted(n for n, s in SCHEDULES.items() if s.stages_per_rank in ("two", "looped")))
def test_held_overlap_rounds_holds_on_the_generated_lists(name: str) -> None:
    """``ScheduleSpec.held_overlap_rounds`` k: from M >= k pp on, every rank has a moment at its peak in-flight
    count when all its stages' held bytes are alive (what lets the bounds count them all); looped-bfs (k = 0) has
    none: each stage's backwards end before the next stage's start."""
    rounds = SCHEDULES[name].held_overlap_rounds
    checked = 0
    for pp in (2, 3, 4, 6, 8, 16):
        for v in {"two": (2,), "looped": (2, 3, 4)}[SCHEDULES[name].stages_per_rank]:
            for m in sorted({pp, 2 * pp, 2 * pp + 1, 3 * pp, 4 * pp + 3, 64}):
                if shape_violations(name, pp, v, m):
                    continue
                counts = peak_inflight(name, pp, v, m)
                alive = [_all_held_alive_at_a_peak(list(actions), own, counts[rank]) for rank, (actions, own)
                         in enumerate(zip(generate_schedule(name, pp, v, m).ranks, stages_by_rank(name, pp, v)))]
                if rounds and m >= rounds * pp:
                    assert all(alive), (pp, v, m)
                    checked += 1
                if not rounds:
                    assert not any(alive), (pp, v, m)
                    checked += 1
    assert checked > 10
