"""``costmodels.experts``, the all-to-all collective and the per-rank parameters and FLOPs of
mixture-of-experts models, derived by hand.

tiny-moe: h = 256, 8 layers, 8 heads (4 kv heads, head dim 32), 8 experts of FFN 512, top-2,
SwiGLU, vocab 1024, seq 128. T = s·b tokens per rank, k = top-k, E = experts, f = expert FFN.
"""

from __future__ import annotations

import pytest

from costmodels.comm import GroupPlacement, Link, Network, collective_s, network_for, tp_all_reduce_s
from costmodels.experts import (
    EXPERT_LOAD_IMBALANCE,
    ep_group_placement,
    expected_max_standard_normal,
    moe_activation_bytes,
    moe_tp_collectives,
    rank_load_imbalance,
    routed_rows,
)
from costmodels.flops import layer_gemm_params, model_flops_per_iteration, transformer_layer_forward_flops
from costmodels.layer_costs import RooflineTimes, ep_overlap_hidden_s, tp_comm_passes
from costmodels.layer_ops import transformer_layer_ops
from costmodels.memory import StageParams, layer_params, split_static_memory, stage_param_split
from costmodels.operators import AllToAll, Gemm, LayerShape
from costmodels.params import model_parameters
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ClusterSpec
from profiles.stack_schema import StackKernels, StackSpec

GB = 1e9
TINY = load_model("tiny-moe")
MIXTRAL = load_model("mixtral-8x7b")
REPLICATED = StackKernels(expert_dispatch="tp_replicated")
SPLIT = StackKernels(expert_dispatch="tp_split")


def shape(tp: int = 1, ep: int = 1, mbs: int = 1, seq: int = 128, sp: bool = False) -> LayerShape:
    return LayerShape(tp, mbs, seq, sp, "none", 2, ep=ep, moe=True)


def gemms(ops: tuple) -> dict[str, Gemm]:
    return {op.name: op for op in ops if isinstance(op, Gemm)}


def test_tiny_moe_layer_flops_by_hand() -> None:
    """One tiny-moe MoE layer, T = 128 tokens, tp = ep = 1. Router: 2·T·h·E = 2·128·256·8 = 524,288.
    Experts: T·k = 256 rows over 8 experts, 32 rows each; fc1 (gate and up) 2·256·256·1024 = 134,217,728;
    fc2 2·256·512·256 = 67,108,864. Attention projections 2·T·(h·(q + 2kv) + q·h) with q = 256, kv = 128:
    2·128·(256·512 + 65,536) = 50,331,648. The operators' GEMMs sum to the FLOP count of
    ``costmodels.flops`` (2·T·(GEMM weights one token uses))."""
    f = gemms(transformer_layer_ops(TINY, shape(), REPLICATED).forward)
    assert f["moe.router"].flops == 524_288
    assert (f["moe.expert.fc1"].m, f["moe.expert.fc1"].batch) == (32, 8)
    assert f["moe.expert.fc1"].flops == 134_217_728
    assert f["moe.expert.fc2"].flops == 67_108_864
    assert f["attn.qkv"].flops + f["attn.out"].flops == 50_331_648
    total = sum(g.flops for g in f.values())
    assert total == 524_288 + 134_217_728 + 67_108_864 + 50_331_648
    assert total == transformer_layer_forward_flops(TINY, 128, 1, moe=True).gemm
    # the dense layer would run the 704-wide MLP on every token instead
    assert layer_gemm_params(TINY, moe=True) - layer_gemm_params(TINY) == 256 * 8 + 3 * 256 * (2 * 512 - 704)


def test_mixtral_model_flops_are_six_times_active_parameters_without_the_embedding() -> None:
    """Without attention's s² terms, model FLOPs = 6·tokens·(active parameters less the input
    embedding table and the norms): 12,879,925,248 − 131,072,000 − 266,240 = 12,748,587,008
    (FACTS.md section 3.1)."""
    active = model_parameters(MIXTRAL).active
    assert active == 12_879_925_248
    s = 4096
    attention = 3 * MIXTRAL.num_layers * transformer_layer_forward_flops(MIXTRAL, s, 1, moe=True).attention
    assert model_flops_per_iteration(MIXTRAL, 1, s) - attention == pytest.approx(6 * s * 12_748_587_008, rel=1e-12)


def test_expected_maximum_of_normals_matches_the_order_statistics_table() -> None:
    """E[max of n standard normals], David & Nagaraja, "Order Statistics" (3rd ed.), Table 3.1 (and
    Tippett 1925): 0.5642 (n = 2), 1.0294 (4), 1.4236 (8), 1.7660 (16), 2.5076 (100); 0 for one."""
    table = {1: 0.0, 2: 0.5642, 4: 1.0294, 8: 1.4236, 16: 1.7660, 100: 2.5076}
    for n, expected in table.items():
        assert expected_max_standard_normal(n) == pytest.approx(expected, abs=5e-5)


def test_rank_load_imbalance_averages_the_experts_a_rank_holds() -> None:
    """E = 8 experts, the busiest expert at 1.25: σ = 0.25 / z(8). One expert per rank (ep 8) is 1.25;
    ep 4 (two per rank) 1 + 0.25·sqrt(4/8)·z(4)/z(8) = 1 + 0.25·0.70711·1.0294/1.4236 = 1.12783;
    ep 2: 1 + 0.25·0.5·0.5642/1.4236 = 1.04954; no expert parallelism 1."""
    assert rank_load_imbalance(8, 8) == pytest.approx(1.25)
    assert rank_load_imbalance(8, 4) == pytest.approx(1.12783, abs=1e-4)
    assert rank_load_imbalance(8, 2) == pytest.approx(1.04954, abs=1e-4)
    assert rank_load_imbalance(8, 1) == 1.0
    assert rank_load_imbalance(8, 4, expert_imbalance=1.0) == 1.0


def test_expert_parallel_rows_carry_the_load_imbalance() -> None:
    """With ep = 8 a rank holds 1 expert and computes the busiest rank's 1.25·T·k rows: 1.25·256 = 320;
    with ep = 4 (2 experts) 1.12783·256 = 288.72 rows, 144.36 per expert; without ep the rank's own
    T·k = 256."""
    assert routed_rows(TINY, 128, 1) == 256
    assert routed_rows(TINY, 128, 8) == pytest.approx(EXPERT_LOAD_IMBALANCE * 256) == 320
    assert routed_rows(TINY, 128, 4) == pytest.approx(288.72, abs=0.03)
    f = gemms(transformer_layer_ops(TINY, shape(ep=4), REPLICATED).forward)
    assert f["moe.expert.fc1"].m == pytest.approx(144.36, abs=0.02) and f["moe.expert.fc1"].batch == 2
    f = gemms(transformer_layer_ops(TINY, shape(ep=8), REPLICATED).forward)
    assert (f["moe.expert.fc1"].m, f["moe.expert.fc1"].batch) == (pytest.approx(320), 1)


def test_dispatch_all_to_all_bytes_per_stack() -> None:
    """tp = 2, ep = 8, bf16: each tp rank of ppplan's runtime sends its rank's 320 rows (1.25·T·k) × 256 ×
    2 B = 163,840 B per all-to-all (plus the 8 int64 counts); Megatron-Core's tp_split sends half."""
    ops = transformer_layer_ops(TINY, shape(tp=2, ep=8), REPLICATED)
    a2a = {op.name: op.bytes for op in ops.forward if isinstance(op, AllToAll)}
    assert a2a == {"moe.counts": 64, "moe.dispatch": 163_840, "moe.combine": 163_840}
    assert [op.name for op in ops.backward_input if isinstance(op, AllToAll)] == ["moe.combine.bwd", "moe.dispatch.bwd"]
    split = transformer_layer_ops(TINY, shape(tp=2, ep=8, sp=True), SPLIT)
    assert {op.name: op.bytes for op in split.forward if isinstance(op, AllToAll)} == {
        "moe.dispatch": 81_920, "moe.combine": 81_920}
    assert not [op for op in transformer_layer_ops(TINY, shape(tp=2), REPLICATED).forward if isinstance(op, AllToAll)]


def _cluster() -> ClusterSpec:
    c = load_cluster("dgx-h100")
    return c.model_copy(update={"efficiency": c.efficiency.model_copy(update={"intra_node_collective": 1.0,
                                                                             "inter_node_collective": 1.0})})


def test_all_to_all_within_a_node_by_hand() -> None:
    """ep = 4 ranks tp = 2 apart: 8 GPUs, one node. Each rank sends 3/4 of n over NVLink (450 GB/s,
    6 us): 6e-6 + 0.75·n / 450e9."""
    net = network_for(_cluster())
    placement = ep_group_placement(2, 4, 8)
    assert placement == GroupPlacement(size=4, ranks_per_node=4, nodes=1, node_senders=8)
    n = 1e8
    assert collective_s("all_to_all", n, placement, net) == pytest.approx(6e-6 + 0.75 * n / (450 * GB))


def test_all_to_all_across_nodes_shares_the_nics() -> None:
    """ep = 16, tp = 1 on 8-GPU nodes: 8 ranks per node, 2 nodes. A rank sends 7/16 of n over NVLink and
    8/16 off the node; its NIC path is min(50 GB/s, 8 NICs × 400 Gb/s / 8 senders = 50 GB/s). The
    slower tier (0.5·n / 50e9) plus a latency of each tier (6 + 12 us)."""
    net = network_for(_cluster())
    placement = ep_group_placement(1, 16, 8)
    assert (placement.ranks_per_node, placement.nodes) == (8, 2)
    n = 1e8
    assert collective_s("all_to_all", n, placement, net) == pytest.approx(18e-6 + max(7 / 16 * n / (450 * GB),
                                                                                       0.5 * n / (50 * GB)))


def test_layer_times_carry_the_all_to_all_as_ep_comm() -> None:
    """The EP communication of one layer is its four all-to-alls (and the counts' one) at the EP group's
    placement; it is inside F and B (Megatron's and ppplan's dispatchers wait for it)."""
    cluster = _cluster()
    roof = RooflineTimes(TINY, cluster, "bf16", stack=load_stack("ppplan-torch"))
    with_ep = roof.transformer(1, 1, 128, False, "none", ep=8, moe=True)
    net = network_for(cluster)
    placement = ep_group_placement(1, 8, 8)
    payload = 320 * 256 * 2
    expected = 4 * collective_s("all_to_all", payload, placement, net) + collective_s("all_to_all", 64, placement, net)
    assert with_ep.ep_comm_s == pytest.approx(expected)
    assert roof.transformer(1, 1, 128, False, "none", moe=True).ep_comm_s == 0.0


def test_mixtral_parameters_per_rank_under_ep() -> None:
    """Mixtral-8x7B, tp = 1, ep = 8: a layer's dense part is attention 41,943,040 + norms 8,192 + router
    32,768 = 41,984,000, its experts one of 176,160,768; with tp = 2 the router stays whole."""
    assert layer_params(MIXTRAL, 1, 8, True) == StageParams(dense=41_984_000, expert=176_160_768)
    assert layer_params(MIXTRAL, 2, 8, True) == StageParams(dense=41_951_232 / 2 + 32_768, expert=176_160_768 / 2)
    assert layer_params(MIXTRAL, 1, 1, True).expert == 8 * 176_160_768


def test_memory_under_ep_matches_the_weights_and_optimizer_arithmetic() -> None:
    """The first of 2 pipeline stages of Mixtral-8x7B, tp 1, ep 8, dp 32, ZeRO-1, bf16: 16 layers and
    the embedding (131,072,000). Dense 16·41,984,000 + 131,072,000 = 802,816,000; experts 16·176,160,768
    = 2,818,572,288. Weights and gradients 2 B each of all of them; Adam's 12 B over dp·cp = 32 ranks
    for the dense part and over dp·cp/ep = 4 ranks for the experts: 301,056,000 + 8,455,716,864 B."""
    params = stage_param_split(MIXTRAL, 0, 16, True, False, 1, 8)
    assert params == StageParams(dense=802_816_000, expert=2_818_572_288)
    state = split_static_memory(params.dense, params.expert, "bf16", 32, 8, 1)
    assert state.weights_bytes == 2 * 3_621_388_288
    assert state.gradients_bytes == 2 * 3_621_388_288
    assert state.optimizer_bytes == pytest.approx(12 * 802_816_000 / 32 + 12 * 2_818_572_288 / 4)
    # the same plan without ep: every rank keeps all 8 experts, sharded over all 32 ranks
    whole = split_static_memory(*_split(stage_param_split(MIXTRAL, 0, 16, True, False, 1, 1)), "bf16", 32, 1, 1)
    assert whole.weights_bytes == 2 * (802_816_000 + 8 * 2_818_572_288)


def _split(params: StageParams) -> tuple[float, float]:
    return params.dense, params.expert


def test_moe_activation_bytes_by_hand() -> None:
    """tiny-moe, T = 128, tp = 1, ep = 1, bf16, eager SwiGLU (4 FFN tensors): the 256 routed rows (h = 256)
    and the 256 weighted copies: 512·256·2 = 262,144; 4·256·512·2 = 1,048,576; probabilities and two
    indices per assignment: 256·20 = 5,120."""
    assert moe_activation_bytes(TINY, 128, 1, 1, 2, 4) == 262_144 + 1_048_576 + 5_120
    # ep = 8: the busiest rank's rows are 1.25x; the weighted copies stay the rank's own 256
    assert moe_activation_bytes(TINY, 128, 1, 8, 2, 4) == pytest.approx((320 + 256) * 512 + 4 * 320 * 1024 + 5_120)


def test_megatron_core_keeps_fp8_expert_inputs_and_no_weighted_copies() -> None:
    """The same block as Megatron-Core runs it in fp8 (fused SwiGLU: 3 FFN tensors): the 256 routed rows' fc1
    input at 1 B (256·256 = 65,536), no weighted copies (the probabilities multiply the activation), the
    FFN tensors 2 at 2 B plus fc2's input at 1 B per value (5·256·512 = 655,360), the routing 5,120."""
    assert moe_activation_bytes(TINY, 128, 1, 1, 2, 3, gemm_input_bytes=1, probs_in_activation=True) == (
        65_536 + 655_360 + 5_120)
    # bf16 with the probabilities in the activation: only the weighted copies (256·256·2) go
    assert moe_activation_bytes(TINY, 128, 1, 1, 2, 3) - moe_activation_bytes(TINY, 128, 1, 1, 2, 3, probs_in_activation=True) == (
        131_072)
    assert load_stack("megatron-core").kernels.moe_probs_in_activation
    assert not load_stack("ppplan-torch").kernels.moe_probs_in_activation


def test_a_run_that_states_balanced_routing_prices_the_mean_load() -> None:
    """``expert_imbalance`` 1.0 (a benchmark forcing balanced routing): the ep = 4 rank computes its T·k = 256
    rows, 128 per local expert, and sends 256 rows per all-to-all."""
    cluster = load_cluster("dgx-h100")
    balanced = RooflineTimes(TINY, cluster, "bf16", stack=load_stack("ppplan-torch"), expert_imbalance=1.0)
    f = gemms(balanced.operators("transformer", 1, 1, 128, False, "none", ep=4, moe=True).forward)
    assert f["moe.expert.fc1"].m == 128
    sends = [op.bytes for op in balanced.operators("transformer", 1, 1, 128, False, "none", ep=4, moe=True).forward
             if isinstance(op, AllToAll) and op.name == "moe.dispatch"]
    assert sends == [256 * 256 * 2]
    default = RooflineTimes(TINY, cluster, "bf16", stack=load_stack("ppplan-torch"))
    assert default.transformer(1, 1, 128, False, "none", ep=4, moe=True).total_s > balanced.transformer(
        1, 1, 128, False, "none", ep=4, moe=True).total_s


def test_all_to_all_overlap_hides_what_the_other_microbatch_computes() -> None:
    """``--overlap-moe-expert-parallel-comm``: a forward merged with another microbatch's backward takes
    max(compute, all-to-all). F's all-to-alls 2 s and B's 4 s under 10 s of compute: all 6 hidden; under
    3 s: 3 hidden, split 1 : 2 as the all-to-alls are (3 s exposed)."""
    assert ep_overlap_hidden_s((2.0, 4.0), 10.0) == (2.0, 4.0)
    assert ep_overlap_hidden_s((2.0, 4.0), 3.0) == (1.0, 2.0)
    assert ep_overlap_hidden_s((0.0, 0.0), 3.0) == (0.0, 0.0)


def _megatron_without_host_floor() -> StackSpec:
    """megatron-core without its MoE host floor: tiny-moe's layers on an H100 are host-bound under it
    (tests/costmodels/test_moe_host_floor.py), which would hide the all-to-all arithmetic these tests check."""
    return load_stack("megatron-core").with_changes({"overlap": {"moe_host_s_per_operator": 0.0}})


def test_a_stack_overlapping_the_all_to_all_prices_only_its_excess() -> None:
    """tiny-moe, tp 1, ep 8 on one H100 node, megatron-core with and without the overlap: the layer's
    all-to-alls (F 2, B 2) are far shorter than its compute, so the overlapped stack exposes only the compute's
    contention beside them (a2a x 0.189 / 1.189, ``costmodels.overlap``), reports the rest as overlapped, and its
    F + B are shorter by exactly what the exposed stack spent on them less that contention."""
    cluster = _cluster()
    exposed_stack = _megatron_without_host_floor()
    overlapped_stack = exposed_stack.with_changes({"overlap": {"ep_comm": "overlapped"}})
    exposed = RooflineTimes(TINY, cluster, "bf16", stack=exposed_stack).transformer(1, 4, 128, False, "none", ep=8, moe=True)
    hidden = RooflineTimes(TINY, cluster, "bf16", stack=overlapped_stack).transformer(1, 4, 128, False, "none", ep=8, moe=True)
    assert exposed.ep_comm_s > 0 and exposed.ep_comm_s < exposed.total_s - exposed.ep_comm_s
    slowed = exposed.ep_comm_s * 0.189 / 1.189
    assert hidden.ep_comm_s == pytest.approx(slowed)
    assert hidden.overlapped_ep_comm_s == pytest.approx(exposed.ep_comm_s - slowed)
    assert hidden.forward_s + hidden.backward_input_s == pytest.approx(
        exposed.forward_s + exposed.backward_input_s - exposed.ep_comm_s + slowed)


def test_the_combined_1f1b_prices_the_all_to_all_as_the_overlapping_stack_does() -> None:
    """A schedule that overlaps the expert all-to-alls (combined 1F1B) asks the layer times for them hidden:
    the same passes as a stack that always overlaps them; a dense layer or ep 1 has nothing to hide."""
    cluster = _cluster()
    stack = _megatron_without_host_floor()
    overlapped = stack.with_changes({"overlap": {"ep_comm": "overlapped"}})
    combined = RooflineTimes(TINY, cluster, "bf16", stack=stack).transformer(2, 4, 128, True, "none", ep=8, moe=True,
                                                                            ep_overlap=1.0)
    always = RooflineTimes(TINY, cluster, "bf16", stack=overlapped).transformer(2, 4, 128, True, "none", ep=8, moe=True)
    assert combined == always and combined.overlapped_ep_comm_s > 0
    plain = RooflineTimes(TINY, cluster, "bf16", stack=stack)
    half = plain.transformer(2, 4, 128, True, "none", ep=8, moe=True, ep_overlap=0.5)
    assert half.overlapped_ep_comm_s == pytest.approx(0.5 * combined.overlapped_ep_comm_s)
    assert plain.transformer(2, 4, 128, True, "none", ep=1, moe=True, ep_overlap=1.0) == plain.transformer(
        2, 4, 128, True, "none", ep=1, moe=True)


# -- the tp collectives of an MoE block, per stack (tiny-moe with a SwiGLU shared expert of FFN 512, T = 128, tp 2, ep 1) --
# Both keep the routed (T·k = 256 rows) and shared experts' outputs partial over tp and reduce the block's 128 tokens
# once in F: an all-reduce, or under sequence parallelism an all-gather on entry and a reduce-scatter on exit. In B,
# ppplan's runtime gathers the output's gradient (sequence parallelism), all-reduces the 256 router scores' fp32
# gradient (256 · 4 bytes = 2 bf16 rows of h = 256) and reduces the experts' input gradient once at the entry
# (tests/launch/runtime/test_tp_comm_dist.py counts them on gloo); torchtitan v0.2.2 all-reduces the gradients of
# the routed rows' input (256) and of the shared expert's input under w1 and under w3 (128 each).

SHARED = TINY.model_copy(update={"shared_expert_ffn_hidden_size": 512})
TITAN = load_stack("torchtitan").kernels
UNIT = Network(Link(1.0, 0.0), Link(1.0, 0.0), 1.0, gpus_per_node=8)  # zero latency: seconds are bytes


def test_ppplan_runtime_reduces_the_block_once_per_pass_and_the_scores_gradient() -> None:
    kernels = load_stack("ppplan-torch").kernels
    assert moe_tp_collectives(SHARED, 128, 2, 1, True, kernels, bytes_per_elem=2) == (
        (("all_gather", 128), ("reduce_scatter", 128)), (("all_gather", 128), ("all_reduce", 2), ("reduce_scatter", 128)))
    assert moe_tp_collectives(SHARED, 128, 2, 1, False, kernels, bytes_per_elem=2) == (
        (("all_reduce", 128),), (("all_reduce", 2), ("all_reduce", 128)))
    assert moe_tp_collectives(SHARED, 128, 2, 1, False, kernels, bytes_per_elem=4)[1][0] == ("all_reduce", 1)


def test_ppplan_runtimes_moe_block_moves_its_tokens_once_per_pass() -> None:
    """In all-reduce rows, bf16, sequence parallelism, per pass: F = 128 (attention) + 128 (block) = 256 and
    B = 256 + 2 (scores). Reducing the routed (256) and shared (128) outputs where computed, plus one all-gather
    (64), moved 128 + 448 = 576 in each pass (the runtime at 0b88543)."""
    row = tp_all_reduce_s(1, SHARED.hidden_size, 2, 2, UNIT)
    kernels = load_stack("ppplan-torch").kernels
    none = tp_comm_passes(SHARED, "transformer", 2, 1, 128, True, "none", 2, UNIT, False, moe=True, kernels=kernels)
    assert (none.forward_s / row, none.backward_input_s / row) == (pytest.approx(256), pytest.approx(258))


def test_torchtitan_reduces_partial_outputs_once_and_each_replicated_inputs_gradient() -> None:
    assert TITAN.moe_tp_input_grads_per_linear
    gradients = (("all_reduce", 256), ("all_reduce", 128), ("all_reduce", 128))
    assert moe_tp_collectives(SHARED, 128, 2, 1, True, TITAN, bytes_per_elem=2) == (
        (("all_gather", 128), ("reduce_scatter", 128)), (("all_gather", 128),) + gradients)
    assert moe_tp_collectives(SHARED, 128, 2, 1, False, TITAN, bytes_per_elem=2) == ((("all_reduce", 128),), gradients)
    assert moe_tp_collectives(TINY, 128, 2, 1, True, TITAN, bytes_per_elem=2)[1] == (("all_gather", 128), ("all_reduce", 256))


def test_torchtitans_backward_moves_more_than_its_forward() -> None:
    """In all-reduce rows (an all-gather or a reduce-scatter moves half an all-reduce's bytes), bf16, per pass:
    F = 128 (attention) + 128 (block); B = 128 + 64 + 256 + 2·128 = 704 without recompute, and under torchtitan's
    per-op selective recompute B runs F's all-gathers again, half of F's 256: 832."""
    row = tp_all_reduce_s(1, SHARED.hidden_size, 2, 2, UNIT)
    none = tp_comm_passes(SHARED, "transformer", 2, 1, 128, True, "none", 2, UNIT, False, moe=True, kernels=TITAN)
    assert (none.forward_s / row, none.backward_input_s / row) == (pytest.approx(256), pytest.approx(704))
    sac = tp_comm_passes(SHARED, "transformer", 2, 1, 128, True, "selective", 2, UNIT, False, moe=True, kernels=TITAN)
    assert sac.backward_input_s / row == pytest.approx(832)


def test_no_tp_collective_of_an_moe_block_without_tp() -> None:
    assert moe_tp_collectives(SHARED, 128, 1, 1, True, TITAN, bytes_per_elem=2) == ((), ())
    assert moe_tp_collectives(SHARED, 128, 1, 1, True, REPLICATED, bytes_per_elem=2) == ((), ())


def test_early_stopped_recompute_skips_the_exit_reduction_of_partial_outputs() -> None:
    """torchtitan before 25413d2 stopped its full recompute early. The re-run forward then runs the block's gather on
    entry again but not its reduce-scatter on exit, after the last saved tensor: in all-reduce rows, F = 256 (as
    above) and B = 704 + (256 - 64) = 896 under sequence parallelism; without it B = 640 (the attention's 128, the
    routed 256 and the shared expert's 2·128) + (256 - 128) = 768, the block's exit all-reduce not re-run."""
    row = tp_all_reduce_s(1, SHARED.hidden_size, 2, 2, UNIT)
    early = TITAN.model_copy(update={"full_recompute_early_stop": True})
    for sp, backward in ((True, 896), (False, 768)):
        p = tp_comm_passes(SHARED, "transformer", 2, 1, 128, sp, "full", 2, UNIT, False, moe=True, kernels=early)
        assert (p.forward_s / row, p.backward_input_s / row) == (pytest.approx(256), pytest.approx(backward))


def test_per_linear_input_gradients_are_refused_where_no_runtime_runs_them() -> None:
    """ppplan's runtime reduces the block's input gradient once; tp_split reduce-scatters the routed rows."""
    with pytest.raises(ValueError, match="moe_tp_input_grads_per_linear"):
        load_stack("torchtitan").with_changes({"kernels": {"expert_dispatch": "tp_split"}})
    with pytest.raises(ValueError, match="moe_tp_input_grads_per_linear"):
        load_stack("ppplan-torch").with_changes({"kernels": {"moe_tp_input_grads_per_linear": True}})
