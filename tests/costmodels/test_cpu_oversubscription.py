"""Ranks that time-share a node's cores (``ClusterSpec.concurrent_ranks_per_node``), hand-derived.

A node with C cores runs n ranks: the step cannot be shorter than the node's total work
over C (``costmodels.estimate.timeshared_compute_s``), nor than the pipeline's critical path
at full speed; a TP group of more ranks than cores is slowed by tp / C even alone
(``costmodels.layer_costs.tp_group_timeshare``). GPU clusters (field unset) are unchanged.
"""

import pytest

from costmodels.estimate import comm_overlaps_compute, estimate, timeshared_compute_s
from costmodels.layer_costs import RooflineTimes, tp_group_timeshare
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


def test_field_is_optional_and_unset_means_no_bound():
    gpu = cluster(None)
    assert gpu.concurrent_ranks_per_node is None
    assert comm_overlaps_compute(gpu)
    assert not comm_overlaps_compute(cluster(2))
    assert timeshared_compute_s(gpu, config(1, 4, 1), (1.0, 1.0, 1.0, 1.0), [0.0] * 4) == 0.0


def test_work_bound_pipeline_ranks():
    # 4 ranks on 2 cores: (0.1 + 0.1 + 0.1 + 0.2 busy + 4 x 0.01 optimizer) / 2 = 0.27 s
    got = timeshared_compute_s(cluster(2), config(1, 4, 1), (0.1, 0.1, 0.1, 0.2), [0.01] * 4)
    assert got == pytest.approx(0.27)


def test_work_bound_counts_dp_replicas_and_only_the_ranks_of_one_node():
    # tp1 pp2 dp2 on 2 cores: ranks (pp0,dp0), (pp0,dp1), (pp1,dp0), (pp1,dp1): (2*0.3 + 2*0.5) / 2 = 0.8
    assert timeshared_compute_s(cluster(2), config(1, 2, 2), (0.3, 0.5), [0.0, 0.0]) == pytest.approx(0.8)
    # pp4 dp4 = 16 ranks, 8 per node: node 0 holds pp ranks 0 and 1, four replicas each: (4*1 + 4*2) / 2 = 6
    assert timeshared_compute_s(cluster(2), config(1, 4, 4), (1.0, 2.0, 3.0, 4.0), [0.0] * 4) == pytest.approx(6.0)


def test_a_tp_group_counts_min_tp_cores_so_a_lone_group_is_not_charged_twice():
    # tp4 alone on 2 cores: its busy time already contains the sharing (tp_group_timeshare);
    # 4 ranks x 1.0 s x min(4, 2)/4 cores / 2 cores = 1.0 s, the busy time itself
    assert timeshared_compute_s(cluster(2), config(4, 1, 1), (1.0,), [0.0]) == pytest.approx(1.0)
    # two TP groups of 2 (tp2 pp2) on 2 cores take turns: 4 x 0.5 x 1 / 2 = 1.0 s
    assert timeshared_compute_s(cluster(2), config(2, 2, 1), (0.5, 0.5), [0.0, 0.0]) == pytest.approx(1.0)


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
        (4, 33.0),  # one core per rank: work bound 4 * 24 / 4 = 24 s < 33 s
        (2, 48.0),  # two cores: work bound 4 * 24 / 2 = 48 s > 33 s
        (1, 96.0),  # one core: 4 * 24 = 96 s
    ],
)
def test_estimate_takes_the_larger_of_critical_path_and_work_bound(cores, expected_s):
    train = TrainSpec(global_batch=8, seq_len=128, precision="fp32")
    cfg = ParallelConfig(tp=1, pp=4, dp=1, mbs=1, num_microbatches=8, stage_layers=[1, 1, 1, 1])
    model = MODEL.model_copy(update={"num_layers": 4})
    got = estimate(model, cluster(cores), train, cfg, UnitLayers(), stack=neutral_stack())
    assert got.step_time_s == pytest.approx(expected_s, rel=1e-6)
