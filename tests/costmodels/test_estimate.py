"""``estimate(...)``: one configuration priced, checked against hand-derived numbers.

Layer times come from a stub (every transformer layer F = B = W = 1 s, embedding and head
free), so every figure below follows from the schedule, the cluster file and the formulas
cited in ``costmodels/estimate.py``.
"""

from __future__ import annotations

import pytest

from costmodels.comm import all_reduce_s, link_for
from costmodels.compute import memory_bound_time_s
from costmodels.estimate import ADAM_STEP_BYTES_PER_PARAM, GRAD_REDUCE_BYTES, estimate, memory_limit_gib, stage_times
from costmodels.layer_costs import ZERO_PASS, PassTimes
from costmodels.memory import GIB, stage_params
from profiles.schema import ClusterSpec, ModelSpec, ParallelConfig, TrainSpec

MODEL = ModelSpec(name="t", num_layers=8, hidden_size=256, num_attention_heads=8, vocab_size=1024, seq_len=128)
TRAIN = TrainSpec(global_batch=8, seq_len=128, precision="fp32")


def gpu_cluster(bandwidth_gbs: float = 1e12, latency_us: float = 0.0, margin: float = 0.0) -> ClusterSpec:
    """An accelerator cluster (comm overlaps compute) with the given links and a 16 GiB GPU."""
    return ClusterSpec(
        name="test",
        gpu={"name": "TEST-16G", "memory_gib": 16, "peak_tflops": {"fp32": 100.0}, "hbm_bandwidth_gbs": 1000.0},
        gpus_per_node=8,
        intra_node={"bandwidth_gbs": bandwidth_gbs, "latency_us": latency_us},
        inter_node={"bandwidth_gbs": bandwidth_gbs, "latency_us": latency_us},
        memory_safety_margin=margin,
    )


class UnitLayers:
    """F = B = W = 1 s per transformer layer; the embedding and the head cost nothing."""

    def transformer(self, tp, mbs, seq_len, sequence_parallel, recompute):
        return PassTimes(1.0, 1.0, 1.0)

    def embedding(self, tp, mbs, seq_len, sequence_parallel):
        return ZERO_PASS

    def head(self, tp, mbs, seq_len, sequence_parallel):
        return ZERO_PASS


def config(pp: int, dp: int, m: int, schedule: str = "1f1b", zero: int = 0) -> ParallelConfig:
    return ParallelConfig(tp=1, pp=pp, dp=dp, mbs=1, num_microbatches=m, schedule=schedule, zero=zero,
                          stage_layers=[8 // pp] * pp)


def optimizer_s(cluster: ClusterSpec, params: float) -> float:
    return memory_bound_time_s(cluster, params * ADAM_STEP_BYTES_PER_PARAM)


def test_one_stage_is_m_times_the_layer_work_plus_the_optimizer() -> None:
    cluster = gpu_cluster()
    est = estimate(MODEL, cluster, TRAIN, config(pp=1, dp=1, m=8), UnitLayers())
    params = stage_params(MODEL, 8, True, True, 1)
    # 8 microbatches x 8 layers x (F + B + W) = 192 s, no bubble, no DP traffic
    assert est.step_time_s == pytest.approx(192.0 + optimizer_s(cluster, params))
    assert est.bubble_fraction == 0.0
    assert est.breakdown.compute_s == pytest.approx(192.0)
    assert est.breakdown.optimizer_s == pytest.approx(optimizer_s(cluster, params))


def test_1f1b_pipeline_makespan_and_bubble() -> None:
    cluster = gpu_cluster()
    est = estimate(MODEL, cluster, TRAIN, config(pp=4, dp=1, m=8), UnitLayers())
    # 2 layers a stage: F = 2 s, B + W = 4 s; (M + P - 1) * 6 = 66 s; bubble (P - 1)/(M + P - 1) = 3/11
    first_rank_params = stage_params(MODEL, 2, True, False, 1)
    last_rank_params = stage_params(MODEL, 2, False, True, 1)
    assert est.bubble_fraction == pytest.approx(3 / 11)
    assert est.step_time_s == pytest.approx(66.0 + optimizer_s(cluster, max(first_rank_params, last_rank_params)))
    assert est.breakdown.bubble_s == pytest.approx(66.0 * 3 / 11)


def test_split_backward_moves_the_first_stage_backward_into_w() -> None:
    """torch's first stage has no input gradient to send: its whole backward runs as W."""
    times = stage_times(MODEL, gpu_cluster(), TRAIN, config(pp=4, dp=1, m=8, schedule="zb-h1"), UnitLayers())
    assert times.backward_input_s == (0.0, 2.0, 2.0, 2.0)
    assert times.backward_weight_s == (4.0, 2.0, 2.0, 2.0)
    plain = stage_times(MODEL, gpu_cluster(), TRAIN, config(pp=4, dp=1, m=8), UnitLayers())
    assert plain.backward_input_s == (2.0, 2.0, 2.0, 2.0)


def test_data_parallel_all_reduce_hides_behind_the_last_backward_and_shows_its_excess() -> None:
    """ZeRO-0: one all-reduce of the fp32 gradients, overlapped with the last microbatch's
    backward (B + W of every layer on the rank: 8 layers x 2 s = 16 s); only the excess shows."""
    params = stage_params(MODEL, 8, True, True, 1)
    for bandwidth_gbs in (1e3, 1e-3):
        cluster = gpu_cluster(bandwidth_gbs=bandwidth_gbs, latency_us=5.0)
        link = link_for(cluster, crosses_nodes=False)
        exposed = max(0.0, all_reduce_s(params * GRAD_REDUCE_BYTES, 2, link) - 16.0)
        est = estimate(MODEL, cluster, TrainSpec(global_batch=16, seq_len=128, precision="fp32"),
                       config(pp=1, dp=2, m=8), UnitLayers())
        assert est.breakdown.dp_comm_s == pytest.approx(exposed)
        assert est.step_time_s == pytest.approx(192.0 + exposed + optimizer_s(cluster, params))
    assert exposed > 0  # the slow link really exposes traffic


def test_memory_per_rank_is_the_sum_of_its_categories_and_fits_against_the_margin() -> None:
    cluster = gpu_cluster(margin=0.25)
    est = estimate(MODEL, cluster, TRAIN, config(pp=2, dp=1, m=4), UnitLayers())
    assert memory_limit_gib(cluster) == pytest.approx(12.0)
    assert est.memory_limit_gib == pytest.approx(12.0)
    for peak, parts in zip(est.peak_memory_gib, est.memory_breakdown_gib):
        assert peak == pytest.approx(sum(parts.values()), abs=1e-3)
    # fp32 weights 4 B + grads 4 B + Adam 8 B = 16 B per parameter with no ZeRO, 4 B + 4 B + 8 B / dp with ZeRO-1
    params0 = stage_params(MODEL, 4, True, False, 1)
    assert est.memory_breakdown_gib[0]["optimizer"] == pytest.approx(params0 * 8 / GIB, abs=5e-5)  # the breakdown keeps 4 decimals
    zero1 = estimate(MODEL, cluster, TrainSpec(global_batch=8, seq_len=128, precision="fp32"), config(pp=2, dp=2, m=2, zero=1),
                     UnitLayers())
    assert zero1.memory_breakdown_gib[0]["optimizer"] == pytest.approx(params0 * 8 / 2 / GIB, abs=5e-5)
    assert est.fits == (max(est.peak_memory_gib) <= 12.0)


def test_mfu_is_model_flops_over_peak() -> None:
    est = estimate(MODEL, gpu_cluster(), TRAIN, config(pp=1, dp=1, m=8), UnitLayers())
    assert est.mfu == pytest.approx(est.model_tflops_per_gpu / 100.0)
    assert est.tokens_per_s == pytest.approx(8 * 128 / est.step_time_s)


def test_estimate_reports_total_and_active_parameters() -> None:
    """Dense (GPT style: tied embedding, learned positions, SC21's 12h² + 13h per layer, final LayerNorm): equal;
    MoE: total less active is the experts a token does not use."""
    dense = estimate(MODEL, gpu_cluster(), TRAIN, config(2, 1, 4), UnitLayers())
    h, v, s = 256, 1024, 128
    assert dense.params_total == dense.params_active == v * h + s * h + 8 * (12 * h * h + 13 * h) + 2 * h
    moe = MODEL.model_copy(update={"num_experts": 8, "experts_per_token": 2, "moe_ffn_hidden_size": 512})
    priced = estimate(moe, gpu_cluster(), TRAIN, config(2, 1, 4), UnitLayers())
    expert = 2 * h * 512 + 512 + h  # GELU MLP with biases
    assert priced.params_total - priced.params_active == 8 * 6 * expert  # 6 of 8 experts idle per token, 8 layers
