"""``costmodels.operators`` and ``costmodels.layer_ops``: each layer's operator list, FLOPs and bytes derived by hand.

Shapes: t = s·b tokens, h hidden, f FFN width, a heads, d head dim, p bytes per activation
element, tp tensor-parallel degree; every count below is per TP rank and per microbatch.
"""

from __future__ import annotations

import pytest

from costmodels.layer_ops import embedding_ops, head_ops, transformer_layer_ops
from costmodels.operators import (
    FlashAttention,
    Gemm,
    LayerShape,
    MemoryBound,
    cross_entropy,
)
from profiles.schema import ModelSpec
from profiles.stack_schema import StackKernels

GPT = ModelSpec(name="gpt", num_layers=4, hidden_size=1024, num_attention_heads=16, vocab_size=32000, seq_len=2048)
LLAMA = ModelSpec(name="llama", num_layers=4, hidden_size=1024, num_attention_heads=16, num_key_value_heads=4,
                  ffn_hidden_size=2816, vocab_size=32000, seq_len=2048, activation="swiglu")
FUSED = StackKernels()  # flash, fused norm/activation/rope/softmax, vocab-parallel loss, no dropout
MEGATRON_2021 = StackKernels(attention="unfused", fused_rope=False, dropout=True)
EAGER = StackKernels(fused_norm=False, fused_activation=False, fused_rope=False, vocab_parallel_loss=False)


def shape(tp: int = 2, mbs: int = 1, seq: int = 2048, sp: bool = False, recompute: str = "none", p: int = 2,
          composite: bool = False) -> LayerShape:
    return LayerShape(tp, mbs, seq, sp, recompute, p, composite_rmsnorm=composite)


def by_name(ops) -> dict:
    return {op.name: op for op in ops}


def test_gemms_of_a_gpt_layer_are_the_megatron_shapes_and_each_pass_does_the_same_flops() -> None:
    """QKV (t, 3h/tp, h), out (t, h, h/tp), fc1 (t, 4h/tp, h), fc2 (t, h, 4h/tp): 2·t·12h²/tp FLOPs
    in F, again in B (input gradients) and in W (weight gradients)."""
    t, h, tp = 2048, 1024, 2
    ops = transformer_layer_ops(GPT, shape(tp=tp), FUSED)
    f = by_name(ops.forward)
    assert (f["attn.qkv"].m, f["attn.qkv"].n, f["attn.qkv"].k) == (t, 3 * h / tp, h)
    assert (f["attn.out"].m, f["attn.out"].n, f["attn.out"].k) == (t, h, h / tp)
    assert (f["mlp.fc1"].m, f["mlp.fc1"].n, f["mlp.fc1"].k) == (t, 4 * h / tp, h)
    assert (f["mlp.fc2"].m, f["mlp.fc2"].n, f["mlp.fc2"].k) == (t, h, 4 * h / tp)
    expected = 2 * t * 12 * h * h / tp
    for passes in (ops.forward, ops.backward_input, ops.backward_weight):
        assert sum(op.flops for op in passes if isinstance(op, Gemm)) == pytest.approx(expected)
    w = by_name(ops.backward_weight)
    assert (w["mlp.fc1.wgrad"].m, w["mlp.fc1.wgrad"].n, w["mlp.fc1.wgrad"].k) == (h, 4 * h / tp, t)


def test_gqa_and_swiglu_gemms() -> None:
    """Llama: QKV out width (q + 2 kv)/tp = (1024 + 2·256)/tp; fc1 2f/tp (gate and up)."""
    f = by_name(transformer_layer_ops(LLAMA, shape(tp=2), FUSED).forward)
    assert f["attn.qkv"].n == (1024 + 2 * 256) / 2
    assert f["mlp.fc1"].n == 2 * 2816 / 2 and f["mlp.fc2"].k == 2816 / 2


def test_flash_attention_executes_the_causal_half_and_its_backward_is_two_and_a_half_times() -> None:
    """4·b·s²·h/tp FLOPs counted in full (SC21); a causal kernel executes half: 2·s²·h/tp."""
    s, h, tp = 2048, 1024, 2
    ops = transformer_layer_ops(GPT, shape(tp=tp), FUSED)
    core = by_name(ops.forward)["attn.core"]
    assert isinstance(core, FlashAttention) and core.flops == pytest.approx(2 * s * s * h / tp)
    assert by_name(ops.backward_input)["attn.core.bwd"].flops == pytest.approx(2.5 * 2 * s * s * h / tp)


def test_unfused_attention_materialises_the_scores() -> None:
    """Megatron-LM 2021: per head QKᵀ (s, s, d) and AV (s, d, s), batched over b·a/tp; the
    fused scale-mask-softmax reads and writes the s² scores (2p each), dropout reads p and
    writes p plus a 1-byte mask; the backward has four batched GEMMs, 3p softmax, 2p + 1 dropout."""
    s, a, d, tp, p = 2048, 16, 64, 2, 2
    heads = a / tp
    scores = heads * s * s
    ops = transformer_layer_ops(GPT, shape(tp=tp), MEGATRON_2021)
    f = by_name(ops.forward)
    assert (f["attn.qk"].m, f["attn.qk"].n, f["attn.qk"].k, f["attn.qk"].batch) == (s, s, d, heads)
    assert (f["attn.av"].m, f["attn.av"].n, f["attn.av"].k, f["attn.av"].batch) == (s, d, s, heads)
    assert f["attn.qk"].flops + f["attn.av"].flops == pytest.approx(4 * s * s * 1024 / tp)  # no causal skip
    assert f["attn.softmax"].bytes == pytest.approx(2 * p * scores)
    assert f["attn.dropout"].bytes == pytest.approx((2 * p + 1) * scores)
    b = by_name(ops.backward_input)
    assert b["attn.softmax.bwd"].bytes == pytest.approx(3 * p * scores)
    assert b["attn.dropout.bwd"].bytes == pytest.approx((2 * p + 1) * scores)
    assert sum(1 for op in ops.backward_input if op.name.startswith(("attn.qk.", "attn.av."))) == 4
    eager_softmax = by_name(transformer_layer_ops(GPT, shape(tp=tp), MEGATRON_2021.model_copy(update={"fused_softmax": False})).forward)
    assert eager_softmax["attn.softmax"].bytes == pytest.approx(4 * p * scores)


@pytest.mark.parametrize(("hidden", "heads", "p", "on_tensor_cores"), [
    (13824, 128, 2, False),  # head dim 108: 216 B a row (BigScience tr11, 30-40 % slower measured)
    (14400, 96, 2, False),   # head dim 150: 300 B
    (13824, 96, 2, True),    # head dim 144: 288 B
    (13312, 128, 2, True),   # head dim 104: 208 B
    (13824, 128, 4, True),   # head dim 108 in fp32: 432 B
])
def test_unfused_attention_leaves_the_tensor_cores_when_a_head_is_not_16_byte_aligned(
        hidden: int, heads: int, p: int, on_tensor_cores: bool) -> None:
    """Megatron's batched products step ``head_dim`` values from one head to the next: every one
    of the six runs on the tensor cores only when head_dim x p is a multiple of 16 bytes; the
    layer's linear GEMMs are unaffected."""
    model = ModelSpec(name="m", num_layers=2, hidden_size=hidden, num_attention_heads=heads, vocab_size=32000, seq_len=2048)
    ops = transformer_layer_ops(model, shape(tp=8, p=p), MEGATRON_2021)
    names = {"attn.qk", "attn.av", "attn.av.dgrad_p", "attn.av.dgrad_v", "attn.qk.dgrad_q", "attn.qk.dgrad_k"}
    bmms = [op for op in ops.forward + ops.backward_input if op.name in names]
    assert len(bmms) == 6 and {op.tensor_cores for op in bmms} == {on_tensor_cores}
    linears = [op for op in ops.forward + ops.backward_input + ops.backward_weight if isinstance(op, Gemm) and op.low_precision]
    assert linears and all(op.tensor_cores for op in linears)


def test_element_wise_bytes_of_a_gpt_layer_with_megatron_2021_dropout() -> None:
    """Two LayerNorms (one kernel each: 2 accesses F, 3 B) and two bias-dropout-adds (3p + 1 F,
    3p + 2p + 1 B) on t·h, replicated without SP; bias-GELU on t·4h/tp (2p F, 3p B)."""
    t, h, tp, p = 2048, 1024, 2, 2
    ops = transformer_layer_ops(GPT, shape(tp=tp), MEGATRON_2021)
    f, b = by_name(ops.forward), by_name(ops.backward_input)
    assert f["attn.norm"].bytes == f["mlp.norm"].bytes == pytest.approx(2 * p * t * h)
    assert b["attn.norm.bwd"].bytes == pytest.approx(3 * p * t * h)
    assert f["attn.residual"].bytes == pytest.approx((3 * p + 1) * t * h)
    assert b["attn.residual.bwd"].bytes == pytest.approx((3 * p + 2 * p + 1) * t * h)
    assert f["act"].bytes == pytest.approx(2 * p * t * 4 * h / tp)
    assert b["act.bwd"].bytes == pytest.approx(3 * p * t * 4 * h / tp)
    # sequence parallelism shards the replicated region
    sp = by_name(transformer_layer_ops(GPT, shape(tp=tp, sp=True), MEGATRON_2021).forward)
    assert sp["attn.norm"].bytes == pytest.approx(2 * p * t * h / tp)


def test_llama_eager_kernels_cost_more_bytes_than_fused_ones() -> None:
    """RMSNorm composite 7 accesses (F) vs 2; SwiGLU eager 5 vs fused 3 (F), 8 vs 5 (B); rotary
    on Q and K (t·(q + kv)/tp elements): fused 2p, fp32 composite 2p + 16 bytes each way."""
    t, h, f_width, tp, p = 2048, 1024, 2816, 2, 2
    fused = transformer_layer_ops(LLAMA, shape(tp=tp), FUSED)
    eager = transformer_layer_ops(LLAMA, shape(tp=tp, composite=True), EAGER)
    ff, ef = by_name(fused.forward), by_name(eager.forward)
    assert ff["attn.norm"].bytes == pytest.approx(2 * p * t * h)
    assert ef["attn.norm"].bytes == pytest.approx(7 * p * t * h)
    assert by_name(eager.backward_input)["attn.norm.bwd"].bytes == pytest.approx(14 * p * t * h)
    assert ff["act"].bytes == pytest.approx(3 * p * t * f_width / tp)
    assert ef["act"].bytes == pytest.approx(5 * p * t * f_width / tp)
    assert by_name(fused.backward_input)["act.bwd"].bytes == pytest.approx(5 * p * t * f_width / tp)
    assert by_name(eager.backward_input)["act.bwd"].bytes == pytest.approx(8 * p * t * f_width / tp)
    rope_elements = t * (1024 + 256) / tp
    assert ff["rope"].bytes == pytest.approx(2 * p * rope_elements)
    assert ef["rope"].bytes == pytest.approx((2 * p + 16) * rope_elements)
    assert "rope" not in by_name(transformer_layer_ops(GPT, shape(), FUSED).forward)  # learned positions


def test_recompute_reruns_the_attention_core_or_the_whole_forward() -> None:
    flash = transformer_layer_ops(GPT, shape(recompute="selective"), FUSED)
    assert [op.name for op in flash.recompute] == ["attn.core"]
    unfused = transformer_layer_ops(GPT, shape(recompute="selective"), MEGATRON_2021)
    assert [op.name for op in unfused.recompute] == ["attn.qk", "attn.softmax", "attn.dropout", "attn.av"]
    full = transformer_layer_ops(GPT, shape(recompute="full"), FUSED)
    assert full.recompute == full.forward
    assert transformer_layer_ops(GPT, shape(), FUSED).recompute == ()


def test_early_stopped_full_recompute_ends_before_the_down_projection() -> None:
    """torch's non-reentrant checkpoint stops once fc2's input is packed: fc2 (2·t·(f/tp)·h FLOPs) and the residual
    add after it are not run again; everything before them is. A dropout after fc2 (its mask is saved) or an MoE
    block's combine keeps the whole forward."""
    early = StackKernels(full_recompute_early_stop=True)
    for model, f in ((GPT, 4 * 1024), (LLAMA, 2816)):
        full = transformer_layer_ops(model, shape(recompute="full"), FUSED)
        stopped = transformer_layer_ops(model, shape(recompute="full"), early)
        assert [op.name for op in stopped.recompute] == [op.name for op in full.forward][:-2]
        assert [op.name for op in full.forward][-2:] == ["mlp.fc2", "mlp.residual"]
        gemm = [sum(op.flops for op in ops if isinstance(op, Gemm)) for ops in (full.recompute, stopped.recompute)]
        assert gemm[0] - gemm[1] == 2 * 2048 * (f / 2) * 1024
    with_dropout = StackKernels(full_recompute_early_stop=True, dropout=True)
    assert transformer_layer_ops(GPT, shape(recompute="full"), with_dropout).recompute == \
        transformer_layer_ops(GPT, shape(recompute="full"), with_dropout).forward
    assert transformer_layer_ops(GPT, shape(recompute="selective"), early).recompute == \
        transformer_layer_ops(GPT, shape(recompute="selective"), FUSED).recompute


@pytest.mark.parametrize(
    "kernels, vocab_per_rank, forward_bytes, backward_bytes",
    [
        (StackKernels(fused_cross_entropy=True), 16000, 4, 4),  # read p twice; read p, write p
        (StackKernels(), 16000, 2 + 36, 2 + 12),  # Megatron vocab-parallel on .float(): p + 36, p + 12
        (StackKernels(vocab_parallel_loss=False), 32000, 2 + 12, 2 + 20),  # gathered logits, torch CE in fp32
    ],
)
def test_cross_entropy_bytes(kernels: StackKernels, vocab_per_rank: int, forward_bytes: int, backward_bytes: int) -> None:
    t = 2048
    ops = head_ops(GPT, shape(tp=2), kernels)
    f, b = by_name(ops.forward), by_name(ops.backward_input)
    assert f["loss"].bytes == pytest.approx(forward_bytes * t * vocab_per_rank)
    assert b["loss.bwd"].bytes == pytest.approx(backward_bytes * t * vocab_per_rank)
    assert f["head.logits"].n == 32000 / 2 and f["head.logits"].k == 1024
    assert cross_entropy(t, vocab_per_rank, 2, kernels).forward == ops.forward[-1:]


def test_composer_train_metrics_add_two_forward_cross_entropies() -> None:
    """llm-foundry's MPT on Composer: flash-attn's fused loss (F 2p, B 2p per logit) and, after each microbatch's
    backward, two training-metric cross-entropies in fp32 under autocast (cast p + 4, log-softmax 8: p + 12 each),
    forward only: 4 + 2 x 14 = 32 B per logit in F, 4 in B."""
    t, vocab = 2048, 32000
    kernels = StackKernels(fused_cross_entropy=True, vocab_parallel_loss=False, train_metric_cross_entropies=2)
    ops = head_ops(GPT, shape(), kernels)
    f = by_name(ops.forward)
    assert f["loss"].bytes == pytest.approx(4 * t * vocab)
    assert f["train_metrics"].bytes == pytest.approx(2 * (2 + 12) * t * vocab)
    assert [op.name for op in ops.backward_input if "loss" in op.name or "metrics" in op.name] == ["loss.bwd"]
    assert by_name(ops.backward_input)["loss.bwd"].bytes == pytest.approx(4 * t * vocab)


def test_embedding_lookup_positions_dropout_and_weight_gradient() -> None:
    """Lookup 2p·t·h, learned positions added 3p·t·h, dropout (2p + 1)·t·h; W scatter-add 3p·t·h."""
    t, h, p = 2048, 1024, 2
    plain = embedding_ops(GPT, shape(), FUSED)
    assert [op.bytes for op in plain.forward] == pytest.approx([2 * p * t * h, 3 * p * t * h])
    assert [op.bytes for op in plain.backward_weight] == pytest.approx([3 * p * t * h])
    assert plain.backward_input == ()
    with_dropout = embedding_ops(GPT, shape(), MEGATRON_2021)
    assert with_dropout.forward[-1].bytes == pytest.approx((2 * p + 1) * t * h)
    assert [op.name for op in embedding_ops(LLAMA, shape(), FUSED).forward] == ["embed.lookup"]  # RoPE: no table


def test_every_operator_is_one_of_three_kinds() -> None:
    ops = transformer_layer_ops(LLAMA, shape(recompute="full"), EAGER)
    for op in (*ops.forward, *ops.backward_input, *ops.backward_weight, *ops.recompute):
        assert isinstance(op, (Gemm, FlashAttention, MemoryBound))


def test_only_the_layers_linear_gemms_run_in_the_low_precision() -> None:
    """Under fp8 Transformer Engine and torchao convert the transformer layers' linear layers; the
    unfused attention's batched products and the logits GEMM stay in the activation precision."""
    layer = transformer_layer_ops(GPT, shape(), MEGATRON_2021)
    gemms = [op for passes in (layer.forward, layer.backward_input, layer.backward_weight) for op in passes if isinstance(op, Gemm)]
    kept = sorted(op.name for op in gemms if not op.low_precision)
    assert kept == ["attn.av", "attn.av.dgrad_p", "attn.av.dgrad_v", "attn.qk", "attn.qk.dgrad_k", "attn.qk.dgrad_q"]
    assert all(op.low_precision for op in gemms if op.name.startswith(("attn.qkv", "attn.out", "mlp.")))
    head = head_ops(GPT, shape(), FUSED)
    assert [op.low_precision for op in (*head.forward, *head.backward_input, *head.backward_weight) if isinstance(op, Gemm)] == [False] * 3


def test_the_stacks_flash_kernel_generation_reaches_the_attention_operators() -> None:
    for generation in ("native", "fa2", "triton"):
        ops = transformer_layer_ops(GPT, shape(), StackKernels(flash_generation=generation))
        cores = [op for op in (*ops.forward, *ops.backward_input) if isinstance(op, FlashAttention)]
        assert len(cores) == 2 and {op.generation for op in cores} == {generation}
