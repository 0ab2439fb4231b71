"""FLOP and parameter counts from model shapes (never 6·N alone).

Conventions follow Narayanan et al., SC21 ("Efficient Large-Scale Language
Model Training on GPU Clusters Using Megatron-LM", Sec. 5.1 and Appendix):
a multiply-add is 2 FLOPs, attention scores and attention-over-values are
counted in full (no causal discount), the backward pass costs twice the
forward, and full recomputation adds one more forward of the transformer
layers (not of the logits). For GPT shapes this gives exactly
``72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h))`` model FLOPs per iteration and
``96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h))`` with full recomputation.

A mixture-of-experts layer counts what one token runs: the router GEMM, its ``experts_per_token``
routed experts and the shared experts (Megatron-LM's ``num_floating_point_operations`` counts the
same experts and leaves the router out; FACTS.md section 4.2); the leading dense layers count their
dense MLP. Multi-head latent attention counts its down- and up-projections and its 192-wide scores
over 128-wide values.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from costmodels.layer_ops import op_sac_recompute_flops
from costmodels.params import is_moe_layer, model_parameters
from costmodels.selective_ac import OP_SAC
from profiles.schema import ModelSpec


@dataclass(frozen=True)
class LayerForwardFlops:
    """Forward FLOPs of one transformer layer for ``tokens = seq_len * mbs`` tokens (unsharded)."""

    gemm: float
    attention: float

    @property
    def total(self) -> float:
        return self.gemm + self.attention


def attention_gemm_params(model: ModelSpec) -> int:
    """Weights of the attention's GEMMs: Q, K, V and the output projection (GQA aware; the query and
    output projections are h x heads·head_dim, which is h x h unless head_dim is set apart), or MLA's
    down- and up-projections and output projection (FACTS.md section 4.2, no norms)."""
    h = model.hidden_size
    if model.is_mla:
        heads, d_q, d_v = model.num_attention_heads, model.score_head_dim, model.value_head_dim
        r_kv, d_rope, r_q = model.kv_lora_rank or 0, model.qk_rope_head_dim or 0, model.q_lora_rank
        query = h * r_q + r_q * heads * d_q if r_q is not None else h * heads * d_q
        return query + h * (r_kv + d_rope) + r_kv * heads * ((model.qk_nope_head_dim or 0) + d_v) + heads * d_v * h
    q, kv = model.q_dim, model.kv_dim
    return h * (q + 2 * kv) + q * h


def mlp_gemm_params(model: ModelSpec, moe: bool = False) -> int:
    """Weights one token's MLP GEMMs use: the dense MLP, or (``moe``) the router, its
    ``experts_per_token`` routed experts and the shared experts (SwiGLU: three matrices, GELU: two)."""
    h = model.hidden_size
    mats = 3 if model.activation == "swiglu" else 2
    if not moe:
        return mats * h * model.ffn_size
    routed = (model.experts_per_token or 0) * (model.moe_ffn_hidden_size or 0)
    return h * (model.num_experts or 0) + mats * h * (routed + (model.shared_expert_ffn_hidden_size or 0))


def layer_gemm_params(model: ModelSpec, moe: bool = False) -> int:
    """Weights of the GEMMs one token passes through in a layer (dense, or a mixture-of-experts layer)."""
    return attention_gemm_params(model) + mlp_gemm_params(model, moe)


def attention_core_forward_flops(model: ModelSpec, seq_len: int, mbs: int) -> float:
    """QKᵀ and AV over all s² positions (SC21's convention, no causal discount): 4·b·s²·h for
    multi-head attention (SC21 eq. 1), 2·b·s²·H·(d_qk + d_v) for MLA's 192-wide scores and 128-wide
    values (FACTS.md section 4.2, here without its causal halving, like the dense count)."""
    if model.is_mla:
        heads = model.num_attention_heads
        return 2.0 * mbs * seq_len * seq_len * heads * (model.score_head_dim + model.value_head_dim)
    return 4.0 * mbs * seq_len * seq_len * model.hidden_size


def transformer_layer_forward_flops(model: ModelSpec, seq_len: int, mbs: int, moe: bool = False) -> LayerForwardFlops:
    """2·tokens·(GEMM weights) for the projections and the MLP (one token's: the router, top-k routed
    and the shared experts of an MoE layer), plus the attention core (SC21 eq. 1 terms)."""
    tokens = seq_len * mbs
    gemm = 2.0 * tokens * layer_gemm_params(model, moe)
    return LayerForwardFlops(gemm=gemm, attention=attention_core_forward_flops(model, seq_len, mbs))


def logits_forward_flops(model: ModelSpec, seq_len: int, mbs: int) -> float:
    """The output projection onto the vocabulary: 2·b·s·h·V."""
    return 2.0 * mbs * seq_len * model.hidden_size * model.vocab_size


def recompute_forward_flops(model: ModelSpec, seq_len: int, mbs: int, recompute: str, moe: bool = False,
                            selective: str = "attention_core", early_stop: bool = False) -> float:
    """Extra forward FLOPs per layer per microbatch that recomputation re-executes; ``selective`` is
    the stack's kind of selective recompute (``StackKernels.selective_recompute``); ``early_stop``: full recompute
    ends before the block's tail (``costmodels.layer_ops.early_stop_tail``), a dense layer's down projection
    (2·b·s·f·h FLOPs) or an MoE layer's shared experts' one."""
    layer = transformer_layer_forward_flops(model, seq_len, mbs, moe)
    if recompute == "full":
        ffn = (model.shared_expert_ffn_hidden_size or 0) if moe else model.ffn_size
        skipped = 2.0 * seq_len * mbs * ffn * model.hidden_size if early_stop else 0.0
        return layer.total - skipped
    if recompute == "selective":
        return op_sac_recompute_flops(model, seq_len, mbs, moe) if selective == OP_SAC else layer.attention
    return 0.0


def mtp_forward_flops(model: ModelSpec, seq_len: int, mbs: int) -> float:
    """One multi-token prediction module's forward: its 2h -> h projection (2·tokens·2h²), its transformer layer
    (the model's last kind) and its logits (DeepSeek-V3 report Sec. 2.2; Megatron-LM counts them the same way in
    ``num_floating_point_operations``)."""
    tokens = seq_len * mbs
    layer = transformer_layer_forward_flops(model, seq_len, mbs, moe=model.is_moe).total
    return 2.0 * tokens * 2 * model.hidden_size**2 + layer + logits_forward_flops(model, seq_len, mbs)


def model_flops_per_iteration(model: ModelSpec, global_batch: int, seq_len: int) -> float:
    """Model FLOPs (no recomputation): 3 × forward of every layer (dense and mixture-of-experts), the logits and
    the multi-token prediction modules."""
    moe_layers = model.num_moe_layers
    dense = transformer_layer_forward_flops(model, seq_len, global_batch).total
    layers = (model.num_layers - moe_layers) * dense
    if moe_layers:
        layers += moe_layers * transformer_layer_forward_flops(model, seq_len, global_batch, moe=True).total
    mtp = model.mtp_layers * mtp_forward_flops(model, seq_len, global_batch) if model.mtp_layers else 0.0
    return 3.0 * (layers + logits_forward_flops(model, seq_len, global_batch) + mtp)


def hardware_flops_per_iteration(
    model: ModelSpec, global_batch: int, seq_len: int, recompute_per_layer: list[str], selective: str = "attention_core",
    early_stop: bool = False,
) -> float:
    """Model FLOPs plus what recomputation re-executes, one entry of ``recompute_per_layer`` per layer
    (``early_stop``: full recompute under torch's early stop, ``recompute_forward_flops``)."""
    layers = Counter((kind, is_moe_layer(model, i)) for i, kind in enumerate(recompute_per_layer))
    extra = sum(count * recompute_forward_flops(model, seq_len, global_batch, kind, moe, selective, early_stop)
                for (kind, moe), count in layers.items())
    return model_flops_per_iteration(model, global_batch, seq_len) + extra


@dataclass(frozen=True)
class ParameterCounts:
    embedding: int
    per_layer: int
    final_norm: int
    head: int

    def total(self, num_layers: int) -> int:
        return self.embedding + num_layers * self.per_layer + self.final_norm + self.head


def parameter_counts(model: ModelSpec) -> ParameterCounts:
    """Parameters by component (``costmodels.params``). GPT style: 12h² + 13h per layer with biases
    and two LayerNorms (SC21 Table 1 formula); Llama style: no biases, RMSNorm weights only.

    For a mixture-of-experts model ``per_layer`` is the largest layer, an MoE layer holding every
    routed expert (no expert parallelism): an upper bound for each layer's weights until the
    cost model places experts per rank."""
    parts = model_parameters(model)
    per_layer = max(parts.dense_layer if parts.num_dense_layers else 0, parts.moe_layer)
    return ParameterCounts(embedding=parts.embedding, per_layer=per_layer, final_norm=parts.final_norm, head=parts.head)


def sc21_parameter_count(model: ModelSpec) -> float:
    """SC21 Table 1: P = 12·l·h²·(1 + 13/(12h) + (V + s)/(12·l·h))."""
    layers, h = model.num_layers, model.hidden_size
    return 12 * layers * h * h * (1 + 13 / (12 * h) + (model.vocab_size + model.seq_len) / (12 * layers * h))
