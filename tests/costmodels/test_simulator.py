"""Event simulator against hand-derived pipeline formulas.

Uniform stages, no p2p, times F (forward), B, W per stage chunk:
- 1F1B makespan (M + P - 1)(F + B + W), bubble (P - 1)/(M + P - 1) (Narayanan et al. SC21, Sec. 2.2);
- interleaved with v chunks: bubble (P - 1)/(v M + P - 1) when M % P == 0;
- GPipe holds M microbatches on every rank, 1F1B holds P - k on rank k;
- ZB-H1 (F = B = W = T): makespan (3M + P - 1) T, rank k idles (P - 1 - k) T, a third of
  1F1B's 3 (P - 1 - k) T; ZB-H2: no idle between a rank's first and last action (Qi et al. 2024).
Tolerances: these are exact identities of the model, checked to 1e-9 relative; with p2p time
c > 0, ZB-H2's idle stays within 2 (P - 1 - k) c.
"""

from __future__ import annotations

import pytest

from costmodels.pipeline import price_pipeline
from costmodels.schedules.actions import Action, Schedule
from costmodels.schedules.generate import generate_schedule
from costmodels.simulator import LOOP_ACTIONS_PER_LEVEL, StageTimes, schedule_graph, simulate
from profiles.errors import PlanError


def uniform(stages: int, f: float, b: float, w: float = 0.0, p2p: float = 0.0) -> StageTimes:
    return StageTimes((f,) * stages, (b,) * stages, (w,) * stages, (1.0,) * stages, (p2p,) * (stages - 1))


@pytest.mark.parametrize(("pp", "m"), [(2, 2), (4, 4), (4, 8), (4, 13), (8, 32), (16, 64)])
@pytest.mark.parametrize(("f", "b", "w"), [(1.0, 2.0, 0.0), (1.0, 1.0, 1.0), (0.3, 0.5, 0.25)])
def test_1f1b_makespan_and_bubble_are_exact(pp: int, m: int, f: float, b: float, w: float) -> None:
    result = price_pipeline("1f1b", pp, 1, m, uniform(pp, f, b, w))
    assert result.makespan_s == pytest.approx((m + pp - 1) * (f + b + w), rel=1e-12)
    assert result.bubble_fraction == pytest.approx((pp - 1) / (m + pp - 1), rel=1e-12)
    assert result.busy_s == pytest.approx([m * (f + b + w)] * pp)


@pytest.mark.parametrize(("pp", "v", "m"), [(2, 2, 2), (2, 3, 4), (4, 2, 4), (4, 2, 8), (4, 3, 16), (8, 2, 16), (8, 4, 32)])
def test_interleaved_bubble_when_microbatches_fill_rounds(pp: int, v: int, m: int) -> None:
    f, b = 0.5, 1.0
    result = price_pipeline("interleaved-1f1b", pp, v, m, uniform(pp * v, f, b))
    assert result.bubble_fraction == pytest.approx((pp - 1) / (v * m + pp - 1), rel=1e-12)
    assert result.makespan_s == pytest.approx((v * m + pp - 1) * (f + b), rel=1e-12)


@pytest.mark.parametrize(("pp", "m"), [(4, 8), (8, 8), (8, 24)])
def test_gpipe_holds_every_microbatch_and_1f1b_holds_p_minus_k(pp: int, m: int) -> None:
    times = uniform(pp, 1.0, 2.0)
    gpipe = price_pipeline("gpipe", pp, 1, m, times)
    assert gpipe.peak_inflight_microbatches == (m,) * pp
    one_f = price_pipeline("1f1b", pp, 1, m, times)
    assert one_f.peak_inflight_microbatches == tuple(pp - k for k in range(pp))
    assert one_f.peak_activation_bytes == tuple(float(pp - k) for k in range(pp))


@pytest.mark.parametrize(("pp", "m"), [(4, 8), (4, 12), (8, 24), (8, 64), (16, 48)])
def test_zb_h1_idles_a_third_of_1f1b(pp: int, m: int) -> None:
    t = 1.0
    h1 = price_pipeline("zb-h1", pp, 1, m, uniform(pp, t, t, t))
    one_f = price_pipeline("1f1b", pp, 1, m, uniform(pp, t, t, t))
    assert h1.makespan_s == pytest.approx((3 * m + pp - 1) * t, rel=1e-12)
    for k in range(pp):
        assert h1.idle_s[k] == pytest.approx((pp - 1 - k) * t, abs=1e-9)
        assert one_f.idle_s[k] == pytest.approx(3 * (pp - 1 - k) * t, abs=1e-9)
    assert h1.peak_inflight_microbatches == (pp,) * pp  # 1F1B's peak (rank 0): the paper's p M_B


@pytest.mark.parametrize(("pp", "m"), [(4, 7), (4, 12), (8, 15), (8, 24), (16, 48)])
def test_zb_h2_has_no_idle_between_first_and_last_action(pp: int, m: int) -> None:
    t = 2.0
    h2 = price_pipeline("zb-h2", pp, 1, m, uniform(pp, t, t, t))
    assert max(h2.idle_s) == pytest.approx(0.0, abs=1e-9)
    assert h2.makespan_s == pytest.approx((3 * m + pp - 1) * t, rel=1e-12)
    assert h2.peak_inflight_microbatches == (2 * pp - 1,) * pp  # the paper's (2p - 1) M_B


def test_zb_h2_idle_with_p2p_stays_within_two_hops_per_downstream_rank() -> None:
    pp, m, c = 8, 24, 0.01
    h2 = price_pipeline("zb-h2", pp, 1, m, uniform(pp, 1.0, 1.0, 1.0, p2p=c))
    for k in range(pp):
        assert h2.idle_s[k] <= 2 * (pp - 1 - k) * c + 1e-9


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("kind", ["forward", "backward"])
def test_perturbed_stage_moves_makespan_along_the_critical_path(stage: int, kind: str) -> None:
    """1F1B, P = 4, M = 8, uniform F = 1, B = 2, no p2p. Slowing stage j by delta makes it the
    bottleneck; the critical path then takes microbatch 0's pass through stage j once in the
    fill, then stage j's M - (P - j) steady-state passes back to back (its other warm-up
    passes have slack while it waits for the first backward). So the makespan grows by
    (M - P + j + 1) delta, for a forward or a backward perturbation alike."""
    pp, m, delta = 4, 8, 0.25
    f, b = [1.0] * pp, [2.0] * pp
    (f if kind == "forward" else b)[stage] += delta
    base = price_pipeline("1f1b", pp, 1, m, uniform(pp, 1.0, 2.0)).makespan_s
    slow = price_pipeline("1f1b", pp, 1, m, StageTimes(tuple(f), tuple(b), (0.0,) * pp, (1.0,) * pp, (0.0,) * 3))
    assert slow.makespan_s - base == pytest.approx((m - pp + stage + 1) * delta, rel=1e-12)


def test_last_stage_extra_time_adds_once_per_microbatch() -> None:
    """A heavier last stage (logits) is 1F1B's bottleneck: it runs all 2M passes back to back
    after the first input arrives, so makespan = (P - 1) F + M (F_last + B_last) + (P - 1) B."""
    pp, m = 4, 8
    f, b = (1.0, 1.0, 1.0, 1.5), (2.0, 2.0, 2.0, 3.0)
    result = price_pipeline("1f1b", pp, 1, m, StageTimes(f, b, (0.0,) * pp, (1.0,) * pp, (0.0,) * 3))
    assert result.makespan_s == pytest.approx(3 * 1.0 + m * 4.5 + 3 * 2.0)


def test_p2p_time_is_free_between_stages_on_the_same_rank() -> None:
    """ZB-V's stages pp - 1 and pp sit on the last rank (torch hands over locally), so
    the p2p entry of that boundary never delays anything."""
    pp, m = 4, 8
    stages = 2 * pp
    base = uniform(stages, 1.0, 1.0, 1.0, p2p=0.1)
    p2p = list(base.p2p_s)
    p2p[pp - 1] = 50.0
    changed = StageTimes(base.forward_s, base.backward_input_s, base.backward_weight_s, base.activation_bytes, tuple(p2p))
    assert price_pipeline("zbv", pp, 2, m, changed).makespan_s == price_pipeline("zbv", pp, 2, m, base).makespan_s


def reference_makespan(schedule: Schedule, times: StageTimes) -> float:
    """A slow, obviously-correct simulator: repeatedly start any rank's next action whose input
    is done; a hop between two stages of the same rank costs no p2p time."""
    done: dict[tuple[str, int, int], float] = {}
    done_on: dict[tuple[str, int, int], int] = {}
    heads, free = [0] * schedule.pp, [0.0] * schedule.pp
    dur = {"F": times.forward_s, "B": times.backward_input_s, "W": times.backward_weight_s}
    while any(h < len(r) for h, r in zip(heads, schedule.ranks)):
        for r, actions in enumerate(schedule.ranks):
            if heads[r] == len(actions):
                continue
            a = actions[heads[r]]
            s = a.stage
            if a.kind == "F":
                need, hop = (("F", a.microbatch, s - 1), s - 1) if s else (None, None)
            elif a.kind in ("B", "BW"):
                last = s == schedule.num_stages - 1
                need, hop = (("F", a.microbatch, s), None) if last else (("G", a.microbatch, s + 1), s)
            else:
                need, hop = None, None
            if need is not None and need not in done:
                continue
            remote = hop is not None and done_on[need] != r
            ready = done.get(need, 0.0) + (times.p2p_s[hop] if remote else 0.0)
            d = dur["B"][s] + dur["W"][s] if a.kind == "BW" else dur[a.kind][s]
            free[r] = max(free[r], ready) + d
            key = ("G" if a.kind in ("B", "BW") else a.kind, a.microbatch, s)
            done[key], done_on[key] = free[r], r
            heads[r] += 1
    return max(free)


@pytest.mark.parametrize(("name", "pp", "v", "m"), [("1f1b", 8, 1, 256), ("1f1b", 48, 1, 64), ("interleaved-1f1b", 8, 2, 96), ("zbv", 6, 2, 120),
                                                    ("dualpipev", 4, 2, 16), ("chimera", 4, 1, 8), ("zb-h2", 5, 1, 11)])
def test_vectorised_simulator_matches_a_reference(name: str, pp: int, v: int, m: int) -> None:
    stages = pp * v
    f = tuple(1.0 + 0.13 * ((3 * j) % 5) for j in range(stages))
    times = StageTimes(f, tuple(1.7 * x for x in f), tuple(0.6 * x for x in f), (1.0,) * stages,
                       tuple(0.05 * (j % 3) for j in range(stages - 1)))
    schedule = generate_schedule(name, pp, v, m)
    assert simulate(schedule, times).makespan_s == pytest.approx(reference_makespan(schedule, times), rel=1e-12)
    if name == "1f1b":  # pp 48 is wide enough for the per-level numpy path, pp 8 runs the Python loop
        graph = schedule_graph(schedule)
        wide = graph.num_nodes >= LOOP_ACTIONS_PER_LEVEL * (len(graph.level_bounds) - 1)
        assert wide == (pp == 48)


def test_memory_timeline_peaks_at_the_in_flight_peak() -> None:
    pp, m = 4, 8
    times = StageTimes((1.0,) * pp, (1.0,) * pp, (1.0,) * pp, (3.0, 2.0, 2.0, 5.0), (0.0,) * 3)
    result = simulate(generate_schedule("zb-h2", pp, 1, m), times)
    for rank in range(pp):
        peak = max(held for _, held in result.memory_timeline(rank))
        assert peak == result.peak_activation_bytes[rank] == result.peak_inflight_microbatches[rank] * times.activation_bytes[rank]
        assert result.memory_timeline(rank)[-1][1] == 0.0


def test_deadlocking_order_is_rejected() -> None:
    """Rank 0 waits for microbatch 1's gradient before sending microbatch 1's activation."""
    rank0 = (Action("F", 0, 0), Action("BW", 1, 0), Action("F", 1, 0), Action("BW", 0, 0))
    rank1 = (Action("F", 0, 1), Action("BW", 0, 1), Action("F", 1, 1), Action("BW", 1, 1))
    with pytest.raises(PlanError, match="deadlocks"):
        simulate(Schedule("custom", 2, 1, 2, (rank0, rank1)), uniform(2, 1.0, 1.0))


def test_stage_times_of_the_wrong_length_are_rejected() -> None:
    with pytest.raises(PlanError, match="forward_s has 3 entries"):
        price_pipeline("1f1b", 4, 1, 8, uniform(3, 1.0, 1.0))


def test_retained_bytes_are_held_from_b_to_w() -> None:
    """One stage, F0 F1 B0 B1 W0 W1, activations 10 and 3 retained from B to W: the running sum is
    10, 20, 23, 26, 13, 0, so the peak is 26 (20 without the retained bytes, as a full backward)."""
    order = (Action("F", 0, 0), Action("F", 1, 0), Action("B", 0, 0), Action("B", 1, 0), Action("W", 0, 0), Action("W", 1, 0))
    schedule = Schedule("custom", 1, 1, 2, (order,))
    plain = StageTimes((1.0,), (1.0,), (1.0,), (10.0,), ())
    kept = StageTimes((1.0,), (1.0,), (1.0,), (10.0,), (), retained_bytes=(3.0,))
    assert simulate(schedule, plain).peak_activation_bytes == (20.0,)
    result = simulate(schedule, kept)
    assert result.peak_activation_bytes == (26.0,)
    assert max(held for _, held in result.memory_timeline(0)) == 26.0
    assert result.memory_timeline(0)[-1][1] == 0.0


def test_held_bytes_live_from_a_stages_first_weight_pass_to_its_last() -> None:
    """torch's interleaved 1F1B at pp 2, v 2, M 2: rank 0 runs F0s0 F1s0 F0s2 F1s2 BW0s2 BW1s2 BW0s0 BW1s0.
    Activations 10, 20, 30, 40 per microbatch on stages 0-3; held bytes 100, 200, 300, 400, of which 1, 2, 3, 4
    stay after the stage's last full backward. Rank 0's running sum (activations + held): 10, 20, 50, 80, then
    BW0s2 starts with 80 + 300 = 380 (its peak), ends at 350, BW1s2 ends at 20 + 3 = 23, BW0s0 starts with
    23 + 100 = 123. Rank 1 (F0s1 F1s1 F0s3 BW0s3 F1s3 BW1s3 BW0s1 BW1s1): 80 + 400 = 480 when BW0s3 starts.
    Counted through the whole step, the held bytes would add 400 and 600: the peaks would be 480 and 680."""
    schedule = generate_schedule("interleaved-1f1b", 2, 2, 2)
    assert [str(a.kind) + str(a.microbatch) + "s" + str(a.stage) for a in schedule.ranks[0]] == [
        "F0s0", "F1s0", "F0s2", "F1s2", "BW0s2", "BW1s2", "BW0s0", "BW1s0"]
    times = StageTimes((1.0,) * 4, (1.0,) * 4, (1.0,) * 4, (10.0, 20.0, 30.0, 40.0), (0.0,) * 3,
                       held_bytes=(100.0, 200.0, 300.0, 400.0), held_kept_bytes=(1.0, 2.0, 3.0, 4.0))
    result = simulate(schedule, times)
    assert result.peak_activation_bytes == (80.0, 80.0)
    assert result.peak_held_bytes == (300.0, 400.0)
    for rank, peak in enumerate((380.0, 480.0)):
        timeline = result.memory_timeline(rank)
        assert max(held for _, held in timeline) == peak
        assert timeline[-1][1] == (1.0 + 3.0, 2.0 + 4.0)[rank]  # the kept shards, to the step's end
    assert 123.0 in [held for _, held in result.memory_timeline(0)]


@pytest.mark.parametrize("name", ["gpipe", "1f1b", "zb-h1", "zb-h2"])
def test_with_one_stage_per_rank_the_held_bytes_add_to_the_activation_peak(name: str) -> None:
    """A rank's activations only fall from its first W or full backward on, so with one stage per rank their
    peak comes while the stage's held bytes live: the peak is the activation peak plus the held bytes, what the
    bounds take (``costmodels.pipeline_bound.bound_pipeline``)."""
    pp, m = 4, 8
    plain = StageTimes((1.0,) * pp, (1.0,) * pp, (1.0,) * pp, (3.0, 2.0, 2.0, 5.0), (0.0,) * 3, retained_bytes=(0.0, 1.0, 1.0, 1.0))
    held = StageTimes(plain.forward_s, plain.backward_input_s, plain.backward_weight_s, plain.activation_bytes, plain.p2p_s,
                      plain.retained_bytes, held_bytes=(50.0, 60.0, 70.0, 80.0), held_kept_bytes=(5.0, 6.0, 7.0, 8.0))
    schedule = generate_schedule(name, pp, 1, m)
    before, after = simulate(schedule, plain), simulate(schedule, held)
    assert after.peak_activation_bytes == before.peak_activation_bytes
    assert after.peak_held_bytes == held.held_bytes


def test_held_bytes_must_come_with_what_stays() -> None:
    times = StageTimes((1.0,) * 2, (1.0,) * 2, (1.0,) * 2, (1.0,) * 2, (0.0,), held_bytes=(2.0, 2.0))
    with pytest.raises(PlanError, match="go together"):
        price_pipeline("1f1b", 2, 1, 2, times)
    times = StageTimes((1.0,) * 2, (1.0,) * 2, (1.0,) * 2, (1.0,) * 2, (0.0,), held_bytes=(2.0, 2.0), held_kept_bytes=(3.0, 1.0))
    with pytest.raises(PlanError, match="keeps more than it holds"):
        price_pipeline("1f1b", 2, 1, 2, times)


def test_held_bytes_start_at_the_weight_pass_not_the_input_gradient() -> None:
    """torch's ``stage_backward_input`` takes gradients with respect to the stage's inputs only; the parameters'
    gradients appear in ``stage_backward_weight``, so a stage's held bytes start at its first W. One rank, two
    stages: F0s0 F0s1 B0s1 B0s0 W0s0 W0s1, activations 50 and 10, held 1 and 100 (none kept). From the W on:
    W0s0 starts with 60 + 1 = 61 and frees s0's 50 and its held 1 at its end (its last W), W0s1 starts with
    10 + 100 = 110, the peak. Had s1's held bytes started at its B, B0s1 would have started with 60 + 100 = 160."""
    order = (Action("F", 0, 0), Action("F", 0, 1), Action("B", 0, 1), Action("B", 0, 0), Action("W", 0, 0),
             Action("W", 0, 1))
    schedule = Schedule("custom", 1, 2, 1, (order,))
    times = StageTimes((1.0, 1.0), (1.0, 1.0), (1.0, 1.0), (50.0, 10.0), (0.0,), held_bytes=(1.0, 100.0),
                       held_kept_bytes=(0.0, 0.0))
    result = simulate(schedule, times)
    assert (result.peak_activation_bytes, result.peak_held_bytes) == ((10.0,), (100.0,))
    assert max(held for _, held in result.memory_timeline(0)) == 110.0


def test_memory_timeline_peaks_where_the_simulator_does() -> None:
    """The timeline's largest value is the simulated peak (activations and held bytes at it), on random shapes and
    times: its events are ordered by time with frees first, and times within a picosecond are one time (an action's
    end and the next one's start can differ in the last bit of their float sums: 1F1B pp 3, M 10 read a peak of
    4.02 where the simulator's was 2.68 before)."""
    import random

    from tests.costmodels.test_pipeline_bound import random_shape, random_times
    rng = random.Random(5)
    for _ in range(300):
        name, pp, v, m = random_shape(rng)
        t = random_times(rng, pp * v)
        held = tuple(rng.uniform(0.0, 20.0) for _ in range(pp * v))
        times = StageTimes(t.forward_s, t.backward_input_s, t.backward_weight_s, t.activation_bytes, t.p2p_s,
                           retained_bytes=tuple(rng.uniform(0.0, 3.0) for _ in range(pp * v)),
                           held_bytes=held, held_kept_bytes=tuple(h * 0.5 for h in held))
        result = simulate(generate_schedule(name, pp, v, m), times)
        for rank in range(pp):
            timeline = max([held for _, held in result.memory_timeline(rank)] + [0.0])
            assert timeline == pytest.approx(result.peak_activation_bytes[rank] + result.peak_held_bytes[rank], rel=1e-9)
