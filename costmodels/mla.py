"""Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, Sec. 2.1; Megatron-Core
``MLASelfAttention``): the operators that replace the Q/K/V projections, and what they keep.

Queries go down to ``q_lora_rank`` (or straight to the heads without one), through an RMSNorm and
up to ``heads · (qk_nope + qk_rope)``; keys and values share a ``kv_lora_rank`` latent (plus one
``qk_rope``-wide rotary key for all heads), normed and projected up to ``heads · (qk_nope + v)``.
The down-projections are whole on every tensor-parallel rank (Megatron-Core's "duplicated" linears,
torchtitan's ``NoParallel``); the up-projections are column-parallel over the heads
(FACTS.md section 4.1). The attention core then runs ``heads`` heads of 192-wide scores over
128-wide values (``ModelSpec.score_head_dim`` / ``value_head_dim``).
"""

from __future__ import annotations

from costmodels.operators import LayerOps, LayerShape, linear, norm, rotary
from profiles.schema import ModelSpec
from profiles.stack_schema import StackKernels


def mla_projection_ops(model: ModelSpec, shape: LayerShape, kernels: StackKernels) -> LayerOps:
    """Down-projections (whole), latent norms, up-projections (heads over tp) and the rotary part of
    queries and the shared rotary key, on the rank's tokens."""
    t, tp, p, h = shape.tokens, shape.tp, shape.bytes_per_element, model.hidden_size
    heads, d_qk = model.num_attention_heads, model.score_head_dim
    r_kv, d_rope, d_nope = model.kv_lora_rank or 0, model.qk_rope_head_dim or 0, model.qk_nope_head_dim or 0
    if model.q_lora_rank is not None:
        ops = linear("mla.q_down", t, h, model.q_lora_rank)
        ops = ops.plus(norm("mla.q_norm", t * model.q_lora_rank, p, False))
        ops = ops.plus(linear("mla.q_up", t, model.q_lora_rank, heads * d_qk / tp))
    else:
        ops = linear("mla.q", t, h, heads * d_qk / tp)
    ops = ops.plus(linear("mla.kv_down", t, h, r_kv + d_rope))
    ops = ops.plus(norm("mla.kv_norm", t * r_kv, p, False))
    ops = ops.plus(linear("mla.kv_up", t, r_kv, heads * (d_nope + model.value_head_dim) / tp))
    return ops.plus(rotary(t * (heads / tp + 1) * d_rope, p, kernels.fused_rope))


def mla_activation_bytes(model: ModelSpec, tokens: float, tp: int, p: int) -> tuple[float, float]:
    """(kept per tp rank, kept whole on every tp rank) by MLA's attention block per layer: q and k
    (``heads · d_qk``), v and the attention output (``heads · d_v``) over tp; the latent tensors
    (the q down-projection's output and its normed copy, the kv latent with the rotary key and its
    normed latent) whole (FACTS.md section 4.3)."""
    heads, d_qk, d_v = model.num_attention_heads, model.score_head_dim, model.value_head_dim
    sharded = p * tokens * heads * (2 * d_qk + 2 * d_v)
    r_q = model.q_lora_rank or 0
    whole = p * tokens * (2 * r_q + 2 * (model.kv_lora_rank or 0) + (model.qk_rope_head_dim or 0))
    return sharded / tp, whole
