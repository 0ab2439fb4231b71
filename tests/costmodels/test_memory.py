"""Activation memory reproduces Korthikanti et al. 2022 Table 2 exactly; static memory per ZeRO stage;
what a split backward keeps from B to W."""

from dataclasses import replace

import pytest

from costmodels.estimate import estimate, stage_times
from costmodels.memory import (
    GIB,
    ActivationVariant,
    embedding_activation_bytes,
    end_weight_grad_input_bytes,
    gradients_fp32,
    gradients_held_per_stage,
    gradients_sharded,
    head_activation_bytes,
    held_gradient_bytes,
    layer_activation_bytes,
    layer_params,
    loss_bytes_per_logit,
    microbatch_grad_sync,
    optimizer_step_temp_bytes,
    recompute_working_bytes,
    stage_output_bytes,
    stage_param_split,
    state_bytes_per_param,
    static_memory,
    weight_grad_input_bytes,
)
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ParallelConfig, TrainSpec

REF = ActivationVariant.korthikanti()


@pytest.fixture(params=["gpt3-175b", "gpt3-1.7b", "gpt-1t"])
def gpt(request):
    return load_model(request.param)


def _sbh(m, b):
    return m.seq_len * b * m.hidden_size


def test_no_parallelism_is_34_plus_5as_over_h(gpt):
    s, h, a, b = gpt.seq_len, gpt.hidden_size, gpt.num_attention_heads, 2
    expected = _sbh(gpt, b) * (34 + 5 * a * s / h)
    assert layer_activation_bytes(gpt, s, b, 1, False, "none", REF) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("t", [2, 4, 8])
def test_tensor_parallel(gpt, t):
    s, h, a, b = gpt.seq_len, gpt.hidden_size, gpt.num_attention_heads, 1
    expected = _sbh(gpt, b) * (10 + 24 / t + 5 * a * s / (h * t))
    assert layer_activation_bytes(gpt, s, b, t, False, "none", REF) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("t", [2, 8])
def test_sequence_parallel(gpt, t):
    s, h, a, b = gpt.seq_len, gpt.hidden_size, gpt.num_attention_heads, 1
    expected = _sbh(gpt, b) / t * (34 + 5 * a * s / h)
    assert layer_activation_bytes(gpt, s, b, t, True, "none", REF) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("t", [2, 8])
def test_sequence_parallel_keeping_the_gathered_inputs_adds_4_sbh_times_1_minus_1_over_t(gpt, t):
    """DTensor's plan (ppplan's runtime, torchtitan) keeps the attention's and the MLP's all-gathered input
    (2 bytes x s·b·h each, every position) where Megatron keeps the rank's shard and gathers it again:
    34/t + 4·(1 - 1/t) s·b·h, plus the scores; at t 8, 3.5 s·b·h more than the paper's 4.25 (+82 %)."""
    s, h, a, b = gpt.seq_len, gpt.hidden_size, gpt.num_attention_heads, 1
    dtensor = ActivationVariant(**{**REF.__dict__, "sp_keeps_gathered_inputs": True})
    expected = _sbh(gpt, b) * ((34 + 5 * a * s / h) / t + 4 * (1 - 1 / t))
    assert layer_activation_bytes(gpt, s, b, t, True, "none", dtensor) == pytest.approx(expected, rel=1e-12)
    assert layer_activation_bytes(gpt, s, b, t, False, "none", dtensor) == layer_activation_bytes(gpt, s, b, t, False, "none", REF)
    assert layer_activation_bytes(gpt, s, b, t, True, "full", dtensor) == 2 * _sbh(gpt, b) / t  # the input only


def test_the_stacks_that_run_dtensors_plan_keep_the_gathered_inputs():
    """torchtitan and ppplan's runtime run DTensor's plan (the replicated input saved); a ppplan plan may keep the
    shards instead (sp_regather, gathered again on the critical path); Megatron keeps the shards always."""
    kernels = {name: load_stack(name).kernels for name in ("ppplan-torch", "torchtitan", "megatron-core", "megatron-lm-2021")}
    assert {name: (k.sequence_parallel_keeps_gathered_inputs, k.sequence_parallel_regather_exposed)
            for name, k in kernels.items()} == {
        "ppplan-torch": (True, True), "torchtitan": (True, False), "megatron-core": (False, False),
        "megatron-lm-2021": (False, False)}
    runtime = ActivationVariant.runtime("bf16")
    assert runtime.sp_keeps_gathered_inputs and runtime.sp_recompute_keeps_gathered_inputs


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_the_runtime_variant_is_what_ppplan_torch_kernels_give(precision, device):
    """``ActivationVariant.runtime()`` (the profiler's and the runtime's own checks) is the ppplan-torch stack's
    variant as the estimate builds it (torch's pipeline keeps the stage outputs, even of one stage)."""
    stack = load_stack("ppplan-torch")
    from_stack = ActivationVariant.for_stack(stack.kernels, precision, device, keeps_stage_output=True,
                                             single_stage_pipeline=True)
    assert from_stack.tp_loss_kernel == from_stack.loss_kernel  # runtime() leaves it None: the same kernel
    assert ActivationVariant.runtime(precision, device) == replace(from_stack, tp_loss_kernel=None)


def test_sequence_parallel_with_selective_recompute_is_34_sbh_over_t(gpt):
    t, b = 8, 1
    expected = 34 * _sbh(gpt, b) / t
    assert layer_activation_bytes(gpt, gpt.seq_len, b, t, True, "selective", REF) == pytest.approx(expected, rel=1e-12)


def test_tensor_parallel_with_selective_recompute_drops_attention_terms(gpt):
    t, b = 4, 1
    expected = _sbh(gpt, b) * (10 + 24 / t)
    assert layer_activation_bytes(gpt, gpt.seq_len, b, t, False, "selective", REF) == pytest.approx(expected, rel=1e-12)


def test_full_recompute_keeps_the_layer_input(gpt):
    b = 4
    assert layer_activation_bytes(gpt, gpt.seq_len, b, 8, False, "full", REF) == 2 * _sbh(gpt, b)
    assert layer_activation_bytes(gpt, gpt.seq_len, b, 8, True, "full", REF) == 2 * _sbh(gpt, b) / 8


def test_a_fully_recomputed_layer_holds_its_whole_forward_beside_its_checkpoint(gpt):
    """Full recompute: while a layer's backward runs it holds the re-run forward's activations, Korthikanti's
    sbh(10 + 24/t + 5as/(ht)) at tp t, of which its stored input, 2sbh, was already counted."""
    s, h, a, b, t = gpt.seq_len, gpt.hidden_size, gpt.num_attention_heads, 1, 8
    none = layer_activation_bytes(gpt, s, b, t, False, "none", REF)
    full = layer_activation_bytes(gpt, s, b, t, False, "full", REF)
    assert recompute_working_bytes(none, full) == pytest.approx(_sbh(gpt, b) * (10 + 24 / t + 5 * a * s / (h * t) - 2),
                                                                rel=1e-12)
    assert recompute_working_bytes(full, full) == 0.0


def test_runtime_variant_fp32_flash_no_dropout_by_hand():
    m = load_model("tiny-gpt")  # h=256, a=8, ffn=1024, s=128
    s, b, h, a, f = 128, 2, 256, 8, 1024
    # 4 replicated fp32 tensors of sbh, Q/K/V/out (4 sbh), two ffn tensors, fp32 lse per head
    expected = 4 * 4 * s * b * h + 4 * 4 * s * b * h + 2 * 4 * s * b * f + 4 * a * s * b
    assert layer_activation_bytes(m, s, b, 1, False, "none", ActivationVariant.runtime("fp32")) == expected


def test_fp8_on_transformer_engine_keeps_the_gemm_inputs_in_one_byte():
    """Llama-3-8B (h 4096, 32 heads, 8 kv heads -> kv_dim 1024, SwiGLU FFN 14336), s 8192, b 1, tp 1, no
    recompute, on megatron-core's kernels (flash, fused norm and SwiGLU: 3 FFN tensors, no dropout). bf16:
    norms' inputs, QKV and MLP inputs 4·2·sbh; Q, K 2·s(h + 1024), V 2·s·1024, attention output 2·sbh; gate,
    up and SwiGLU output 3·2·s·f; lse 4·a·s. fp8 (Transformer Engine keeps the cast input of every GEMM):
    the QKV, MLP, output-projection and FC2 inputs drop to 1 B: 3·sbh + s·f fewer bytes.
    torchtitan (torchao keeps the bf16 input) keeps the bf16 figure."""
    m = load_model("llama3-8b")
    s, h, f, kv, a = 8192, 4096, 14336, 1024, 32
    bf16 = 8 * s * h + 2 * s * (h + kv) + 2 * s * kv + 2 * s * h + 6 * s * f + 4 * a * s
    kernels = load_stack("megatron-core").kernels
    as_bf16 = ActivationVariant.for_stack(kernels, "bf16")
    as_fp8 = ActivationVariant.for_stack(kernels, "fp8")
    assert layer_activation_bytes(m, s, 1, 1, False, "none", as_bf16) == bf16
    assert layer_activation_bytes(m, s, 1, 1, False, "none", as_fp8) == bf16 - 3 * s * h - s * f
    titan = ActivationVariant.for_stack(load_stack("torchtitan").kernels, "fp8")
    assert layer_activation_bytes(m, s, 1, 1, False, "none", titan) == layer_activation_bytes(
        m, s, 1, 1, False, "none", ActivationVariant.for_stack(load_stack("torchtitan").kernels, "bf16"))
    # full recompute keeps the layer input, in bf16 either way
    assert layer_activation_bytes(m, s, 1, 1, False, "full", as_fp8) == 2 * s * h


def test_gqa_shrinks_k_and_v():
    m = load_model("tiny-llama")  # 8 heads, 4 kv heads, head_dim 32 -> kv_dim 128
    v = ActivationVariant.runtime("bf16")
    full_kv = m.model_copy(update={"num_key_value_heads": 8})
    diff = layer_activation_bytes(full_kv, 128, 1, 1, False, "none", v) - layer_activation_bytes(m, 128, 1, 1, False, "none", v)
    assert diff == 2 * 128 * (256 - 128) * 2  # K and V, bf16


@pytest.mark.parametrize("zero, expected_per_param", [(0, 16), (1, 4 + 12 / 8), (2, 2 + 14 / 8), (3, 16 / 8)])
def test_mixed_precision_adam_16_bytes_divided_per_zero_stage(zero, expected_per_param):
    st = static_memory(1e9, "bf16", dp=8, zero=zero)
    total = st.weights_bytes + st.gradients_bytes + st.optimizer_bytes
    assert total == pytest.approx(1e9 * expected_per_param)


@pytest.mark.parametrize("zero, expected_per_param", [(0, 16), (1, 4 + 12 / 8), (2, 4 + 12 / 8), (3, 2 + 14 / 8)])
def test_torch_runtime_accumulates_unsharded_gradients(zero, expected_per_param):
    st = static_memory(1e9, "bf16", dp=8, zero=zero, gradients_sharded=False)
    total = st.weights_bytes + st.gradients_bytes + st.optimizer_bytes
    assert total == pytest.approx(1e9 * expected_per_param)


@pytest.mark.parametrize("precision, grads", [("bf16", 4), ("fp8", 4), ("fp16", 2), ("fp32", 4)])
def test_megatron_accumulates_bf16_and_fp8_gradients_in_fp32(precision, grads):
    """'bfloat16 requires gradient accumulation and all-reduce to be done in fp32' (Megatron-LM
    arguments.py): 2 + 4 + 12 = 18 B/param unsharded; fp16 keeps fp16 gradients (16 B)."""
    st = static_memory(1e9, precision, dp=1, zero=0, state_bytes=state_bytes_per_param(precision, True))
    assert st.gradients_bytes == pytest.approx(1e9 * grads)
    assert state_bytes_per_param(precision, False)[1] == (4 if precision == "fp32" else 2)
    # DeepSpeed's BF16_Optimizer keeps the bf16 gradient beside the fp32 one: bf16 only
    kept = static_memory(1e9, precision, dp=1, zero=0, state_bytes=state_bytes_per_param(precision, True, True))
    assert kept.gradients_bytes == pytest.approx(1e9 * (6 if precision == "bf16" else grads))


@pytest.mark.parametrize("zero, dp", [(0, 1), (1, 2), (1, 8)])
def test_adam_state_in_bf16_takes_6_bytes_per_updated_parameter(zero, dp):
    """Apex's DistributedFusedAdam with dtype bf16 keeps its parameter copy, exp_avg and exp_avg_sq in bf16 (2 + 2 + 2)
    over the parameters the rank updates (its 1/dp share under ZeRO 1), beside bf16 weights and bf16 gradients:
    at dp 2 that is 2 + 2 + 6/2 = 7 B a parameter, against the fp32 state's 2 + 2 + 12/2 = 10."""
    st = static_memory(1e9, "bf16", dp=dp, zero=zero, state_bytes=state_bytes_per_param("bf16", False, False, True))
    shard = dp if zero >= 1 else 1
    assert (st.weights_bytes, st.gradients_bytes, st.optimizer_bytes) == pytest.approx((2e9, 2e9, 6e9 / shard))
    assert state_bytes_per_param("bf16", True, False, True) == (2, 4, 6)
    assert state_bytes_per_param("fp32", False, False, True) == (4, 4, 8)  # fp32 runs keep fp32 state


@pytest.mark.parametrize("stack, pp, zero, sharded", [
    ("ppplan-torch", 1, 3, False),  # torch pipelining defers the reduce-scatter, always
    ("ppplan-torch", 2, 2, False),
    ("torchtitan", 1, 3, True),  # FSDP2 reduce-scatters every microbatch without PP
    ("torchtitan", 1, 1, True),  # ... for every ZeRO stage FSDP2 shards with
    ("torchtitan", 2, 3, False),  # with PP torch's stage defers it: unsharded accumulation
    ("torchtitan", 1, 0, False),
    ("megatron-core", 1, 1, False),  # the distributed optimizer keeps the whole gradient buffer
    ("megatron-core", 1, 2, True),  # ZeRO-2 and beyond: the paper's rule
])
def test_gradients_are_sharded_where_the_stack_shards_them(stack, pp, zero, sharded):
    spec = load_stack(stack)
    assert gradients_sharded(spec, pp, 8, zero) is sharded
    assert gradients_sharded(spec, pp, 1, zero) is False  # one data-parallel rank: nothing to shard over
    assert microbatch_grad_sync(spec, pp, 8, zero) is (stack == "torchtitan" and pp == 1 and zero >= 1)


@pytest.mark.parametrize("stack, pp, data_ranks, zero, fp32", [
    ("torchtitan", 2, 8, 3, True),  # the pipeline keeps FSDP2's sync off: unsharded, upcast to the fp32 reduce dtype
    ("torchtitan", 2, 8, 1, True),  # ... for every ZeRO stage FSDP2 runs (reshard never)
    ("torchtitan", 1, 8, 3, False),  # reduce-scattered every microbatch: fp32 shards, the ZeRO paper's 16 B
    ("torchtitan", 2, 1, 3, False),  # no data-parallel rank to shard over: no FSDP
    ("torchtitan", 2, 8, 0, False),  # DDP: gradients in the parameters' bf16
    ("ppplan-torch", 2, 8, 3, True),  # FSDP2's mixed precision on every bf16 plan, as torchtitan's ...
    ("ppplan-torch", 2, 1, 0, True),  # ... on a one-rank mesh and at ZeRO 0 too (fsdp_mixed_precision_always)
    ("megatron-core", 1, 1, 0, True),  # main_grad in fp32, always
])
def test_fsdp_upcasts_the_unsharded_gradients_it_accumulates_under_a_pipeline(stack, pp, data_ranks, zero, fp32):
    """FSDP2 with reduce_dtype fp32 (torchtitan's training.mixed_precision_reduce) moves each unsharded bf16
    gradient to an fp32 accumulator while the gradient sync is off (FSDPParam.to_accumulated_grad_if_needed):
    under a pipeline a rank holds 4 B per unsharded parameter until the last microbatch. torchtitan's Llama
    3.1 405B on 512 H100 (tp 8 pp 8 FSDP 8): stage 0's 6.64 B parameters hold 24.7 GiB of gradients, not
    12.4 GiB (its measured peak, 82.5 GiB reserved, was priced 59.0 GiB and is priced 72.4)."""
    assert gradients_fp32(load_stack(stack), pp, data_ranks, zero, "bf16") is fp32
    sharded = gradients_sharded(load_stack(stack), pp, data_ranks, zero)
    st = static_memory(6.64e9, "bf16", dp=data_ranks, zero=zero, gradients_sharded=sharded,
                       state_bytes=state_bytes_per_param("bf16", fp32))
    expected = 6.64e9 * (4 if fp32 else 2) / (data_ranks if sharded else 1)
    assert st.gradients_bytes == pytest.approx(expected)


def test_weight_gradient_inputs_kept_from_b_to_w_by_hand() -> None:
    """tiny-gpt (h 256, q = kv = 256, FFN 1024, GELU), mbs 8 x seq 128 = 1,024 tokens, fp32 on CPU:
    two norm outputs 2·256·1024, QKV 1024·768, attention out 1024·256, FC1 1024·1024, FC2 1024·256
    = 2,883,584 elements, 4 B each = 11 MiB. tp 2 with SP: 262,144 + 393,216 + 262,144 + 524,288 +
    262,144 = 1,703,936 elements = 6.5 MiB."""
    model, cpu = load_model("tiny-gpt"), ActivationVariant.runtime("fp32", "cpu")
    assert weight_grad_input_bytes(model, 128, 8, 1, False, cpu) == 11 * 2**20
    assert weight_grad_input_bytes(model, 128, 8, 2, True, cpu) == 6.5 * 2**20
    # the head: final norm output 1024·256 and the full-vocabulary logits 1024·1024 (the runtime's loss)
    assert end_weight_grad_input_bytes(model, 128, 8, 1, cpu, embedding=False, head=True) == 4 * (1024 * 256 + 1024 * 1024)


def test_split_backward_on_torch_keeps_them_except_on_the_first_stage() -> None:
    """zb-h1 on ppplan-torch: stage 0 runs its whole backward as W (nothing kept between B and W);
    stages 1 and 2 keep two layers' worth (22 MiB), the last stage the head's on top. 1F1B keeps none."""
    model, cluster, stack = load_model("tiny-gpt"), load_cluster("cpu-local"), load_stack("ppplan-torch")
    train = TrainSpec(global_batch=32, seq_len=128, precision="fp32")

    def config(schedule: str) -> ParallelConfig:
        return ParallelConfig(stack="ppplan-torch", tp=1, pp=4, dp=1, mbs=8, num_microbatches=4, schedule=schedule,
                              stage_layers=[2, 2, 2, 2])

    kept = stage_times(model, cluster, train, config("zb-h1"), stack=stack).retained_bytes
    assert kept[:3] == (0.0, 22 * 2**20, 22 * 2**20)
    assert kept[3] == 22 * 2**20 + 4 * (1024 * 256 + 1024 * 1024)
    assert stage_times(model, cluster, train, config("1f1b"), stack=stack).retained_bytes == ()


def test_zero3_under_torch_pipelining_ends_the_backward_unsharded() -> None:
    """tiny-gpt, dp 2, ZeRO-3, fp32 on cpu-local. torch pipelining runs every backward with
    ``set_reshard_after_backward(False)`` until REDUCE_GRAD, so ppplan's runtime holds the sharded
    fp32 parameters (P/2 x 4 B) and all P unsharded (P x 4 B); torchtitan without PP (FSDP2 syncing
    every microbatch) holds two unsharded layers on top of its shard (the unit in use, the prefetched one)."""
    model, cluster = load_model("tiny-gpt"), load_cluster("cpu-local")
    train = TrainSpec(global_batch=8, seq_len=128, precision="fp32")
    params = stage_param_split(model, 0, 8, True, True, 1).total
    layer = layer_params(model, 1, 1, False).total

    def weights_gib(stack: str) -> float:
        cfg = ParallelConfig(stack=stack, tp=1, pp=1, dp=2, mbs=1, num_microbatches=4, schedule="1f1b", zero=3,
                             stage_layers=[8])
        return estimate(model, cluster, train, cfg, stack=load_stack(stack)).memory_breakdown_gib[0]["weights"]

    assert weights_gib("ppplan-torch") == pytest.approx((params * 4 / 2 + params * 4) / GIB, abs=1e-4)  # rounded to 1e-4 GiB
    assert weights_gib("torchtitan") == pytest.approx((params * 4 / 2 + 2 * layer * 4) / GIB, abs=1e-4)


def test_torch_pipelining_keeps_each_stages_output_until_its_backward() -> None:
    """tiny-gpt, mbs 8 x seq 128 = 1,024 tokens, fp32. torch's ``fwd_cache`` keeps the last stage's
    logits, 1024·1024·4 B = 4 MiB per microbatch, and another stage's residual output 1024·256·4 B =
    1 MiB (tp 2 with SP: 0.5 MiB); Megatron's engine keeps neither. GPipe pp 2, M 2 on cpu-local:
    the last rank's activations are two microbatches of 4 layers, the head and the logits (measured
    before this term: the runtime's last rank 11 % above its price on tiny-gpt pp 8 GPipe, mbs 8)."""
    model = load_model("tiny-gpt")
    cpu = ActivationVariant.runtime("fp32", "cpu")
    assert stage_output_bytes(model, 128, 8, 1, False, cpu, has_head=True) == 4 * 2**20
    assert stage_output_bytes(model, 128, 8, 1, False, cpu, has_head=False) == 2**20
    assert stage_output_bytes(model, 128, 8, 2, True, cpu, has_head=False) == 2**19
    megatron = ActivationVariant.for_stack(load_stack("megatron-core").kernels, "bf16")
    assert stage_output_bytes(model, 128, 8, 1, False, megatron, has_head=True) == 0.0

    cluster, stack = load_cluster("cpu-local"), load_stack("ppplan-torch")
    train = TrainSpec(global_batch=16, seq_len=128, precision="fp32")
    cfg = ParallelConfig(stack="ppplan-torch", tp=1, pp=2, dp=1, mbs=8, num_microbatches=2, schedule="gpipe",
                         stage_layers=[4, 4])
    layer = layer_activation_bytes(model, 128, 8, 1, False, "none", cpu)
    last = 2 * (4 * layer + head_activation_bytes(model, 128, 8, 1, False, cpu) + 4 * 2**20)
    breakdown = estimate(model, cluster, train, cfg, stack=stack).memory_breakdown_gib
    assert breakdown[1]["activations"] == pytest.approx(last / GIB, abs=1e-4)  # rounded to 1e-4 GiB
    # no pipeline: ppplan's runtime still runs a one-stage schedule, which keeps the logits (4 MiB) until the
    # microbatch's backward; torchtitan's loop frees them first: one microbatch of 8 layers and the head
    single = cfg.model_copy(update={"pp": 1, "num_microbatches": 2, "schedule": "1f1b", "stage_layers": [8]})
    one = estimate(model, cluster, train, single, stack=stack).memory_breakdown_gib[0]["activations"]
    embedding = embedding_activation_bytes(model, 128, 8, 1, False, cpu)
    head = head_activation_bytes(model, 128, 8, 1, False, cpu)
    assert one == pytest.approx((8 * layer + embedding + head + 4 * 2**20) / GIB, abs=1e-4)
    titan = load_stack("torchtitan")
    titan_variant = ActivationVariant.for_stack(titan.kernels, "fp32", "cpu", keeps_stage_output=True)
    assert not titan.single_stage_pipeline and not titan_variant.single_stage_pipeline
    titan_single = single.model_copy(update={"stack": "torchtitan"})
    titan_one = estimate(model, cluster, train, titan_single, stack=titan).memory_breakdown_gib[0]["activations"]
    titan_layer = layer_activation_bytes(model, 128, 8, 1, False, "none", titan_variant)
    titan_ends = (embedding_activation_bytes(model, 128, 8, 1, False, titan_variant)
                  + head_activation_bytes(model, 128, 8, 1, False, titan_variant))
    assert titan_one == pytest.approx((8 * titan_layer + titan_ends) / GIB, abs=1e-4)


@pytest.mark.parametrize(("stack", "precision", "zero", "dp", "copies", "weights"), [
    ("megatron-lm-2021", "fp16", 0, 1, 1, True),  # the fp32 copy of every fp16 gradient (apex FusedAdam: no temporary)
    ("megatron-lm-2021", "bf16", 0, 1, 0, True),  # fp32 main grads already: no copy
    ("megatron-core", "fp16", 1, 8, 1, True),  # the distributed optimizer copies its shard's gradients
    # torch's foreach AdamW: one fp32 temporary per parameter; FSDP2 has resharded: no bf16 unsharded copy
    ("ppplan-torch", "bf16", 0, 1, 1, False),
    ("torchtitan", "bf16", 1, 8, 0, True),  # fused AdamW
])
def test_the_optimizer_steps_peak_counts_where_it_rises_above_the_backwards(stack: str, precision: str, zero: int, dp: int,
                                                                           copies: int, weights: bool) -> None:
    """gpt3-1.7b, one GPU's share, full recompute (few activations): the step holds the static state
    plus 4 B per parameter the rank updates for each copy, while the activations are freed; the
    estimate adds what that exceeds the backward's peak by (the caching allocator reuses the rest). Where FSDP2
    wraps the stage, the static state at the step has no unsharded weights (``_step_weights_bytes``)."""
    model, cluster = load_model("gpt3-1.7b"), load_cluster("dgx-a100-80g")
    train = TrainSpec(global_batch=dp, seq_len=2048, precision=precision)
    cfg = ParallelConfig(stack=stack, tp=1, pp=1, dp=dp, mbs=1, num_microbatches=1, schedule="1f1b", zero=zero,
                         recompute="full", stage_layers=[model.num_layers])
    parts = estimate(model, cluster, train, cfg, stack=load_stack(stack)).memory_breakdown_gib[0]
    params = stage_param_split(model, 0, model.num_layers, True, True, 1).total
    updated = params / (dp if zero >= 1 else 1)
    static = (parts["weights"] if weights else 0.0) + parts["gradients"] + parts["optimizer"]
    backward = sum(v for k, v in parts.items() if k not in ("optimizer_step", "fragmentation", "runtime_reserved"))
    expected = max(0.0, static + copies * 4 * updated / GIB - backward)
    assert parts.get("optimizer_step", 0.0) == pytest.approx(expected, abs=2e-4)  # each term rounded to 1e-4 GiB
    if copies and dp == 1:
        assert expected > 1.0  # gpt3-1.7b's 4 B/param copy is well above its few recomputed activations


@pytest.mark.parametrize(("stack", "tp", "vocab_shards"), [("megatron-core", 8, 8), ("ppplan-torch", 2, 1)])
def test_the_head_keeps_the_fp32_softmax_not_the_logits(stack: str, tp: int, vocab_shards: int) -> None:
    """GPT-3 175B's head, seq 2048, mbs 1, bf16: the final norm's input (over tp with sequence parallelism),
    the logits GEMM's input, and 4 B per logit of the loss's fp32 softmax (vocab-parallel: the rank's V/t;
    gathered: all V). The bf16 logits are not kept (the output layer saves its input)."""
    model = load_model("gpt3-175b")
    t, h, v = 2048, model.hidden_size, model.vocab_size
    variant = ActivationVariant.for_stack(load_stack(stack).kernels, "bf16")
    expected = 2 * t * h / tp + 2 * t * h + 4 * t * v / vocab_shards
    assert head_activation_bytes(model, 2048, 1, tp, True, variant) == expected


def test_head_transient_spans_the_vocabulary_the_loss_sees() -> None:
    """The head stage's transient is the fp32 loss working set and its gradient, 2 x 4 B x tokens x the
    vocabulary the loss sees on a rank. ppplan's runtime gathers the logits before the loss, so every tp rank
    holds all V: tiny-gpt tp 4, mbs 4 x seq 128 = 512 tokens, 2 x 4 x 512 x 1,024 B = 4 MiB (the torch
    profiler's allocation events: NllLossBackward0 and LogSoftmaxBackward0 outputs, 2 MiB each, alive at the
    rank's peak), not the 1 MiB of V/4. A stack whose loss runs over vocabulary shards (Megatron) holds V/tp."""
    model, cluster = load_model("tiny-gpt"), load_cluster("cpu-local")
    train = TrainSpec(global_batch=8, seq_len=128, precision="fp32")
    cfg = ParallelConfig(stack="ppplan-torch", tp=4, pp=1, dp=1, mbs=4, num_microbatches=2, schedule="1f1b",
                         stage_layers=[8])
    torch_rank = estimate(model, cluster, train, cfg, stack=load_stack("ppplan-torch")).memory_breakdown_gib[0]
    assert torch_rank["transient"] == pytest.approx(2 * 4 * 512 * 1024 / GIB, abs=1e-4)
    megatron = cfg.model_copy(update={"stack": "megatron-core"})
    megatron_rank = estimate(model, cluster, train, megatron, stack=load_stack("megatron-core")).memory_breakdown_gib[0]
    # fp32: Megatron's loss works in place on the fp32 logits of its V/4 shard (nothing beside them), so the
    # MLP intermediate (1,024 / 4) and its gradient are the widest
    assert megatron_rank["transient"] == pytest.approx(2 * 4 * 512 * 256 / GIB, abs=1e-4)


@pytest.mark.parametrize(("stack", "kernels", "tp", "kept", "beside"), [
    ("megatron-core", {}, 8, 4, 2),  # fp32 softmax in place of its copy; the bf16 logits, then their bf16 gradient
    ("megatron-lm-2021", {}, 8, 4, 2),
    ("torchtitan", {}, 1, 4, 8),  # torch's fp32 log-softmax; the NLL and log-softmax backward outputs
    ("torchtitan", {}, 8, 4, 12),  # loss parallel: DTensor's grad_input, sum and product, all fp32
    ("ppplan-torch", {}, 1, 4, 8),
    ("ppplan-torch", {}, 4, 4, 8),  # gathers the logits: torch's kernel at every tp
    ("torchtitan", {"fused_cross_entropy": True}, 8, 2, 2),  # flash-attn xentropy: the bf16 logits, a bf16 gradient
])
def test_the_loss_holds_what_its_kernel_keeps_per_logit(stack: str, kernels: dict[str, object], tp: int, kept: int,
                                                        beside: int) -> None:
    spec = load_stack(stack)
    variant = ActivationVariant.for_stack(spec.kernels.model_copy(update=kernels), "bf16")
    assert loss_bytes_per_logit(variant, tp) == (kept, beside)


def test_torchtitan_loss_parallel_prices_llama3_70b_2d_by_hand() -> None:
    """torchtitan's Llama 3 70B on 256 H100 (FSDP 32, tp 8, local batch 16 x seq 8,192, full AC): the rank's loss
    sees 131,072 tokens x 128,256 / 8 = 16,032 logits each and at its backward's peak holds the kept fp32
    log-softmax and 3 fp32 tensors beside it (DTensor's _nll_loss_and_log_softmax_backward): 12 B x 2.10e9 logits
    = 23.48 GiB (8 B, 15.66 GiB, under torch's fused kernel). Full AC's re-run layer (4.82 GiB) and the MLP
    intermediate with its gradient (2 x 2 B x 131,072 x 28,672 / 8 = 1.75 GiB) are held in a layer's backward,
    after the loss's: the loss's phase is the peak, and the re-run layer is not added to it (it was until
    2026-12-06, 4.82 GiB too much). NCCL's buffers: 3 communicators (the default group, tp, fsdp) x 688 MB =
    2.02 GiB, and the 1 GiB CUDA context, which max_reserved does not hold. Llama 3's output layer is its own weight
    (not tied to the embedding): its shard, 128,256 x 8,192 / 256 x 16 B = 0.06 GiB. Measured: 71.9 GiB max_reserved."""
    from costmodels.rank_memory import NOT_ALLOCATED_PARTS
    from planner.trust.published_runs import PublishedRow, read_published_runs
    from planner.trust.validation import comparable_memory_gib
    row = next(r for r in read_published_runs() if isinstance(r, PublishedRow)
               and r.run == "Table 4 llama3-70b 256GPU FSDP32 TP8 PP1 CP1 seq8192 2D FSDP+TP+compile+Float8")
    est = estimate(row.model, row.cluster, row.train, row.config, stack=row.stack_spec)
    parts = est.memory_breakdown_gib[0]
    logits = 16 * 8192 * 128256 / 8
    assert parts["transient"] == pytest.approx(12 * logits / GIB, abs=1e-4)
    assert "recompute_working" not in parts
    assert parts["nccl_buffers"] == pytest.approx(3 * 688 / 1024, abs=1e-4)
    allocated = sum(v for k, v in parts.items() if k not in NOT_ALLOCATED_PARTS)
    assert allocated == pytest.approx(63.22 - 4.82 + 128256 * 8192 / 256 * 16 / GIB, abs=0.01)
    share = row.stack_spec.allocator_fragmentation
    assert share == 0.143
    assert max(est.peak_memory_gib) == pytest.approx(allocated * (1 + share) + 1 + 3 * 688 / 1024, abs=0.01)
    assert comparable_memory_gib(row, est) == pytest.approx(allocated * (1 + share), abs=0.01) == pytest.approx(66.8, abs=0.05)


def test_a_layers_backward_phase_wins_where_it_holds_more_than_the_loss() -> None:
    """Megatron's vocab-parallel loss holds its compute-dtype gradient beside the kept softmax: Llama-3 70B at tp 8
    with sequence parallelism, seq 8192, mbs 1, full recompute, on its last stage: the loss phase holds
    2 B x 8192 x 128256 / 8 = 250.5 MiB, more than the MLP intermediate and its gradient (2 x 2 B x 8192 x
    28672 / 8 = 112 MiB) but less than those beside the re-run layer (112 + 252.25 MiB), so the layer phase is
    priced. (Before 2026-12-06 the loss's 250.5 MiB replaced the MLP term and the re-run layer came on top.)"""
    model = load_model("llama3-70b")
    stack = load_stack("megatron-core")
    cfg = ParallelConfig(tp=8, pp=8, dp=1, mbs=1, num_microbatches=8, stage_layers=[10] * 8, schedule="1f1b",
                         recompute="full", sequence_parallel=True, stack="megatron-core")
    train = TrainSpec(global_batch=8, seq_len=8192, precision="bf16")
    est = estimate(model, load_cluster("dgx-h100"), train, cfg, stack=stack)
    last = est.memory_breakdown_gib[-1]
    mib = 2**20 / GIB
    mlp, loss = 2 * 2 * 8192 * 28672 / 8, 2 * 8192 * 128256 / 8
    assert (mlp / 2**20, loss / 2**20) == (112.0, 250.5)
    variant = ActivationVariant.for_stack(stack.kernels, "bf16")
    rerun = recompute_working_bytes(*(layer_activation_bytes(model, 8192, 1, 8, True, k, variant) for k in ("none", "full")))
    assert rerun / 2**20 == pytest.approx(252.25)
    assert last["transient"] == pytest.approx(112.0 * mib, abs=1e-4)
    assert last["recompute_working"] == pytest.approx(252.25 * mib, abs=1e-4)


def test_composer_fused_loss_prices_mpt_125m_on_a100_40gb_by_hand() -> None:
    """llm-foundry's MPT-125M, seq 2048, mbs 26, 8 A100-40GB, bf16 (a published run that fit in 40 GB): flash-attn's
    fused cross-entropy keeps the bf16 logits (2 B) and writes a bf16 gradient (2 B), 53,248 tokens x 50,368 logits
    x 2 B = 5.0 GiB each, where torch's loss kept 4 B and held 2 x 4 B beside (10 + 20 GiB: 50 GiB, infeasible)."""
    from planner.trust.published_runs import PublishedRow, read_published_runs

    row = next(r for r in read_published_runs() if isinstance(r, PublishedRow)
               and r.run == "MPT-125m seq2048 8xa100_40gb mbs26 ga3 bf16")
    est = estimate(row.model, row.cluster, row.train, row.config, stack=row.stack_spec)
    logits_gib = 2 * 2048 * 26 * 50368 / GIB
    head = head_activation_bytes(row.model, 2048, 26, 1, False, ActivationVariant.for_stack(row.stack_spec.kernels, "bf16"))
    assert head == pytest.approx(2 * 2048 * 26 * 768 * 2 + logits_gib * GIB)
    assert est.memory_breakdown_gib[0]["transient"] == pytest.approx(logits_gib, abs=1e-4)
    assert est.fits


def test_a_fused_loss_and_the_pipeline_keep_the_same_logits_once() -> None:
    """Under torch.distributed.pipelining the last stage's output is the logits; a fused loss keeps that same
    tensor (head_activation_bytes counts it), so the stage output adds nothing on the head stage."""
    model = load_model("tiny-gpt")
    kernels = load_stack("torchtitan").kernels.model_copy(update={"fused_cross_entropy": True})
    variant = ActivationVariant.for_stack(kernels, "bf16", keeps_stage_output=True)
    assert stage_output_bytes(model, 128, 4, 1, False, variant, True) == 0.0
    assert stage_output_bytes(model, 128, 4, 1, False, variant, False) == 2 * 128 * 4 * model.hidden_size
    plain = ActivationVariant.for_stack(load_stack("torchtitan").kernels, "bf16", keeps_stage_output=True)
    assert stage_output_bytes(model, 128, 4, 1, False, plain, True) == 2 * 128 * 4 * model.vocab_size


def test_an_interleaved_torch_pipeline_holds_one_stages_unsharded_gradients_at_its_peak() -> None:
    """torchtitan's Table 5 (Llama 3.1 405B, FSDP 8 x TP 8 x PP 8, M 8, full AC): FSDP2 accumulates each stage's
    unsharded gradients in fp32 (4 B x 398,462,976 parameters per layer per tp rank = 1.4844 GiB) from the stage's
    first backward until REDUCE_GRAD right after its last, which frees them. 1F1B's rank 0 runs one stage (16 layers
    and the 128,256 x 16,384 / 8 embedding, 0.9785 GiB): its gradients are alive at its activation peak, 24.729
    GiB. Interleaved (v 2, stages 0 and 8 of 8 layers each on rank 0) runs all 16 forwards, then stage 8's 8
    backwards, then stage 0's: at the peak (stage 8's first backward, every microbatch in flight) only stage 8's
    gradients live, 8 x 1.4844 = 11.875 GiB; by stage 0's first backward stage 8's microbatches and gradients are
    freed. Read: 82.5 (1F1B) and 72.7 GiB (interleaved) max_reserved, 9.8 GiB apart; priced 11.2 apart (until
    2026-12-06 the interleaved rank held both stages' gradients and was priced 3.4 GiB above 1F1B, 88.5 GiB in all)."""
    from planner.trust.published_runs import PublishedRow, read_published_runs
    from planner.trust.validation import comparable_memory_gib
    rows = {r.config.schedule: r for r in read_published_runs() if isinstance(r, PublishedRow)
            and r.run.startswith("Table 5 llama3.1-405b 512GPU")}
    layer = 4 * 398_462_976 / GIB
    priced = {}
    for schedule, grads in (("1f1b", 16 * layer + 4 * 128256 * 16384 / 8 / GIB), ("interleaved-1f1b", 8 * layer)):
        row = rows[schedule]
        est = estimate(row.model, row.cluster, row.train, row.config, stack=row.stack_spec)
        assert est.memory_breakdown_gib[0]["gradients"] == pytest.approx(grads, abs=1e-3)
        priced[schedule] = comparable_memory_gib(row, est)
    assert priced["1f1b"] - priced["interleaved-1f1b"] == pytest.approx(11.2, abs=0.05)


@pytest.mark.parametrize(("stack", "pp", "data_ranks", "zero", "precision", "held"), [
    ("ppplan-torch", 2, 4, 1, "bf16", True),   # FSDP2 over 4 ranks, torch's pipeline defers the sync
    ("ppplan-torch", 2, 4, 0, "bf16", True),   # ZeRO 0 is HSDP with one shard on ppplan's runtime
    ("ppplan-torch", 2, 1, 0, "bf16", True),   # a one-rank FSDP mesh for bf16's mixed precision
    ("ppplan-torch", 2, 1, 0, "fp32", False),  # fp32 on one rank: no FSDP
    ("ppplan-torch", 1, 4, 1, "bf16", True),   # the runtime runs a one-stage schedule at pp 1 too
    ("torchtitan", 2, 8, 1, "bf16", True),
    ("torchtitan", 1, 8, 1, "bf16", False),    # no pipeline: FSDP2 reduce-scatters every microbatch
    ("torchtitan", 2, 8, 0, "bf16", False),    # ZeRO 0 is DDP
    ("megatron-core", 2, 8, 1, "bf16", False),  # the distributed optimizer's buffer lives through the step
])
def test_where_gradients_live_per_stage(stack: str, pp: int, data_ranks: int, zero: int, precision: str,
                                        held: bool) -> None:
    assert gradients_held_per_stage(load_stack(stack), pp, data_ranks, zero, precision) is held


def test_what_a_stage_holds_and_keeps_of_its_gradients() -> None:
    """FSDP2's fp32 unsharded gradients (4 B per parameter) until REDUCE_GRAD, then the fp32 shard: dense parameters
    over the dp x cp ranks, routed experts over their expert-data-parallel ranks; whole at ZeRO 0 (HSDP, one shard).
    6 B held (bf16 beside fp32 under a split backward) still keeps 4 B over the shard."""
    dense, experts = 1e9, 4e9
    assert held_gradient_bytes(4 * (dense + experts), dense, experts, 8, 4, 1) == (2e10, 4 * (dense / 8 + experts / 2))
    assert held_gradient_bytes(4 * (dense + experts), dense, experts, 8, 4, 1, expert_data_ranks=1)[1] == 4 * (dense / 8 + experts)
    assert held_gradient_bytes(6 * dense, dense, 0.0, 8, 1, 1) == (6e9, 5e8)
    assert held_gradient_bytes(6 * dense, dense, 0.0, 8, 1, 0) == (6e9, 4e9)
    assert held_gradient_bytes(4 * dense, dense, 0.0, 8, 1, 0) == (4e9, 4e9)


def test_the_optimizer_step_holds_only_the_reduce_scattered_gradients() -> None:
    """Where gradients live per stage, every stage's REDUCE_GRAD has run before the optimizer steps: it holds the
    fp32 shards (4 B / dp per parameter), not the unsharded fp32 gradients. Llama-3 8B on ppplan's runtime, pp 2,
    dp 4, ZeRO 1, bf16, full recompute, seq 2048: rank 0 holds p = 4,015,128,576 parameters (16 layers and the
    embedding). Its step holds 2p (bf16 weights) + p (the shards) + 3p (Adam over the ZeRO shard) + p (foreach
    Adam's fp32 temporary over it) = 7p = 26.18 GiB, below the backward's 35.02 GiB (its 4p of unsharded
    gradients); counted unsharded, the step held 10p = 37.39 GiB and was the rank's peak (44.07 GiB in all, now
    41.51)."""
    from costmodels.rank_memory import NOT_ALLOCATED_PARTS
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100")
    train = TrainSpec(global_batch=32, seq_len=2048, precision="bf16")
    cfg = ParallelConfig(tp=1, pp=2, dp=4, mbs=1, num_microbatches=8, schedule="1f1b", zero=1, recompute="full",
                         stage_layers=[16, 16])
    est = estimate(model, cluster, train, cfg, stack=load_stack("ppplan-torch"))
    parts = est.memory_breakdown_gib[0]
    p = 4_015_128_576
    assert stage_param_split(model, 0, 16, True, False, 1).total == p
    assert parts["gradients"] == pytest.approx(4 * p / GIB, abs=1e-4)  # all of them at the backward's peak
    assert "optimizer_step" not in parts
    allocated = sum(v for k, v in parts.items() if k not in NOT_ALLOCATED_PARTS)
    assert allocated == pytest.approx(35.02, abs=0.01)
    assert 7 * p / GIB < allocated < 10 * p / GIB
    assert est.peak_memory_gib[0] == pytest.approx(41.51, abs=0.01)


@pytest.mark.parametrize(("stack", "precision", "zero", "bytes_per_param"), [
    # DeepSpeed's FP16_Optimizer: per-tensor fp32 casts (4 B) beside the flat fp32 gradient they are cat'ed into (4 B)
    ("megatron-deepspeed", "fp16", 0, 8),
    # its ZeRO-1 optimizer: the fp32 copy of the rank's partition only (4 B per updated parameter)
    ("megatron-deepspeed", "fp16", 1, 4),
    # BF16_Optimizer keeps fp32 gradients already: no copy
    ("megatron-deepspeed", "bf16", 0, 0),
    # Megatron-LM's Float16Optimizer: main_param.grad = main_grad.float(), one fp32 copy
    ("megatron-lm-2021", "fp16", 0, 4),
])
def test_the_fp16_step_copies_gradients_as_the_stacks_optimizer_does(stack: str, precision: str, zero: int,
                                                                     bytes_per_param: int) -> None:
    assert optimizer_step_temp_bytes(load_stack(stack), precision, 1e9, zero) == bytes_per_param * 1e9


def test_an_fsdp_rank_steps_without_its_unsharded_weights() -> None:
    """llama3-8b on 8 H100, ppplan-torch, bf16, dp 8 at ZeRO 0 (HSDP with one shard): FSDP2 reshards every unit
    before the step, so the step holds the fp32 gradients (4 B/param), Adam's 12 B (fp32 master, m, v) and foreach
    Adam's fp32 temporary (4 B/param, as many bytes as the gradients), not the bf16 unsharded copy (2 B/param)."""
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100")
    cfg = ParallelConfig(tp=1, pp=1, dp=8, mbs=1, num_microbatches=8, zero=0, recompute="full", stage_layers=[32])
    bd = estimate(model, cluster, TrainSpec(global_batch=64, seq_len=4096), cfg,
                  stack=load_stack("ppplan-torch")).memory_breakdown_gib[0]
    outside = ("optimizer_step", "fragmentation", "runtime_reserved", "nccl_buffers", "heap_reserve")
    backward = sum(v for k, v in bd.items() if k not in outside)
    step = 2 * bd["gradients"] + bd["optimizer"]
    assert bd["weights"] == pytest.approx(bd["gradients"] / 2, rel=1e-3)  # 2 B against 4 B per parameter
    assert bd["optimizer_step"] == pytest.approx(step - backward, abs=2e-3)
