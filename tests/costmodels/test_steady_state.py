"""Overlapped steps (a post-validated optimizer: ``costmodels.steady_state``) against hand-derived periods.

Uniform stages F = B = W = T, no p2p unless stated:
- ZB-H2 with M >= 2P reaches the work bound 3 M T once the fill and drain of one step overlap the
  next: Qi et al., ICLR 2024, Sec. 3 and 4 ("zero bubble" needs the optimizer synchronisation gone),
  where its makespan is (3M + P - 1) T;
- 1F1B, GPipe and ZB-H1 gain nothing: rank 0 starts the step and ends it last, so its span is the
  makespan ((M + P - 1) 3T, (3M + P - 1) T);
- a gap g (reduce, optimizer, overhead) on any one rank lengthens the period by g: every rank is on
  the step's critical cycle;
- with p2p c, ZB-H2's period is 3 M T + 2 (P - 1) c: one microbatch's forward up the pipeline and
  its gradient back down lie on the cycle.
"""

from __future__ import annotations

import pytest

from costmodels.estimate import estimate
from costmodels.schedules.generate import generate_schedule
from costmodels.simulator import StageTimes, rank_end_times_s, simulate
from costmodels.steady_state import steady_state_period_s, work_bound_period_s
from costmodels.step_time import exposed_sum_s
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ParallelConfig, TrainSpec


def uniform(stages: int, t: float = 1.0, p2p: float = 0.0) -> StageTimes:
    return StageTimes((t,) * stages, (t,) * stages, (t,) * stages, (1.0,) * stages, (p2p,) * (stages - 1))


@pytest.mark.parametrize(("pp", "m"), [(4, 8), (4, 12), (8, 16), (8, 24), (16, 32)])
def test_zb_h2_reaches_the_work_bound_when_steps_overlap(pp: int, m: int) -> None:
    schedule, times = generate_schedule("zb-h2", pp, 1, m), uniform(pp, 0.5)
    assert simulate(schedule, times).makespan_s == pytest.approx((3 * m + pp - 1) * 0.5, rel=1e-12)
    assert steady_state_period_s(schedule, times, [0.0] * pp) == pytest.approx(3 * m * 0.5, rel=1e-12)


@pytest.mark.parametrize(("name", "makespan"), [("1f1b", lambda p, m: 3 * (m + p - 1)), ("gpipe", lambda p, m: 3 * (m + p - 1)),
                                                 ("zb-h1", lambda p, m: 3 * m + p - 1)])
@pytest.mark.parametrize(("pp", "m"), [(4, 4), (4, 8), (8, 24)])
def test_schedules_whose_first_rank_spans_the_step_gain_nothing(name: str, makespan, pp: int, m: int) -> None:
    schedule, times = generate_schedule(name, pp, 1, m), uniform(pp)
    assert steady_state_period_s(schedule, times, [0.0] * pp) == pytest.approx(makespan(pp, m), rel=1e-12)


@pytest.mark.parametrize("rank", [0, 3, 7])
def test_a_gap_on_any_rank_lengthens_the_period_by_itself(rank: int) -> None:
    schedule, times = generate_schedule("zb-h2", 8, 1, 24), uniform(8)
    gaps = [0.0] * 8
    gaps[rank] = 2.0
    assert steady_state_period_s(schedule, times, gaps) == pytest.approx(72.0 + 2.0, rel=1e-12)
    assert steady_state_period_s(schedule, times, [0.25] * 8) == pytest.approx(72.25, rel=1e-12)


@pytest.mark.parametrize("p2p", [0.1, 0.3])
def test_p2p_round_trip_lies_on_the_cycle(p2p: float) -> None:
    pp, m = 8, 24
    schedule = generate_schedule("zb-h2", pp, 1, m)
    assert steady_state_period_s(schedule, uniform(pp, p2p=p2p), [0.0] * pp) == pytest.approx(3 * m + 2 * (pp - 1) * p2p, rel=1e-9)


def test_release_times_delay_each_rank_and_zero_release_is_the_simulation() -> None:
    schedule, times = generate_schedule("1f1b", 4, 1, 8), uniform(4)
    result = simulate(schedule, times)
    ends = [result.rank_timeline(r)[-1][2] for r in range(4)]
    assert rank_end_times_s(schedule, times, [0.0] * 4).tolist() == pytest.approx(ends)
    # the last rank's list starts with a forward that waits 3 T for the pipeline to fill: a release of 2 T hides in it
    assert rank_end_times_s(schedule, times, [0.0, 0.0, 0.0, 2.0]).tolist() == pytest.approx(ends)
    # rank 0 released 5 T late shifts every rank that depends on it by 5 T
    assert rank_end_times_s(schedule, times, [5.0, 0.0, 0.0, 0.0]).tolist() == pytest.approx([e + 5.0 for e in ends])


def test_work_bound_is_below_the_period() -> None:
    for name in ("1f1b", "zb-h1", "zb-h2"):
        schedule, times = generate_schedule(name, 4, 1, 8), StageTimes((1.0, 1.2, 0.8, 1.1), (1.3, 1.0, 1.2, 0.9),
                                                                        (0.7, 0.9, 1.0, 0.6), (1.0,) * 4, (0.05,) * 3)
        gaps = [0.3, 0.1, 0.0, 0.2]
        busy = simulate(schedule, times).busy_s
        assert work_bound_period_s(busy, gaps) <= steady_state_period_s(schedule, times, gaps) + 1e-12


def _zb_estimate(post_validated: bool, schedule: str = "zb-h2"):
    """gpt3-7.5b (36 layers) on 4 ranks, 8 microbatches, cut [10, 9, 9, 8]: the embedding's rank holds a layer
    more and the head's a layer fewer, so no rank stands out and the pipeline's fill and drain show."""
    stack = load_stack("zero-bubble-megatron")
    if not post_validated:
        stack = stack.with_changes({"optimizer_post_validation": None})
    model, cluster = load_model("gpt3-7.5b"), load_cluster("dgx-a100-80g")
    train = TrainSpec(global_batch=8, seq_len=2048, precision="fp16")
    cfg = ParallelConfig(stack=stack.name, tp=1, pp=4, dp=1, v=1, mbs=1, num_microbatches=8, schedule=schedule,
                         recompute="none", zero=0, stage_layers=[10, 9, 9, 8])
    return estimate(model, cluster, train, cfg, stack=stack)


def test_the_estimate_prices_post_validated_steps_at_their_period() -> None:
    """zero-bubble-megatron's ZB-H2 in fp16 (post-validated) costs less than the same step with a pipeline-wide
    synchronisation (2.1 % here), and its breakdown still adds up to the step; its 1F1B is the same either way."""
    overlapped, synced = _zb_estimate(True), _zb_estimate(False)
    assert overlapped.step_time_s < synced.step_time_s * 0.99
    assert overlapped.breakdown.bubble_s < synced.breakdown.bubble_s
    assert exposed_sum_s(overlapped.breakdown) == pytest.approx(overlapped.step_time_s, rel=1e-12)
    assert overlapped.breakdown.bubble_s >= 0
    assert overlapped.peak_memory_gib == synced.peak_memory_gib
    assert _zb_estimate(True, "1f1b").step_time_s == _zb_estimate(False, "1f1b").step_time_s


def test_waste_warning_reads_the_bubble_of_the_period_where_steps_overlap() -> None:
    """DESIGN's bubble_fraction is over one step's makespan; where steps overlap the step is the period, whose
    idle share is the breakdown's bubble: the warning reads that one."""
    from planner.search.explain import WASTE_BUBBLE_FRACTION, waste_warnings

    est = _zb_estimate(True)
    cfg = ParallelConfig(stack="zero-bubble-megatron", tp=1, pp=4, dp=1, v=1, mbs=1, num_microbatches=8, schedule="zb-h2",
                         recompute="none", zero=0, stage_layers=[10, 9, 9, 8])
    wasteful = est.model_copy(update={"bubble_fraction": WASTE_BUBBLE_FRACTION + 0.1})
    assert est.breakdown.bubble_s / est.step_time_s < WASTE_BUBBLE_FRACTION
    assert any("bubble" in w for w in waste_warnings(cfg, wasteful, 8))
    assert not any("bubble" in w for w in waste_warnings(cfg, wasteful, 8, steps_overlap=True))
