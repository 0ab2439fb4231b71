"""The same configuration priced on each stack preset differs exactly by what the stacks run.

GPT-style model (LayerNorm, learned positions, GELU), 4 layers, h = 1024, 16 heads, V = 32,000,
s = 2,048; tp = 2, pp = 1, dp = 2 inside one node, mbs = 1, M = 4, bf16, on an A100-like test
cluster (efficiencies 1 for collectives so the numbers stay readable).
"""

from __future__ import annotations

import math

import pytest

from costmodels.comm import GroupPlacement, collective_s, network_for
from costmodels.compute import gemm_op_time_s, memory_bound_time_s, operator_time_s
from costmodels.data_parallel import bucket_params
from costmodels.estimate import _pipeline_inputs, estimate
from costmodels.layer_costs import RooflineTimes
from costmodels.memory import stack_static_memory, stage_param_split, stage_params
from costmodels.operators import FlashAttention, Gemm
from costmodels.overlap import contention_s
from costmodels.step_time import exposed_sum_s
from profiles.loader import load_model, load_stack, preset_names
from profiles.schema import ClusterSpec, ModelSpec, ParallelConfig, TrainSpec

GPT = ModelSpec(name="gpt", num_layers=4, hidden_size=1024, num_attention_heads=16, vocab_size=32000, seq_len=2048)
TRAIN = TrainSpec(global_batch=8, seq_len=2048, precision="bf16")
S, H, A, D, TP, P, M = 2048, 1024, 16, 64, 2, 2, 4


def a100(nvlink_gbs: float = 300) -> ClusterSpec:
    return ClusterSpec(
        name="test-a100",
        gpu={"name": "TEST-A100", "memory_gib": 80, "peak_tflops": {"bf16": 312}, "hbm_bandwidth_gbs": 2039},
        gpus_per_node=8,
        intra_node={"bandwidth_gbs": nvlink_gbs, "latency_us": 8},
        inter_node={"bandwidth_gbs": 25, "latency_us": 15},
        efficiency={"intra_node_collective": 1.0, "inter_node_collective": 1.0},
    )


def config(stack: str) -> ParallelConfig:
    return ParallelConfig(stack=stack, tp=TP, pp=1, dp=2, mbs=1, num_microbatches=M, stage_layers=[GPT.num_layers])


def test_megatron_2021_and_megatron_core_differ_by_unfused_attention_dropout_and_the_exposed_reduce() -> None:
    """Per layer and microbatch, megatron-lm-2021 runs instead of one flash kernel (F: s²·h/tp x 2
    executed FLOPs; B: 2.5x) the unfused core: QKᵀ and AV as batched GEMMs over b·a/tp = 8 heads,
    the fused softmax over the 8·s² scores (2p F, 3p B) and dropout on them ((2p + 1) each way);
    and dropout fused into both residual adds (+1 B F, +(2p + 1) B per element of s·h), plus the
    embedding's dropout ((2p + 1)·s·h in F). Each microbatch's gradients are added into the fp32
    main grads (read 4 + 2 B, write 4 B per parameter) where megatron-core's GEMM accumulates them,
    and they are reduced after the schedule instead of in buckets during the last backward.
    Everything else (GEMMs, norms, GELU, loss, TP collectives, optimizer) is the same, so the step
    times differ by exactly that. A 2 GB/s link
    makes the reduce (170 MB of fp32 gradients) longer than the last backward it may hide in."""
    c = a100(nvlink_gbs=2)
    heads, scores, sh = A // TP, (A // TP) * S * S, S * H
    qk, av = Gemm("qk", S, S, D, heads), Gemm("av", S, D, S, heads)
    unfused_f = (gemm_op_time_s(c, "bf16", qk) + gemm_op_time_s(c, "bf16", av)
                 + memory_bound_time_s(c, 2 * P * scores + (2 * P + 1) * scores))
    # dP = dO·Vᵀ (s, s, d); dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q (s, d, s)
    unfused_b = (gemm_op_time_s(c, "bf16", Gemm("", S, S, D, heads)) + 3 * gemm_op_time_s(c, "bf16", Gemm("", S, D, S, heads))
                 + memory_bound_time_s(c, 3 * P * scores + (2 * P + 1) * scores))
    flash = 4 * S * S * H / TP / 2
    flash_f = operator_time_s(c, "bf16", FlashAttention("f", flash))
    flash_b = operator_time_s(c, "bf16", FlashAttention("b", 2.5 * flash, backward=True))
    dropout_f = memory_bound_time_s(c, 2 * 1 * sh)
    dropout_b = memory_bound_time_s(c, 2 * (2 * P + 1) * sh)
    delta_layer = (unfused_f - flash_f + dropout_f) + (unfused_b - flash_b + dropout_b)
    delta_embedding = memory_bound_time_s(c, (2 * P + 1) * sh)

    old, core = load_stack("megatron-lm-2021"), load_stack("megatron-core")
    # the TP collectives as megatron-lm-2021 runs them (the preset's asynchronous backward ones are
    # tested in test_layer_costs.test_megatron_core_hides_the_column_parallel_backward_collectives_only)
    new = core.with_changes({"overlap": {"tp_comm": old.overlap.tp_comm}})
    r_old = RooflineTimes(GPT, c, "bf16", stack=old).transformer(TP, 1, S, False, "none")
    r_new = RooflineTimes(GPT, c, "bf16", stack=new).transformer(TP, 1, S, False, "none")
    assert r_old.total_s - r_new.total_s == pytest.approx(delta_layer, rel=1e-9)
    assert r_old.tp_comm_s == r_new.tp_comm_s and r_old.backward_weight_s == r_new.backward_weight_s

    e_old = estimate(GPT, c, TRAIN, config("megatron-lm-2021"), stack=old)
    e_new = estimate(GPT, c, TRAIN, config("megatron-core"), stack=new)
    # the reduce: all-reduce of the rank's fp32 gradients over 2 ranks in the node, one buffer on
    # megatron-lm-2021; megatron-core splits them into 40M-parameter buckets, each an all-reduce of its own
    # (the ring's latency per bucket), whose last cannot hide
    params = stage_params(GPT, 4, True, True, TP)
    pair = GroupPlacement(2, 2, 1, 2)
    reduce_s = collective_s("all_reduce", params * 4, pair, network_for(c))
    buckets = math.ceil(params / 40e6)
    last_bucket_s = collective_s("all_reduce", params / buckets * 4, pair, network_for(c))
    reduce_new = buckets * last_bucket_s
    roof = RooflineTimes(GPT, c, "bf16", stack=new)
    ends = [roof.embedding(TP, 1, S, False), roof.head(TP, 1, S, False)]
    backward_s = 4 * (r_new.backward_input_s + r_new.backward_weight_s) + sum(x.backward_input_s + x.backward_weight_s for x in ends)
    exposed_new = min(reduce_new, max(last_bucket_s, reduce_new - backward_s))
    exposed_new += contention_s(reduce_new - exposed_new)  # what hides slows the backward beside it
    assert e_old.breakdown.dp_comm_s == pytest.approx(reduce_s)
    assert e_new.breakdown.dp_comm_s == pytest.approx(exposed_new)
    assert buckets > 1 and last_bucket_s <= exposed_new < reduce_new  # the backward hides all buckets but what ends after it
    accumulate = memory_bound_time_s(c, (4 + 2 + 4) * params)
    expected = M * (4 * delta_layer + delta_embedding + accumulate) + reduce_s - exposed_new
    assert e_old.step_time_s - e_new.step_time_s == pytest.approx(expected, rel=1e-6)
    # the activations megatron-lm-2021 keeps: the s² scores, the softmax output's dropout mask and
    # output, the residual and embedding dropout masks (Korthikanti et al. 2022, Table 2)
    assert e_old.peak_memory_gib[0] > e_new.peak_memory_gib[0]


def test_a_bf16_gradient_buffer_is_reduced_in_bf16() -> None:
    """Megatron reduces its gradient buffer in place, so grad_reduce_in_fp32 False (the NeMo and Megatron-Bridge
    perf recipes) halves both: megatron-lm-2021's one all-reduce after the schedule moves the rank's gradients at
    2 B each, not 4, and the buffer holds 2 B per parameter."""
    c = a100(nvlink_gbs=2)
    fp32, bf16 = load_stack("megatron-lm-2021"), load_stack("megatron-lm-2021").with_changes({"grad_accumulation_fp32": False})
    params = stage_params(GPT, 4, True, True, TP)
    pair = GroupPlacement(2, 2, 1, 2)
    e32 = estimate(GPT, c, TRAIN, config("megatron-lm-2021"), stack=fp32)
    e16 = estimate(GPT, c, TRAIN, config("megatron-lm-2021"), stack=bf16)
    assert e32.breakdown.dp_comm_s == pytest.approx(collective_s("all_reduce", params * 4, pair, network_for(c)))
    assert e16.breakdown.dp_comm_s == pytest.approx(collective_s("all_reduce", params * 2, pair, network_for(c)))
    assert e32.memory_breakdown_gib[0]["gradients"] == pytest.approx(4 * params / 2**30, abs=1e-4)
    assert e16.memory_breakdown_gib[0]["gradients"] == pytest.approx(2 * params / 2**30, abs=1e-4)
    # the two DP buckets in flight (pp 1: no p2p buffers) hold the reduced dtype too
    bucket = min(params, bucket_params(fp32.overlap, 2))
    assert e32.memory_breakdown_gib[0]["comm_buffers"] == pytest.approx(2 * bucket * 4 / 2**30, abs=1e-4)
    assert e16.memory_breakdown_gib[0]["comm_buffers"] == pytest.approx(2 * bucket * 2 / 2**30, abs=1e-4)


@pytest.mark.parametrize("stack_name, bf16_buffer_reduce_bytes", [
    ("megatron-core", 2),  # Megatron reduces its gradient buffer in place: a bf16 buffer is reduced in bf16
    ("megatron-lm-2021", 2),
    ("megatron-deepspeed", 2),
    ("zero-bubble-megatron", 2),
    ("torchtitan", 4),  # FSDP2 reduce_dtype float32 beside bf16 parameters, whatever it accumulates in
    ("ppplan-torch", 4),  # FSDP2 mixed precision, reduce_dtype float32, as torchtitan
])
def test_each_preset_reduces_gradients_in_its_own_dtype(stack_name: str, bf16_buffer_reduce_bytes: int) -> None:
    """As shipped every preset reduces bf16 and fp8 runs' gradients in fp32 (Megatron-LM's forced fp32 buffer,
    FSDP2's fp32 reduce dtype), fp16 runs' in fp16 and fp32 runs' in fp32; with a bf16 gradient buffer only the
    stacks that reduce the buffer itself move 2 B."""
    stack = load_stack(stack_name)
    assert {p: stack.grad_reduce_bytes_per_param(p) for p in ("fp32", "bf16", "fp8", "fp16")} == {
        "fp32": 4, "bf16": 4, "fp8": 4, "fp16": 2}
    bf16_buffer = stack.with_changes({"grad_accumulation_fp32": False})
    assert bf16_buffer.grad_reduce_bytes_per_param("bf16") == bf16_buffer_reduce_bytes


@pytest.mark.parametrize("stack_name", preset_names("stacks"))
@pytest.mark.parametrize("model_name", ["gpt3-1.7b", "llama3-8b"])
def test_each_preset_composes_its_step_from_its_exposed_parts(stack_name: str, model_name: str) -> None:
    stack = load_stack(stack_name)
    model = load_model(model_name)
    pp = 2
    interleaved = "interleaved-1f1b" in stack.schedules
    schedule, v = ("interleaved-1f1b", 2) if interleaved else ("1f1b", 1)  # megatron-deepspeed: 1F1B only
    layers = model.num_layers // (pp * v)
    recompute = "selective" if "selective" in stack.recompute else "full"
    cfg = ParallelConfig(stack=stack_name, tp=2, pp=pp, dp=4, v=v, mbs=1, num_microbatches=8, schedule=schedule,
                         zero=1, sequence_parallel=stack.sequence_parallel, recompute=recompute,
                         stage_layers=[layers] * (pp * v))
    cluster = a100().model_copy(update={"gpus_per_node": 4})
    train = TrainSpec(global_batch=32, seq_len=2048, precision="bf16")
    est = estimate(model, cluster, train, cfg, stack=stack)
    assert exposed_sum_s(est.breakdown) == pytest.approx(est.step_time_s, rel=1e-12)
    assert min(est.breakdown.compute_s, est.breakdown.bubble_s, est.breakdown.dp_comm_s) >= 0


def test_each_preset_prices_its_own_kernels() -> None:
    """The loss: ppplan-torch gathers the logits to all V on every TP rank (an all-gather, then
    torch's fp32 cross-entropy over V), Megatron-Core and torchtitan compute it over V/tp shards;
    SwiGLU: eager in ppplan-torch and torchtitan, fused in Megatron-Core."""
    c = a100()
    llama = load_model("llama3-8b")
    head = {name: RooflineTimes(llama, c, "bf16", stack=load_stack(name)).operators("head", 2, 1, 2048, False)
            for name in ("ppplan-torch", "torchtitan", "megatron-core")}
    loss_elements = {name: [op for op in ops.forward if op.name == "loss"][0].bytes for name, ops in head.items()}
    v = llama.vocab_size
    assert loss_elements["ppplan-torch"] == pytest.approx((2 + 12) * 2048 * v)
    assert loss_elements["megatron-core"] == pytest.approx((2 + 36) * 2048 * v / 2)
    assert loss_elements["torchtitan"] == loss_elements["megatron-core"]
    act = {name: [op for op in RooflineTimes(llama, c, "bf16", stack=load_stack(name)).operators(
        "transformer", 2, 1, 2048, False).forward if op.name == "act"][0].bytes for name in head}
    assert act["ppplan-torch"] == act["torchtitan"] == pytest.approx(5 / 3 * act["megatron-core"])
    torch_head = RooflineTimes(llama, c, "bf16", stack=load_stack("ppplan-torch")).head(2, 1, 2048, False)
    core_head = RooflineTimes(llama, c, "bf16", stack=load_stack("megatron-core")).head(2, 1, 2048, False)
    assert torch_head.tp_comm_s > 10 * core_head.tp_comm_s  # gathering 2048 x 128k logits vs three floats a token


def test_autocast_casts_every_gemm_weight_each_microbatch() -> None:
    """A stack that runs bf16 as autocast over fp32 parameters (ppplan's runtime until 2026-12; torchtitan without
    FSDP, TP or PP): each microbatch's forward reads every GEMM weight of the stage (layers and head, not the
    embedding table) in fp32 and writes its bf16 copy, 6 B per weight by HBM bytes, and its backward casts each bf16
    weight gradient back to fp32, 6 B more. The same stack without autocast (ppplan-torch as shipped, FSDP2's
    mixed precision) pays neither; everything else in F is the same."""
    c = a100()
    cfg = ParallelConfig(stack="ppplan-torch", tp=1, pp=1, dp=1, mbs=1, num_microbatches=2, stage_layers=[GPT.num_layers])
    plain = load_stack("ppplan-torch")
    autocast = plain.with_changes({"autocast_fp32_params": True})
    network = network_for(c)
    roof = RooflineTimes(GPT, c, "bf16", stack=autocast)
    plans, costs, _, _ = _pipeline_inputs(GPT, c, TRAIN, cfg, roof, autocast, autocast.overlap, network)
    _, plain_costs, _, _ = _pipeline_inputs(GPT, c, TRAIN, cfg, roof, plain, plain.overlap, network)
    gemm = stage_param_split(GPT, 0, GPT.num_layers, False, True, 1).total  # the layers and the logits' matrix
    assert plans[0].gemm_params == pytest.approx(gemm)
    assert gemm < stage_params(GPT, GPT.num_layers, True, True, 1)  # the position table is looked up, not multiplied
    assert costs[0].forward_s - plain_costs[0].forward_s == pytest.approx(memory_bound_time_s(c, 6 * gemm))


def test_autocast_sends_the_fp32_residual_stream_between_stages() -> None:
    """Under autocast over fp32 parameters a stage's output is the residual stream, fp32 (fp32 input + bf16 layer
    output): pp 2 inside a node sends s·b·h·4 B per microbatch, where the same stack without autocast sends bf16."""
    c = a100()
    cfg = ParallelConfig(stack="ppplan-torch", tp=1, pp=2, dp=1, mbs=1, num_microbatches=4, stage_layers=[2, 2])
    network = network_for(c)
    roof = RooflineTimes(GPT, c, "bf16", stack=load_stack("ppplan-torch"))
    pair = GroupPlacement(size=2, ranks_per_node=2, nodes=1, node_senders=2)
    plain = load_stack("ppplan-torch")
    autocast = plain.with_changes({"autocast_fp32_params": True})
    assert autocast.overlap.p2p == "exposed"  # torch's blocking sends: F holds the rank for its send
    plans, costs, _, _ = _pipeline_inputs(GPT, c, TRAIN, cfg, roof, autocast, autocast.overlap, network)
    _, plain_costs, _, _ = _pipeline_inputs(GPT, c, TRAIN, cfg, roof, plain, plain.overlap, network)
    send = {b: collective_s("p2p", b * S * H, pair, network) for b in (2, 4)}
    cast = memory_bound_time_s(c, 6 * plans[0].gemm_params)
    assert costs[0].forward_s - plain_costs[0].forward_s == pytest.approx(cast + send[4] - send[2])


@pytest.mark.parametrize("stack_name, dp, zero, split, per_param", [
    # ppplan's runtime wraps every bf16 stage in FSDP2's mixed precision, at one data rank and ZeRO 0 too: a bf16
    # unsharded copy (2 B), the unsharded gradients accumulated in fp32 (4 B), fp32 master weights and Adam's m, v
    ("ppplan-torch", 1, 0, False, (2, 4, 12)),
    ("ppplan-torch", 8, 0, False, (2, 4, 12)),
    ("ppplan-torch", 8, 1, False, (2, 4, 12 / 8)),
    ("ppplan-torch", 8, 3, False, (2 / 8, 4, 12 / 8)),
    # a split backward's W sets bf16 .grad after FSDP2's post-backward: kept beside the fp32 accumulator
    ("ppplan-torch", 1, 0, True, (2, 6, 12)),
    ("ppplan-torch", 8, 1, True, (2, 6, 12 / 8)),
    # torchtitan wraps where it shards (its rules refuse bf16 elsewhere: mixed_precision_needs_fsdp)
    ("torchtitan", 8, 1, False, (2, 4, 12 / 8)),
    ("torchtitan", 8, 3, False, (2 / 8, 4, 12 / 8)),
    ("torchtitan", 8, 1, True, (2, 6, 12 / 8)),
    # Megatron's fp32 main_grad buffer: its W adds into it, no bf16 copy
    ("megatron-core", 8, 1, True, (2, 4, 12 / 8)),
])
def test_bf16_state_per_parameter_as_the_stack_wraps_fsdp(stack_name: str, dp: int, zero: int, split: bool,
                                                          per_param: tuple[float, float, float]) -> None:
    """Bytes per parameter of a bf16 run at pp 2 (the pipeline keeps FSDP2's gradient sync off until the last
    microbatch, so gradients accumulate unsharded), by hand from the FSDP2 wrapping each stack does, under a schedule
    that does (``split``) or does not split the backward."""
    static = stack_static_memory(load_stack(stack_name), 1e9, 0.0, "bf16", 2, dp, 1, zero, split)
    held = (static.weights_bytes / 1e9, static.gradients_bytes / 1e9, static.optimizer_bytes / 1e9)
    assert held == pytest.approx(per_param)
