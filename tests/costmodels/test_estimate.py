"""``estimate(...)``: one configuration priced, checked against hand-derived numbers.

Layer times come from a stub (every transformer layer F = B = W = 1 s, embedding and head
free), so every figure below follows from the schedule, the cluster file, the stack's
overlaps and the formulas cited in ``costmodels/estimate.py``, ``data_parallel.py`` and
``step_time.py``.
"""

from __future__ import annotations

import pytest

from costmodels.comm import GroupPlacement, collective_s, network_for
from costmodels.compute import memory_bound_time_s
from costmodels.estimate import ADAM_STEP_BYTES_PER_PARAM, estimate, stage_times
from costmodels.memory import GIB, stage_params
from costmodels.overlap import contention_s
from costmodels.rank_memory import memory_limit_gib
from costmodels.step_time import exposed_sum_s
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ClusterSpec, ModelSpec, ParallelConfig, TrainSpec
from profiles.stack_schema import StackSpec
from tests.costmodels.neutral_stack import neutral_stack
from tests.costmodels.unit_layers import UnitLayers

MODEL = ModelSpec(name="t", num_layers=8, hidden_size=256, num_attention_heads=8, vocab_size=1024, seq_len=128)
TRAIN = TrainSpec(global_batch=8, seq_len=128, precision="fp32")
FP32_GRAD_BYTES = 4


def gpu_cluster(bandwidth_gbs: float = 1e12, latency_us: float = 0.0, margin: float = 0.0, **efficiency) -> ClusterSpec:
    """An accelerator cluster (comm overlaps compute) with the given links and a 16 GiB GPU."""
    return ClusterSpec(
        name="test",
        gpu={"name": "TEST-16G", "memory_gib": 16, "peak_tflops": {"fp32": 100.0}, "hbm_bandwidth_gbs": 1000.0},
        gpus_per_node=8,
        intra_node={"bandwidth_gbs": bandwidth_gbs, "latency_us": latency_us},
        inter_node={"bandwidth_gbs": bandwidth_gbs, "latency_us": latency_us},
        memory_safety_margin=margin,
        efficiency=efficiency,
    )


def Stack(**overlap) -> StackSpec:
    """A stack with these overlaps (bucketed DP reduce unless given); the stub layers make its
    kernels irrelevant."""
    return neutral_stack(**overlap)


def config(pp: int, dp: int, m: int, schedule: str = "1f1b", zero: int = 0) -> ParallelConfig:
    return ParallelConfig(tp=1, pp=pp, dp=dp, mbs=1, num_microbatches=m, schedule=schedule, zero=zero,
                          stage_layers=[8 // pp] * pp)


def optimizer_s(cluster: ClusterSpec, params: float) -> float:
    return memory_bound_time_s(cluster, params * ADAM_STEP_BYTES_PER_PARAM)


def intra_node(size: int) -> GroupPlacement:
    return GroupPlacement(size=size, ranks_per_node=size, nodes=1, node_senders=size)


def test_one_stage_is_m_times_the_layer_work_plus_the_optimizer() -> None:
    cluster = gpu_cluster()
    est = estimate(MODEL, cluster, TRAIN, config(pp=1, dp=1, m=8), UnitLayers(), stack=Stack())
    params = stage_params(MODEL, 8, True, True, 1)
    # 8 microbatches x 8 layers x (F + B + W) = 192 s, no bubble, no DP traffic
    assert est.step_time_s == pytest.approx(192.0 + optimizer_s(cluster, params))
    assert est.bubble_fraction == 0.0
    assert est.breakdown.compute_s == pytest.approx(192.0)
    assert est.breakdown.optimizer_s == pytest.approx(optimizer_s(cluster, params))


def test_1f1b_pipeline_makespan_and_bubble() -> None:
    cluster = gpu_cluster()
    est = estimate(MODEL, cluster, TRAIN, config(pp=4, dp=1, m=8), UnitLayers(), stack=Stack())
    # 2 layers a stage: F = 2 s, B + W = 4 s; (M + P - 1) * 6 = 66 s; bubble (P - 1)/(M + P - 1) = 3/11
    first_rank_params = stage_params(MODEL, 2, True, False, 1)
    last_rank_params = stage_params(MODEL, 2, False, True, 1)
    assert est.bubble_fraction == pytest.approx(3 / 11)
    assert est.step_time_s == pytest.approx(66.0 + optimizer_s(cluster, max(first_rank_params, last_rank_params)))
    # the critical rank (rank 0, whose last backward ends the pipeline) waits 3 x 6 s in all:
    # 3 x 2 s before its first F and 3 x 4 s in the drain's gaps
    assert est.breakdown.bubble_s == pytest.approx(18.0)
    assert est.breakdown.compute_s == pytest.approx(48.0)


def test_split_backward_moves_the_first_stage_backward_into_w() -> None:
    """torch's first stage has no input gradient to send: its whole backward runs as W."""
    times = stage_times(MODEL, gpu_cluster(), TRAIN, config(pp=4, dp=1, m=8, schedule="zb-h1"), UnitLayers(), stack=Stack())
    assert times.backward_input_s == (0.0, 2.0, 2.0, 2.0)
    assert times.backward_weight_s == (4.0, 2.0, 2.0, 2.0)
    plain = stage_times(MODEL, gpu_cluster(), TRAIN, config(pp=4, dp=1, m=8), UnitLayers(), stack=Stack())
    assert plain.backward_input_s == (2.0, 2.0, 2.0, 2.0)


@pytest.mark.parametrize("bandwidth_gbs", [1e3, 1e-3])
def test_bucketed_reduce_hides_all_but_one_bucket_behind_the_last_backward(bandwidth_gbs: float) -> None:
    """ZeRO-0, one stage, dp = 2 inside a node: the all-reduce of the fp32 gradients overlaps the
    last microbatch's backward (B + W of 8 layers = 16 s); the last bucket (Megatron's 40M
    parameters: here the whole model, 1 bucket) cannot, so the whole reduce shows when it is
    one bucket, and with 2 buckets of 1/2 each (two all-reduces, each paying the ring's latency) the
    excess over 16 s or one bucket shows, and what hides costs its contention (the compute beside it
    18.9 % slower: ``costmodels.data_parallel.contention_s``)."""
    cluster = gpu_cluster(bandwidth_gbs=bandwidth_gbs, latency_us=5.0)
    network = network_for(cluster)
    params = stage_params(MODEL, 8, True, True, 1)
    train = TrainSpec(global_batch=16, seq_len=128, precision="fp32")
    reduce_s = collective_s("all_reduce", params * FP32_GRAD_BYTES, intra_node(2), network)
    one_bucket = estimate(MODEL, cluster, train, config(pp=1, dp=2, m=8), UnitLayers(), stack=Stack())
    assert one_bucket.breakdown.dp_comm_s == pytest.approx(reduce_s)
    half = params / 2
    two_buckets = estimate(MODEL, cluster, train, config(pp=1, dp=2, m=8), UnitLayers(),
                           stack=Stack(dp_bucket_params=int(half) + 1))
    last_bucket_s = collective_s("all_reduce", half * FP32_GRAD_BYTES, intra_node(2), network)
    reduce_in_two_s = 2 * last_bucket_s
    assert reduce_in_two_s == pytest.approx(reduce_s + 2 * 5e-6)  # the bytes once, the latency twice
    exposed = min(reduce_in_two_s, max(last_bucket_s, reduce_in_two_s - 16.0))
    exposed += contention_s(reduce_in_two_s - exposed)  # what hides slows the backward beside it
    assert two_buckets.breakdown.dp_comm_s == pytest.approx(exposed)
    assert two_buckets.step_time_s == pytest.approx(192.0 + exposed + optimizer_s(cluster, params))
    assert two_buckets.breakdown.overlapped.get("dp_comm_s", 0.0) == pytest.approx(reduce_in_two_s - exposed)


def test_reduce_after_backward_is_all_exposed() -> None:
    """torch's REDUCE_GRAD after the stage's backward: nothing hides. FSDP2 reduces each of the stage's 9 units
    (8 blocks, and the root with the embedding and head) apart: the bytes once, the 2-rank ring's 2 steps of
    5 us latency 9 times."""
    cluster = gpu_cluster(bandwidth_gbs=1e-3, latency_us=5.0)
    params = stage_params(MODEL, 8, True, True, 1)
    train = TrainSpec(global_batch=16, seq_len=128, precision="fp32")
    reduce_s = collective_s("all_reduce", params * FP32_GRAD_BYTES, intra_node(2), network_for(cluster)) + 8 * 2 * 5e-6
    est = estimate(MODEL, cluster, train, config(pp=1, dp=2, m=8), UnitLayers(), stack=Stack(dp_grad_reduce="after_backward"))
    assert est.breakdown.dp_comm_s == pytest.approx(reduce_s)
    assert est.step_time_s == pytest.approx(192.0 + reduce_s + optimizer_s(cluster, params))


def test_a_rank_that_ends_early_reduces_while_the_pipeline_drains() -> None:
    """1F1B, pp = 2, M = 4, F = 4, B + W = 8 s per stage: (M + P - 1) x 12 = 60 s; rank 1's last
    backward ends at 52 s, rank 0's at 60 s. Reducing after the backward, rank 1's reduce is
    hidden by the drain (52 + r1 < 60 + r0); rank 0's is exposed in full and sets the step.
    Two GPUs a node: the DP pairs are inside a node (slow link), the p2p crosses nodes (fast)."""
    cluster = ClusterSpec.model_validate({**gpu_cluster(bandwidth_gbs=0.01, latency_us=0.0).model_dump(), "gpus_per_node": 2,
                                          "inter_node": {"bandwidth_gbs": 1e12, "latency_us": 0.0}})
    train = TrainSpec(global_batch=8, seq_len=128, precision="fp32")
    cfg = config(pp=2, dp=2, m=4)
    est = estimate(MODEL, cluster, train, cfg, UnitLayers(), stack=Stack(dp_grad_reduce="after_backward"))
    p0, p1 = stage_params(MODEL, 4, True, False, 1), stage_params(MODEL, 4, False, True, 1)
    r0 = collective_s("all_reduce", p0 * FP32_GRAD_BYTES, intra_node(2), network_for(cluster))
    r1 = collective_s("all_reduce", p1 * FP32_GRAD_BYTES, intra_node(2), network_for(cluster))
    assert r1 > 1.0 and 52.0 + r1 < 60.0 + r0
    opt = max(optimizer_s(cluster, p0), optimizer_s(cluster, p1))
    assert est.step_time_s == pytest.approx(60.0 + r0 + opt)
    assert est.breakdown.dp_comm_s == pytest.approx(r0)


def test_zero1_parameter_gather_after_the_step_or_under_the_first_forward() -> None:
    """ZeRO-1, one stage: reduce-scatter of the fp32 gradients, then the all-gather of the fp32
    weights, all exposed after the step, or, gathered unit by unit (FSDP2: 8 blocks and the root
    with the embedding and head, 9 pieces), all but its first unit hidden under the first forward
    (8 s) when overlapped."""
    cluster = gpu_cluster(bandwidth_gbs=1e-3, latency_us=0.0)
    network = network_for(cluster)
    params = stage_params(MODEL, 8, True, True, 1)
    train = TrainSpec(global_batch=16, seq_len=128, precision="fp32")
    reduce_s = collective_s("reduce_scatter", params * FP32_GRAD_BYTES, intra_node(2), network)
    gather_s = collective_s("all_gather", params * 4, intra_node(2), network)
    after = estimate(MODEL, cluster, train, config(pp=1, dp=2, m=8, zero=1), UnitLayers(),
                     stack=Stack(dp_grad_reduce="after_backward", param_gather="after_step"))
    assert after.breakdown.dp_comm_s == pytest.approx(reduce_s + gather_s)
    overlapped = estimate(MODEL, cluster, train, config(pp=1, dp=2, m=8, zero=1), UnitLayers(),
                          stack=Stack(dp_grad_reduce="after_backward", param_gather="overlapped"))
    first_s = collective_s("all_gather", params / 9 * 4, intra_node(2), network)
    gather_exposed = max(first_s, gather_s - 8.0)
    gather_exposed += contention_s(gather_s - gather_exposed)  # the first forward runs slower beside the rest
    assert overlapped.breakdown.dp_comm_s == pytest.approx(reduce_s + gather_exposed)


def test_blocking_p2p_holds_the_sender_and_overlapped_p2p_delays_the_receiver() -> None:
    """1F1B, pp = 2, M = 2, 4 layers a stage (F = 4, B + W = 8 s), a 1 s send each way.

    Exposed (blocking): stage 0's F = 5 and stage 1's B + W = 9, no delay on the edges. Rank 0
    runs F [0, 5], F [5, 10]; rank 1 F [5, 9], BW [9, 18], F [18, 22], BW [22, 31]; rank 0
    BW [18, 26], BW [31, 39]: 39 s. Overlapped: the send delays the receiver by 1 s and holds
    no one. Rank 0 F [0, 4], [4, 8]; rank 1 F [5, 9], BW [9, 17], F [17, 21], BW [21, 29];
    rank 0 BW [18, 26], [30, 38]: 38 s."""
    p2p_bytes = 4 * 128 * 256  # fp32 s·b·h
    slow = gpu_cluster(bandwidth_gbs=p2p_bytes / 1e9 / 0.8, latency_us=0.0)  # 1 s per send at the 0.8 collective efficiency
    cfg = ParallelConfig(tp=1, pp=2, dp=1, mbs=1, num_microbatches=2, stage_layers=[4, 4])
    train = TrainSpec(global_batch=2, seq_len=128, precision="fp32")
    times = stage_times(MODEL, slow, train, cfg, UnitLayers(), stack=Stack(p2p="exposed"))
    assert times.forward_s == pytest.approx((5.0, 4.0)) and times.p2p_s == (0.0,)
    assert times.backward_input_s == pytest.approx((4.0, 5.0))
    opt = max(optimizer_s(slow, stage_params(MODEL, 4, True, False, 1)), optimizer_s(slow, stage_params(MODEL, 4, False, True, 1)))
    exposed = estimate(MODEL, slow, train, cfg, UnitLayers(), stack=Stack(p2p="exposed"))
    overlapped = estimate(MODEL, slow, train, cfg, UnitLayers(), stack=Stack(p2p="overlapped"))
    assert exposed.step_time_s == pytest.approx(39.0 + opt)
    assert overlapped.step_time_s == pytest.approx(38.0 + opt)
    assert exposed.breakdown.pp_comm_s == pytest.approx(2.0)  # rank 0's two forward sends
    assert overlapped.breakdown.pp_comm_s == 0.0 and overlapped.breakdown.overlapped["pp_comm_s"] == pytest.approx(2.0)


def test_action_overhead_is_paid_per_pipeline_action() -> None:
    """1 ms per action from the GPU family plus 2 ms from the stack: one stage, 8 microbatches,
    F and a full backward (B and W in one action, 1F1B): 16 actions x 3 ms."""
    cluster = gpu_cluster(action_overhead_s=1e-3)
    est = estimate(MODEL, cluster, TRAIN, config(pp=1, dp=1, m=8), UnitLayers(), stack=Stack(host_overhead_per_action_s=2e-3))
    params = stage_params(MODEL, 8, True, True, 1)
    assert est.step_time_s == pytest.approx(192.0 + 16 * 3e-3 + optimizer_s(cluster, params))
    assert est.breakdown.overhead_s == pytest.approx(16 * 3e-3)
    # zero-bubble schedules split the backward: three actions per microbatch and stage
    split = estimate(MODEL, cluster, TRAIN, config(pp=1, dp=1, m=8, schedule="gpipe"), UnitLayers(),
                     stack=Stack(host_overhead_per_action_s=2e-3))
    assert split.breakdown.overhead_s == pytest.approx(16 * 3e-3)


def test_a_step_replayed_as_one_cuda_graph_pays_no_per_action_cost() -> None:
    """A whole-iteration CUDA graph issues no pipeline action from the host (StackOverlap.cuda_graphs full_iteration):
    the 16 actions above pay neither the family's 1 ms nor the stack's 2 ms; per-layer graphs leave the schedule on
    the host and pay both, 48 ms."""
    cluster = gpu_cluster(action_overhead_s=1e-3)
    params = stage_params(MODEL, 8, True, True, 1)
    for graphs, overhead_s in (("full_iteration", 0.0), ("per_layer", 16 * 3e-3)):
        stack = Stack(host_overhead_per_action_s=2e-3).with_changes({"overlap": {"cuda_graphs": graphs}, "emit": "none"})
        est = estimate(MODEL, cluster, TRAIN, config(pp=1, dp=1, m=8), UnitLayers(), stack=stack)
        assert est.breakdown.overhead_s == pytest.approx(overhead_s), graphs
        assert est.step_time_s == pytest.approx(192.0 + overhead_s + optimizer_s(cluster, params)), graphs


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe", "zb-h1", "zb-h2", "interleaved-1f1b", "zbv"])
@pytest.mark.parametrize("dp_grad_reduce", ["bucketed", "after_backward", "after_schedule"])
def test_exposed_parts_add_up_to_the_step(schedule: str, dp_grad_reduce: str) -> None:
    cluster = gpu_cluster(bandwidth_gbs=0.01, latency_us=10.0, action_overhead_s=1e-3)
    v = 2 if schedule in {"interleaved-1f1b", "zbv"} else 1
    cfg = ParallelConfig(tp=1, pp=2, dp=2, v=v, mbs=1, num_microbatches=4, schedule=schedule, zero=1,
                         stage_layers=[8 // (2 * v)] * (2 * v))
    train = TrainSpec(global_batch=8, seq_len=128, precision="fp32")
    est = estimate(MODEL, cluster, train, cfg, UnitLayers(), stack=Stack(dp_grad_reduce=dp_grad_reduce))
    assert exposed_sum_s(est.breakdown) == pytest.approx(est.step_time_s, rel=1e-12)
    assert est.breakdown.bubble_s >= 0 and est.breakdown.compute_s > 0


def test_memory_per_rank_is_the_sum_of_its_categories_and_fits_against_the_margin() -> None:
    cluster = gpu_cluster(margin=0.25)
    est = estimate(MODEL, cluster, TRAIN, config(pp=2, dp=1, m=4), UnitLayers(), stack=Stack())
    assert memory_limit_gib(cluster) == pytest.approx(12.0)
    assert est.memory_limit_gib == pytest.approx(12.0)
    for peak, parts in zip(est.peak_memory_gib, est.memory_breakdown_gib):
        assert peak == pytest.approx(sum(parts.values()), abs=1e-3)
    # fp32 weights 4 B + grads 4 B + Adam 8 B = 16 B per parameter with no ZeRO, 4 B + 4 B + 8 B / dp with ZeRO-1
    params0 = stage_params(MODEL, 4, True, False, 1)
    assert est.memory_breakdown_gib[0]["optimizer"] == pytest.approx(params0 * 8 / GIB, abs=5e-5)  # the breakdown keeps 4 decimals
    zero1 = estimate(MODEL, cluster, TrainSpec(global_batch=8, seq_len=128, precision="fp32"), config(pp=2, dp=2, m=2, zero=1),
                     UnitLayers(), stack=Stack())
    assert zero1.memory_breakdown_gib[0]["optimizer"] == pytest.approx(params0 * 8 / 2 / GIB, abs=5e-5)
    assert est.fits == (max(est.peak_memory_gib) <= 12.0)


def test_mfu_is_model_flops_over_peak() -> None:
    est = estimate(MODEL, gpu_cluster(), TRAIN, config(pp=1, dp=1, m=8), UnitLayers(), stack=Stack())
    assert est.mfu == pytest.approx(est.model_tflops_per_gpu / 100.0)
    assert est.tokens_per_s == pytest.approx(8 * 128 / est.step_time_s)


def test_estimate_reports_total_and_active_parameters() -> None:
    """Dense (GPT style: tied embedding, learned positions, SC21's 12h² + 13h per layer, final LayerNorm): equal;
    MoE: total less active is the experts a token does not use."""
    dense = estimate(MODEL, gpu_cluster(), TRAIN, config(2, 1, 4), UnitLayers(), stack=Stack())
    h, v, s = 256, 1024, 128
    assert dense.params_total == dense.params_active == v * h + s * h + 8 * (12 * h * h + 13 * h) + 2 * h
    moe = MODEL.model_copy(update={"num_experts": 8, "experts_per_token": 2, "moe_ffn_hidden_size": 512})
    priced = estimate(moe, gpu_cluster(), TRAIN, config(2, 1, 4), UnitLayers(), stack=Stack())
    expert = 2 * h * 512 + 512 + h  # GELU MLP with biases
    assert priced.params_total - priced.params_active == 8 * 6 * expert  # 6 of 8 experts idle per token, 8 layers


def test_fsdp_without_pp_reduce_scatters_every_microbatch_and_keeps_gradients_sharded() -> None:
    """torchtitan's FSDP2 without PP (``dp_grad_sync: per_microbatch_without_pp``), ZeRO-3, one
    stage of 8 layers (F = 8 s, B + W = 16 s), M = 2, links slow enough that the traffic shows.
    Each F all-gathers the fp32 parameters (g); each B gathers them again and reduce-scatters the
    fp32 gradients (r); only what exceeds the pass's compute shows. No once-per-step reduce is
    left for the end, and the gradients are kept at 1/dp."""
    cluster = gpu_cluster(bandwidth_gbs=1e-4, latency_us=0.0)
    network = network_for(cluster)
    params = stage_params(MODEL, 8, True, True, 1)
    g = collective_s("all_gather", params * 4, intra_node(2), network)
    r = collective_s("reduce_scatter", params * FP32_GRAD_BYTES, intra_node(2), network)
    assert g > 8.0 and g + r > 16.0
    train = TrainSpec(global_batch=4, seq_len=128, precision="fp32")
    cfg = config(pp=1, dp=2, m=2, zero=3)
    stack = Stack(dp_grad_reduce="after_backward", dp_grad_sync="per_microbatch_without_pp")
    est = estimate(MODEL, cluster, train, cfg, UnitLayers(), stack=stack)
    per_microbatch = max(8.0, g) + max(16.0, g + r)
    assert est.step_time_s == pytest.approx(2 * per_microbatch + optimizer_s(cluster, params / 2))
    assert est.breakdown.dp_comm_s == pytest.approx(2 * (g - 8.0 + g + r - 16.0))
    assert est.memory_breakdown_gib[0]["gradients"] == pytest.approx(params * 4 / 2 / GIB, abs=5e-5)
    # the same plan reducing once per step keeps whole gradients
    per_step = estimate(MODEL, cluster, train, cfg, UnitLayers(), stack=Stack(dp_grad_reduce="after_backward"))
    assert per_step.memory_breakdown_gib[0]["gradients"] == pytest.approx(params * 4 / GIB, abs=5e-5)


def test_fsdp_traffic_under_a_pass_slows_the_compute_beside_it() -> None:
    """The same plan on a link fast enough that each pass's traffic hides (g < F = 8 s, g + r < B + W = 16 s):
    each pass costs its compute plus the contention of the traffic under it (18.9 % slower compute for as long
    as the collectives run, Lee et al. 2025): F = 8 + g·0.189/1.189, B + W = 16 + (g + r)·0.189/1.189."""
    cluster = gpu_cluster(bandwidth_gbs=1e-2, latency_us=0.0)
    network = network_for(cluster)
    params = stage_params(MODEL, 8, True, True, 1)
    g = collective_s("all_gather", params * 4, intra_node(2), network)
    r = collective_s("reduce_scatter", params * FP32_GRAD_BYTES, intra_node(2), network)
    assert 0.5 < g < 8.0 and g + r < 16.0
    train = TrainSpec(global_batch=4, seq_len=128, precision="fp32")
    stack = Stack(dp_grad_reduce="after_backward", dp_grad_sync="per_microbatch_without_pp")
    est = estimate(MODEL, cluster, train, config(pp=1, dp=2, m=2, zero=3), UnitLayers(), stack=stack)
    slowdown = 0.189 / 1.189
    per_microbatch = 8.0 + slowdown * g + 16.0 + slowdown * (g + r)
    assert est.step_time_s == pytest.approx(2 * per_microbatch + optimizer_s(cluster, params / 2))
    assert est.breakdown.dp_comm_s == pytest.approx(2 * slowdown * (2 * g + r))
    assert est.breakdown.overlapped["zero3_gather_s"] == pytest.approx(2 * (1 - slowdown) * (2 * g + r))


def test_fsdp1_backward_post_leaves_every_backward_gather_on_the_critical_path() -> None:
    """The same plan on a stack that gathers the backward's parameters only after each unit's gradients
    (``backward_gather: after_gradients``, FSDP1's BACKWARD_POST: "overlaps the current reduce-scatter and the next
    gradient computation"): F still hides its gather, F = 8 + g·s; B + W waits for its gather and hides only the
    reduce-scatter, B + W = 16 + r·s + g. The difference from the prefetched plan is g - g·s per microbatch."""
    cluster = gpu_cluster(bandwidth_gbs=1e-2, latency_us=0.0)
    network = network_for(cluster)
    params = stage_params(MODEL, 8, True, True, 1)
    g = collective_s("all_gather", params * 4, intra_node(2), network)
    r = collective_s("reduce_scatter", params * FP32_GRAD_BYTES, intra_node(2), network)
    train = TrainSpec(global_batch=4, seq_len=128, precision="fp32")
    cfg = config(pp=1, dp=2, m=2, zero=3)
    post = Stack(dp_grad_reduce="after_backward", dp_grad_sync="per_microbatch_without_pp",
                 backward_gather="after_gradients")
    est = estimate(MODEL, cluster, train, cfg, UnitLayers(), stack=post)
    slowdown = 0.189 / 1.189
    per_microbatch = 8.0 + slowdown * g + 16.0 + slowdown * r + g
    assert est.step_time_s == pytest.approx(2 * per_microbatch + optimizer_s(cluster, params / 2))
    assert est.breakdown.dp_comm_s == pytest.approx(2 * (slowdown * (g + r) + g))
    assert est.breakdown.overlapped["zero3_gather_s"] == pytest.approx(2 * (1 - slowdown) * (g + r))
    prefetched = Stack(dp_grad_reduce="after_backward", dp_grad_sync="per_microbatch_without_pp")
    assert est.step_time_s - estimate(MODEL, cluster, train, cfg, UnitLayers(), stack=prefetched).step_time_s == (
        pytest.approx(2 * (g - slowdown * g)))
    # on a CPU node nothing hides either way
    cpu = load_cluster("cpu-local")
    assert estimate(MODEL, cpu, train, cfg, UnitLayers(), stack=post).step_time_s == pytest.approx(
        estimate(MODEL, cpu, train, cfg, UnitLayers(), stack=prefetched).step_time_s)


def test_fsdp2_copies_its_gathered_parameters_and_gradients_on_the_compute_stream() -> None:
    """The same plan on a stack that runs FSDP2 (``fsdp_copies``): per microbatch F copies the gathered
    parameters out of the all-gather buffer (2 x 4 B a parameter, fp32) and B copies them again for its
    own gather plus the gradients into the reduce-scatter buffer (4 + 4 B): c = bytes / HBM rate, on the
    compute stream, before the traffic's contention: F = 8 + c_g + g·s, B + W = 16 + c_g + c_r + (g + r)·s."""
    cluster = gpu_cluster(bandwidth_gbs=1e-2, latency_us=0.0)
    network = network_for(cluster)
    params = stage_params(MODEL, 8, True, True, 1)
    g = collective_s("all_gather", params * 4, intra_node(2), network)
    r = collective_s("reduce_scatter", params * FP32_GRAD_BYTES, intra_node(2), network)
    copy_g, copy_r = memory_bound_time_s(cluster, 8 * params), memory_bound_time_s(cluster, 8 * params)
    train = TrainSpec(global_batch=4, seq_len=128, precision="fp32")
    plain = Stack(dp_grad_reduce="after_backward", dp_grad_sync="per_microbatch_without_pp")
    fsdp2 = plain.model_copy(update={"kernels": plain.kernels.model_copy(update={"fsdp_copies": True})})
    cfg = config(pp=1, dp=2, m=2, zero=3)
    est = estimate(MODEL, cluster, train, cfg, UnitLayers(), stack=fsdp2)
    slowdown = 0.189 / 1.189
    per_microbatch = 8.0 + copy_g + slowdown * g + 16.0 + copy_g + copy_r + slowdown * (g + r)
    assert est.step_time_s == pytest.approx(2 * per_microbatch + optimizer_s(cluster, params / 2))
    assert est.breakdown.dp_comm_s == pytest.approx(2 * (2 * copy_g + copy_r + slowdown * (2 * g + r)))
    # a stack without FSDP2 makes none (nor does a CPU node: the profile's FSDP host cost per unit holds them)
    assert estimate(MODEL, cluster, train, cfg, UnitLayers(), stack=plain).step_time_s == pytest.approx(
        est.step_time_s - 2 * (2 * copy_g + copy_r))


def test_torch_pipelining_keeps_a_receive_buffer_per_microbatch_and_direction():
    """``PipelineStage`` allocates one activation receive buffer per microbatch on every stage but the
    first and one gradient receive buffer per microbatch on every stage but the last. pp4 v2 M8
    (stages r and r+4 on rank r): rank 0 8·(0+1) + 8·(1+1) = 24, ranks 1 and 2 8·2 + 8·2 = 32,
    rank 3 8·(1+1) + 8·(1+0) = 24 — what the runtime held, counted after one step of tiny-llama
    (24, 32, 32, 24). Megatron's per-transfer p2p keeps ``P2P_BUFFERS``."""
    from types import SimpleNamespace

    from costmodels.rank_memory import P2P_BUFFERS, p2p_buffer_count
    from profiles.loader import load_stack

    cfg = ParallelConfig(tp=1, pp=4, dp=1, mbs=2, num_microbatches=8, v=2, schedule="interleaved-1f1b", stage_layers=[1] * 8)
    ranks = [[SimpleNamespace(layout=SimpleNamespace(stage=s)) for s in (r, r + 4)] for r in range(4)]
    torch_stack, megatron = load_stack("ppplan-torch"), load_stack("megatron-core")
    assert [p2p_buffer_count(torch_stack, cfg, plans) for plans in ranks] == [24, 32, 32, 24]
    assert [p2p_buffer_count(megatron, cfg, plans) for plans in ranks] == [P2P_BUFFERS] * 4


@pytest.mark.parametrize(("stack", "first_stage_b"), [("ppplan-torch", False), ("megatron-lm-2021", True)])
def test_the_first_stage_keeps_its_b_where_the_backward_splits_at_the_gemms(stack: str, first_stage_b: bool) -> None:
    """torch's pipelining runs the first stage's whole backward as W (no input gradient to send); Megatron's
    zero-bubble runtime queues only the weight-gradient GEMMs, so the first stage's B is its layers'
    input-gradient backward, like every other stage's (the zero-bubble paper's rows are priced on it)."""
    model, cluster = load_model("gpt3-1.7b"), load_cluster("dgx-a100-80g")
    train = TrainSpec(global_batch=4, seq_len=2048, precision="bf16")
    cfg = ParallelConfig(stack=stack, tp=1, pp=2, dp=1, mbs=1, num_microbatches=4, schedule="zb-h1", stage_layers=[12, 12])
    times = stage_times(model, cluster, train, cfg, stack=load_stack(stack))
    assert (times.backward_input_s[0] > 0) is first_stage_b
    assert times.backward_input_s[1] > 0
