"""Ranks that time-share a node's cores (``ClusterSpec.concurrent_ranks_per_node``), hand-derived.

A node with C cores runs n ranks: the pipeline's action lists run under processor sharing
(``costmodels.processor_sharing``, ``costmodels.processor_sharing.timeshared_step_s``): never shorter than
the node's total work over C nor than the critical path at full speed, and longer than both where
the ranks that can run leave cores idle part of the time; a TP group of more ranks than cores is
slowed by tp / C even alone (``costmodels.layer_costs.tp_group_timeshare``). GPU clusters (field
unset) are unchanged.
"""

import pytest

from costmodels.estimate import estimate
from costmodels.layer_costs import RooflineTimes, tp_group_timeshare
from costmodels.overlap import comm_overlaps_compute
from costmodels.processor_sharing import shared_core_efficiency, timeshared_makespan_s, timeshared_step_s
from costmodels.runtime_costs import measured_runtime_costs
from costmodels.schedules.generate import generate_schedule
from costmodels.simulator import StageTimes
from profiles.profile_schema import RuntimeMeasurement, TimeSharePoint
from profiles.schema import ClusterSpec, ModelSpec, ParallelConfig, TrainSpec
from tests.costmodels.neutral_stack import neutral_stack
from tests.costmodels.unit_layers import UnitLayers


def cluster(cores: float | None, gpus_per_node: int = 8) -> ClusterSpec:
    """No link latency, (practically) infinite bandwidths: only compute is priced."""
    return ClusterSpec(
        name="test-node",
        gpu={"name": "cpu", "memory_gib": 5, "peak_tflops": {"fp32": 0.1}, "hbm_bandwidth_gbs": 1e12},
        gpus_per_node=gpus_per_node,
        intra_node={"bandwidth_gbs": 1e12, "latency_us": 0},
        inter_node={"bandwidth_gbs": 1e12, "latency_us": 0},
        concurrent_ranks_per_node=cores,
    )


def config(tp: int, pp: int, dp: int, m: int = 8) -> ParallelConfig:
    return ParallelConfig(tp=tp, pp=pp, dp=dp, mbs=1, num_microbatches=m, stage_layers=[8 // pp] * pp)


MODEL = ModelSpec(name="t", num_layers=8, hidden_size=256, num_attention_heads=8, vocab_size=1024, seq_len=128)


def unit_times(pp: int, f: float = 1.0, b: float = 1.0, w: float = 1.0) -> StageTimes:
    return StageTimes((f,) * pp, (b,) * pp, (w,) * pp, (0.0,) * pp, (0.0,) * (pp - 1))


def test_field_is_optional_and_unset_means_no_sharing():
    gpu = cluster(None)
    assert gpu.concurrent_ranks_per_node is None
    assert comm_overlaps_compute(gpu)
    assert not comm_overlaps_compute(cluster(2))
    schedule = generate_schedule("1f1b", 4, 1, 8)
    assert timeshared_step_s(gpu, config(1, 4, 1), schedule, unit_times(4), [0.0] * 4) == 0.0
    # 4 ranks on 4 cores: nobody waits for a core
    assert timeshared_step_s(cluster(4), config(1, 4, 1), schedule, unit_times(4), [0.0] * 4) == 0.0


ONE_NODE = [[1.0, 1.0]]  # two pipeline ranks of one process each on one node


def test_processor_sharing_by_hand():
    """1F1B, P = 2, M = 2, F = 1 s, B + W = 2 s, on 1.5 cores. Rank 0 runs F0 alone (0-1); F1 on
    rank 0 and F0 on rank 1 share the cores at 0.75 each (1-2.333); rank 1's BW0 runs alone (to
    4.333); rank 0's BW0 and rank 1's F1 share (F1 ends at 5.667, BW0 has 1 s of work left); BW0 and
    rank 1's BW1 share (BW0 ends at 7, BW1 has 1 s left); BW1 alone (to 8); rank 0's BW1 alone (to 10).
    10 s: more than the critical path at full speed (3·3 = 9 s) and the work over the cores (12/1.5 = 8 s)."""
    schedule = generate_schedule("1f1b", 2, 1, 2)
    times = unit_times(2)
    assert timeshared_makespan_s(schedule, times, [0.0, 0.0], 1.5, ONE_NODE) == pytest.approx(10.0)
    assert timeshared_makespan_s(schedule, times, [0.0, 0.0], 2.0, ONE_NODE) == pytest.approx(9.0)  # no sharing
    assert timeshared_makespan_s(schedule, times, [0.0, 0.0], 1.0, ONE_NODE) == pytest.approx(12.0)  # all work, one core
    # tails run after each rank's list: rank 1's 0.25 s from 8 shares with rank 0's BW1 (0.75 each:
    # to 8.333, BW1 has 1.75 s left, alone to 10.083), then rank 0's 0.5 s alone: 10.583 s
    assert timeshared_makespan_s(schedule, times, [0.5, 0.25], 1.5, ONE_NODE) == pytest.approx(10.0 + 7 / 12)


def test_measured_time_sharing_loss_by_hand():
    """The same 1F1B (P = 2, M = 2, F = 1 s, B + W = 2 s) on one core: ideal sharing takes all the
    work, 12 s, of which three intervals (F1 with F0, BW0 with F1, BW0 with BW1) have both ranks
    computing, each 2 s. Where two processes share one core at efficiency 0.8 (the profile's point
    (2, 0.8)), the core delivers 0.8 in those intervals: each lasts 2.5 s, 13.5 s in all; a rank
    computing alone runs at full speed."""
    schedule = generate_schedule("1f1b", 2, 1, 2)
    times = unit_times(2)
    assert timeshared_makespan_s(schedule, times, [0.0, 0.0], 1.0, ONE_NODE, ((2.0, 0.8),)) == pytest.approx(13.5)
    assert timeshared_makespan_s(schedule, times, [0.0, 0.0], 1.0, ONE_NODE, ()) == pytest.approx(12.0)
    # 2 ranks on 2 cores never oversubscribe: the loss does not apply
    assert timeshared_makespan_s(schedule, times, [0.0, 0.0], 2.0, ONE_NODE, ((2.0, 0.8),)) == pytest.approx(9.0)


def test_shared_core_efficiency_interpolates_the_measured_points():
    points = ((2.0, 0.9), (4.0, 0.8))
    assert shared_core_efficiency(points, 1.0) == 1.0 and shared_core_efficiency((), 3.0) == 1.0
    assert shared_core_efficiency(points, 1.5) == pytest.approx(0.95)  # from e(1) = 1
    assert shared_core_efficiency(points, 3.0) == pytest.approx(0.85)
    assert shared_core_efficiency(points, 8.0) == pytest.approx(0.8)  # held beyond the last point
    assert shared_core_efficiency(((2.0, 1.04),), 2.0) == 1.0  # a noisy gain is not priced as one
    points_measured = [TimeSharePoint(processes_per_core=k, efficiency=e) for k, e in points]
    measured = RuntimeMeasurement(pipeline_action_overhead_s=0.0, timeshare_efficiency=points_measured)
    assert measured_runtime_costs(None, measured).timeshare_efficiency == points


def test_each_node_shares_its_own_cores():
    """1F1B, P = 2, M = 2 (F 1 s, BW 2 s) with both replicas of stage 0 on node 0 and both of stage 1
    on node 1, one core per node: a rank never shares its node with the other stage, so every action
    runs at half speed, the plain simulation's 9 s doubled: 18 s. One replica of each stage per node
    instead (load 1 and 1 on each): alone a rank runs at full speed, beside the other at half:
    F0 (0-1), F1 and F0' (to 3), BW0' alone (to 5), BW0 and F1' (F1' ends at 7, BW0 has 1 s left),
    BW0 and BW1' (BW0 ends at 9, BW1' has 1 s left), BW1' alone (to 10), BW1 alone (to 12)."""
    schedule = generate_schedule("1f1b", 2, 1, 2)
    assert timeshared_makespan_s(schedule, unit_times(2), [0.0, 0.0], 1.0, [[2.0, 0.0], [0.0, 2.0]]) == pytest.approx(18.0)
    assert timeshared_makespan_s(schedule, unit_times(2), [0.0, 0.0], 1.0, [[1.0, 1.0], [1.0, 1.0]]) == pytest.approx(12.0)


def test_replicas_and_tp_groups_want_their_cores():
    """dp replicas run the same list at once: tp1 pp2 dp2 on 2 cores is pp2 on 1 core (12 s above);
    a TP group of 2 wants 2 cores: tp2 pp2 on 2 cores is also 12 s; tp4 alone on 2 cores wants
    min(4, 2) = 2 cores and is never shared (its times already hold the sharing inside the group)."""
    schedule = generate_schedule("1f1b", 2, 1, 2)
    times = unit_times(2)
    assert timeshared_step_s(cluster(2), config(1, 2, 2), schedule, times, [0.0, 0.0]) == pytest.approx(12.0)
    assert timeshared_step_s(cluster(2), config(2, 2, 1), schedule, times, [0.0, 0.0]) == pytest.approx(12.0)
    lone = generate_schedule("1f1b", 1, 1, 2)
    assert timeshared_step_s(cluster(2), config(4, 1, 1), lone, unit_times(1), [0.0]) == 0.0


def test_tp_group_timeshare():
    assert tp_group_timeshare(cluster(None), 8) == 1.0
    assert tp_group_timeshare(cluster(2), 1) == 1.0
    assert tp_group_timeshare(cluster(2), 2) == 1.0
    assert tp_group_timeshare(cluster(2), 4) == 2.0
    assert tp_group_timeshare(cluster(2, gpus_per_node=8), 16) == 4.0  # 8 of its ranks per node


def test_roofline_scales_a_tp_group_larger_than_the_cores():
    train = TrainSpec(global_batch=8, seq_len=128, precision="fp32")
    alone = RooflineTimes(MODEL, cluster(None), train.precision, stack=neutral_stack()).transformer(4, 1, 128, False, "none")
    shared = RooflineTimes(MODEL, cluster(2), train.precision, stack=neutral_stack()).transformer(4, 1, 128, False, "none")
    assert shared.forward_s == pytest.approx(2 * alone.forward_s)
    assert shared.total_s == pytest.approx(2 * alone.total_s)


@pytest.mark.parametrize(
    "cores, expected_s",
    [
        # 1F1B, P = 4, M = 8, F = B = W = 1 s per stage (one layer each): critical path
        # (M + P - 1)(F + B + W) = 11 * 3 = 33 s; each rank is busy M * 3 = 24 s.
        (None, 33.0),  # accelerators: the critical path
        (4, 33.0),  # one core per rank: nothing shared
        # two cores: the 96 core-seconds of work plus 6 idle core-seconds while fewer than two ranks
        # can run (warm-up and cool-down), over 2 cores: 51 s (the work bound alone said 48 s)
        (2, 51.0),
        (1, 96.0),  # one core: 4 * 24 = 96 s
    ],
)
def test_estimate_prices_the_shared_cores(cores, expected_s):
    train = TrainSpec(global_batch=8, seq_len=128, precision="fp32")
    cfg = ParallelConfig(tp=1, pp=4, dp=1, mbs=1, num_microbatches=8, stage_layers=[1, 1, 1, 1])
    model = MODEL.model_copy(update={"num_layers": 4})
    got = estimate(model, cluster(cores), train, cfg, UnitLayers(), stack=neutral_stack())
    assert got.step_time_s == pytest.approx(expected_s, rel=1e-6)


def test_a_bounding_pricer_keeps_the_work_bound_below_the_exact_price():
    """The search's composed bound (``bound_pipeline``, no action list) takes the work bound 4·24/2 =
    48 s for the case above; the exact price under processor sharing is 51 s, never less."""
    from costmodels.pipeline_bound import bound_pipeline

    train = TrainSpec(global_batch=8, seq_len=128, precision="fp32")
    cfg = ParallelConfig(tp=1, pp=4, dp=1, mbs=1, num_microbatches=8, stage_layers=[1, 1, 1, 1])
    model = MODEL.model_copy(update={"num_layers": 4})
    bound = estimate(model, cluster(2), train, cfg, UnitLayers(), bound_pipeline, stack=neutral_stack())
    exact = estimate(model, cluster(2), train, cfg, UnitLayers(), stack=neutral_stack())
    assert bound.step_time_s == pytest.approx(48.0) and exact.step_time_s == pytest.approx(51.0)
