"""torchtitan's per-op selective recompute (``costmodels.selective_ac``): what it keeps and what it
re-runs, hand-derived from its policy (every other mm kept, attention outputs and TP reduce-scatters
kept, everything else recomputed) for Llama-3-8B's block (wq, wk, wv, wo; w1, w3, w2)."""

import pytest

from costmodels.estimate import estimate
from costmodels.flops import recompute_forward_flops
from costmodels.layer_costs import RooflineTimes
from costmodels.memory import ActivationVariant, layer_activation_bytes
from costmodels.operators import FlashAttention, Gemm, MemoryBound
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ParallelConfig, TrainSpec

TITAN = load_stack("torchtitan")
MEGATRON = load_stack("megatron-core")
S, B = 8192, 2


@pytest.fixture(scope="module")
def llama():
    return load_model("llama3-8b")


def test_a_llama_block_keeps_wq_wv_w1_w2_the_attention_output_and_its_input(llama) -> None:
    h, q, kv, f, heads, d = 4096, 4096, 1024, 14336, 32, 128
    assert (llama.hidden_size, llama.q_dim, llama.kv_dim, llama.ffn_size, llama.num_attention_heads) == (h, q, kv, f, heads)
    t = S * B
    # bf16: input x, wq, wv, w1, w2 outputs; the flash output and its fp32 log-sum-exp per head
    expected = 2 * t * (h + q + kv + f + h) + t * heads * (2 * d + 4)
    variant = ActivationVariant.for_stack(TITAN.kernels, "bf16")
    assert layer_activation_bytes(llama, S, B, 1, False, "selective", variant) == expected
    # with tp 2 and sequence parallelism: the input and the two reduce-scatter outputs are split over
    # the sequence, the column-parallel outputs over features, w2's partial sums are whole
    expected_tp2 = 2 * (t / 2) * h + 2 * t * (q + kv + f) / 2 + 2 * t * h + t * heads / 2 * (2 * d + 4) + 2 * 2 * (t / 2) * h
    assert layer_activation_bytes(llama, S, B, 2, True, "selective", variant) == expected_tp2


def test_a_compiled_block_drops_the_outputs_its_backward_never_reads(llama) -> None:
    """Under torch.compile the partitioner saves what the backward reads: w2's output (the 7th mm, kept by
    the eager policy) only feeds the residual add, and with sequence parallelism the reduce-scatter after it
    neither. Measured on CPU (bench/op_sac_compiled.py): 7.76-7.77 s·b·h kept per block eager, 6.75-6.78 compiled."""
    h, q, kv, f, heads, d = 4096, 4096, 1024, 14336, 32, 128
    t = S * B
    compiled = ActivationVariant.for_stack(TITAN.kernels.model_copy(update={"compiled_blocks": True}), "bf16")
    expected = 2 * t * (h + q + kv + f) + t * heads * (2 * d + 4)  # the eager set less w2's output
    assert layer_activation_bytes(llama, S, B, 1, False, "selective", compiled) == expected
    assert expected / (2 * t * h) == 6.765625  # 1 + 1 + 0.25 + 3.5 + 1 kept values and the log-sum-exp
    # tp 2 with sequence parallelism: w2's whole partial sums (2·t·h) and one of the two reduce-scatter outputs go
    expected_tp2 = 2 * (t / 2) * h + 2 * t * (q + kv + f) / 2 + t * heads / 2 * (2 * d + 4) + 2 * (t / 2) * h
    assert layer_activation_bytes(llama, S, B, 2, True, "selective", compiled) == expected_tp2
    # tp 2 without sequence parallelism: w2's whole partial sums go, nothing else (its all-reduce is not kept)
    eager = ActivationVariant.for_stack(TITAN.kernels, "bf16")
    assert layer_activation_bytes(llama, S, B, 2, False, "selective", eager) - layer_activation_bytes(
        llama, S, B, 2, False, "selective", compiled) == 2 * t * h
    # full recompute keeps the layer input, compiled or not
    assert layer_activation_bytes(llama, S, B, 1, False, "full", compiled) == layer_activation_bytes(
        llama, S, B, 1, False, "full", eager) == 2 * t * h


def test_a_compiled_gelu_block_keeps_what_the_eager_policy_keeps() -> None:
    """A GELU block runs six mm (wq, wk, wv, wo, fc1, fc2): fc2 is the 6th, recomputed by the policy, so
    nothing kept is unread."""
    gpt = load_model("gpt3-1.7b")
    assert gpt.activation == "gelu"
    compiled = ActivationVariant.for_stack(TITAN.kernels.model_copy(update={"compiled_blocks": True}), "bf16")
    eager = ActivationVariant.for_stack(TITAN.kernels, "bf16")
    assert layer_activation_bytes(gpt, 2048, 1, 1, False, "selective", compiled) == layer_activation_bytes(
        gpt, 2048, 1, 1, False, "selective", eager)


def test_deepseek_v3s_compiled_layers_drop_only_what_is_unread() -> None:
    """DeepSeek-V3's dense layer runs eight mm (MLA's q down and up, kv down and up, wo; w1, w3, w2): w2 is the
    8th, recomputed by the policy, so at tp 2 with sequence parallelism only the reduce-scatter after it, (t/2)·h
    bf16 values, is unread. Its MoE layers keep the eager set."""
    ds = load_model("deepseek-v3")
    t, h = 4096 * 1, ds.hidden_size
    compiled = ActivationVariant.for_stack(TITAN.kernels.model_copy(update={"compiled_blocks": True}), "bf16")
    eager = ActivationVariant.for_stack(TITAN.kernels, "bf16")
    def kept(variant: ActivationVariant, moe: bool) -> float:
        return layer_activation_bytes(ds, 4096, 1, 2, True, "selective", variant, ep=8, moe=moe)
    assert kept(eager, False) - kept(compiled, False) == 2 * (t / 2) * h
    assert kept(eager, True) == kept(compiled, True)


def test_attention_core_selective_is_unchanged_for_the_other_stacks(llama) -> None:
    """Megatron keeps Korthikanti's selective set: more than the per-op policy on a SwiGLU block."""
    megatron = ActivationVariant.for_stack(MEGATRON.kernels, "bf16")
    titan = ActivationVariant.for_stack(TITAN.kernels, "bf16")
    assert megatron.op_sac_kernels is None
    assert layer_activation_bytes(llama, S, B, 1, False, "selective", megatron) > layer_activation_bytes(
        llama, S, B, 1, False, "selective", titan)


def test_the_backward_reruns_wk_wo_w3_and_every_memory_bound_kernel_not_the_attention(llama) -> None:
    times = RooflineTimes(llama, load_cluster("dgx-h100"), "bf16", stack=TITAN)
    ops = times.operators("transformer", 1, B, S, False, "selective")
    gemms = [op for op in ops.recompute if isinstance(op, Gemm)]
    t, h, kv, f = S * B, 4096, 1024, 14336
    assert sorted((g.m, g.n, g.k) for g in gemms) == sorted([(t, kv, h), (t, h, h), (t, f, h)])  # wk, wo, w3
    assert not any(isinstance(op, FlashAttention) for op in ops.recompute)
    assert [op for op in ops.forward if isinstance(op, MemoryBound)] == [op for op in ops.recompute if isinstance(op, MemoryBound)]
    assert recompute_forward_flops(llama, S, B, "selective", selective="every_other_mm") == 2 * t * (h * kv + h * h + h * f)


@pytest.mark.parametrize(("sequence_parallel", "rerun"), [(True, 0.5), (False, 1.0)])
def test_the_backward_reruns_the_all_gathers_or_the_all_reduces(llama, sequence_parallel: bool, rerun: float) -> None:
    """With sequence parallelism the all-gathers run again (half the forward's TP traffic: the
    reduce-scatters are kept); without it the all-reduces (all of it). The forward's TP traffic is
    half of a layer's without recompute."""
    times = RooflineTimes(llama, load_cluster("dgx-h100"), "bf16", stack=TITAN)
    none = times.transformer(8, 1, S, sequence_parallel, "none")
    selective = times.transformer(8, 1, S, sequence_parallel, "selective")
    assert selective.tp_comm_s == pytest.approx(none.tp_comm_s * (1 + rerun / 2), rel=1e-12)


def test_torchtitan_prices_selective_between_none_and_full(llama) -> None:
    """The per-op policy costs time (a third of the block's forward GEMMs run again) and saves most of
    the activations: on one H100 node, Llama-3-8B at tp 1, dp 8, FSDP."""
    train = TrainSpec(global_batch=16, seq_len=S, precision="bf16")
    def config(recompute: str) -> ParallelConfig:
        return ParallelConfig(tp=1, pp=1, dp=8, mbs=B, num_microbatches=1, stage_layers=[32], schedule="1f1b",
                              recompute=recompute, zero=3, stack="torchtitan")

    est = {k: estimate(llama, load_cluster("dgx-h100"), train, config(k), stack=TITAN) for k in ("none", "selective", "full")}
    assert est["none"].step_time_s < est["selective"].step_time_s < est["full"].step_time_s
    assert est["full"].peak_memory_gib[0] < est["selective"].peak_memory_gib[0] < est["none"].peak_memory_gib[0]
