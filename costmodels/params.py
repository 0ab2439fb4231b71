"""Parameter counts from shapes: dense, mixture-of-experts and multi-head latent attention layers.

One layer is attention + its two norms + an MLP; a mixture-of-experts (MoE) layer replaces the
MLP by a router (a bias-free ``h -> num_experts`` linear), ``num_experts`` routed expert MLPs of
FFN ``moe_ffn_hidden_size`` and the shared experts (one MLP of FFN
``shared_expert_ffn_hidden_size``, DeepSeek's fused form). The formulas are those of
``/work/research/moe/FACTS.md`` section 3, which reproduce the published totals:

- GQA attention: ``h·q + 2·h·kv + q·h`` (q = heads·head_dim, kv = kv_heads·head_dim);
- MLA attention (DeepSeek-V2 paper, arXiv 2405.04434, Sec. 2.1; HF ``DeepseekV3Attention``):
  ``h·r_q + r_q + r_q·H·(d_nope + d_rope)`` (or ``h·H·(d_nope + d_rope)`` without a query
  rank) ``+ h·(r_kv + d_rope) + r_kv + r_kv·H·(d_nope + d_v) + H·d_v·h``, the ``+ r`` terms
  being the latent RMSNorms;
- a SwiGLU MLP of FFN f: ``3·h·f``; GELU: ``2·h·f`` (plus biases where the model has them).

``active`` counts what one token passes through: every dense part, the embedding table and
the LM head, and ``experts_per_token`` of the routed experts (the convention of Mistral's
12.9B for Mixtral-8x7B and Qwen's "activated" figures; DeepSeek's 37B / 36.7B activated
for V3 matches this count less the input embedding, FACTS.md section 3.2).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from profiles.schema import ModelSpec


def norm_params(model: ModelSpec, width: int | None = None) -> int:
    """One norm over ``width`` (default hidden): RMSNorm has a weight, LayerNorm a weight and a bias."""
    width = width or model.hidden_size
    return 2 * width if model.norm == "layernorm" else width


def mla_attention_params(model: ModelSpec) -> int:
    """Multi-head latent attention projections and latent norms (module docstring)."""
    h, heads = model.hidden_size, model.num_attention_heads
    r_kv, d_nope, d_rope, d_v = model.kv_lora_rank, model.qk_nope_head_dim, model.qk_rope_head_dim, model.v_head_dim
    assert r_kv is not None and d_nope is not None and d_rope is not None and d_v is not None  # ModelSpec._check_mla
    q_head = d_nope + d_rope
    if model.q_lora_rank is None:
        query = h * heads * q_head
    else:
        query = h * model.q_lora_rank + model.q_lora_rank + model.q_lora_rank * heads * q_head
    key_value = h * (r_kv + d_rope) + r_kv + r_kv * heads * (d_nope + d_v)
    return query + key_value + heads * d_v * h


def mla_tp_replicated_params(model: ModelSpec) -> int:
    """MLA's down-projections and their latent norms, which every tensor-parallel rank holds whole
    (Megatron-Core's ``linear_q_down_proj`` / ``linear_kv_down_proj`` are "duplicated" TE linears,
    torchtitan's ``wq_a`` / ``wkv_a`` are ``NoParallel``; FACTS.md section 4.1): ``h·r_q + r_q`` (with a
    query rank) ``+ h·(r_kv + d_rope) + r_kv``; 0 for other attention."""
    if not model.is_mla:
        return 0
    h, r_kv, d_rope = model.hidden_size, model.kv_lora_rank, model.qk_rope_head_dim
    assert r_kv is not None and d_rope is not None  # ModelSpec._check_mla
    query = h * model.q_lora_rank + model.q_lora_rank if model.q_lora_rank is not None else 0
    return query + h * (r_kv + d_rope) + r_kv


def attention_params(model: ModelSpec) -> int:
    """Q, K, V and output projections (GQA aware, biases when ``linear_bias``), or MLA's."""
    if model.is_mla:
        return mla_attention_params(model)
    h, q, kv = model.hidden_size, model.q_dim, model.kv_dim
    biases = (q + 2 * kv + h) if model.linear_bias else 0
    return h * (q + 2 * kv) + q * h + biases


def mlp_params(model: ModelSpec, ffn: int) -> int:
    """One MLP of FFN size ``ffn``: SwiGLU's three matrices or GELU's two, plus biases when ``linear_bias``."""
    h = model.hidden_size
    mats = 3 if model.activation == "swiglu" else 2
    biases = ((mats - 1) * ffn + h) if model.linear_bias else 0
    return mats * h * ffn + biases


def dense_layer_params(model: ModelSpec) -> int:
    """A dense layer: attention, two norms, the MLP of ``ffn_hidden_size``."""
    return attention_params(model) + 2 * norm_params(model) + mlp_params(model, model.ffn_size)


def moe_layer_params(model: ModelSpec, routed_experts: int) -> int:
    """An MoE layer holding ``routed_experts`` of its routed experts (all of them, or the top-k a token uses):
    attention, two norms, the router (h x num_experts, no bias), the routed and the shared experts."""
    assert model.num_experts is not None and model.moe_ffn_hidden_size is not None  # callers check is_moe
    shared = mlp_params(model, model.shared_expert_ffn_hidden_size) if model.shared_expert_ffn_hidden_size else 0
    router = model.hidden_size * model.num_experts
    return attention_params(model) + 2 * norm_params(model) + router + routed_experts * mlp_params(model, model.moe_ffn_hidden_size) + shared


def routed_expert_params(model: ModelSpec) -> int:
    """One routed expert: an MLP of FFN ``moe_ffn_hidden_size`` (0 for a dense model)."""
    return mlp_params(model, model.moe_ffn_hidden_size) if model.is_moe and model.moe_ffn_hidden_size else 0


def router_params(model: ModelSpec) -> int:
    """The router: a bias-free ``h -> num_experts`` linear (0 for a dense model)."""
    return model.hidden_size * model.num_experts if model.num_experts else 0


def is_moe_layer(model: ModelSpec, index: int) -> bool:
    """Layer ``index`` (0-based) has a mixture-of-experts MLP: every layer from ``first_dense_layers`` on."""
    return model.is_moe and index >= model.first_dense_layers


def moe_layers_in(model: ModelSpec, first_layer: int, num_layers: int) -> int:
    """How many of layers ``[first_layer, first_layer + num_layers)`` are mixture-of-experts layers."""
    if not model.is_moe:
        return 0
    return max(0, first_layer + num_layers - max(first_layer, model.first_dense_layers))


@dataclass(frozen=True)
class ModelParameters:
    """Whole-model parameter counts by part (counts of weights, not bytes)."""

    embedding: int  # token table (+ learned positions)
    head: int  # untied LM head; 0 when tied
    final_norm: int
    dense_layer: int
    num_dense_layers: int
    moe_layer: int  # with every routed expert; 0 for a dense model
    moe_layer_active: int  # with experts_per_token routed experts
    num_moe_layers: int
    mtp_module: int = 0  # one multi-token prediction module (mtp_module_params), embedding and head shared
    mtp_module_active: int = 0
    num_mtp_modules: int = 0

    @property
    def total(self) -> int:
        layers = self.num_dense_layers * self.dense_layer + self.num_moe_layers * self.moe_layer
        return self.embedding + layers + self.final_norm + self.head + self.num_mtp_modules * self.mtp_module

    @property
    def active(self) -> int:
        """What one token passes through (module docstring): equal to ``total`` for a dense model."""
        layers = self.num_dense_layers * self.dense_layer + self.num_moe_layers * self.moe_layer_active
        return self.embedding + layers + self.final_norm + self.head + self.num_mtp_modules * self.mtp_module_active

    @property
    def active_without_embedding(self) -> int:
        """``active`` less the input embedding table (the convention DeepSeek's activated counts fit)."""
        return self.active - self.embedding


def mtp_projection_params(model: ModelSpec) -> int:
    """A multi-token prediction module apart from its transformer layer: the norms of the hidden state and of
    the next token's embedding, the 2h -> h projection of their concatenation, and the module's final norm
    (Megatron-Core ``MultiTokenPredictionLayer``: enorm, hnorm, eh_proj, final_layernorm; DeepSeek-V3 report
    Sec. 2.2). Its embedding and output head are the model's own (shared)."""
    h = model.hidden_size
    return 3 * norm_params(model) + 2 * h * h


def mtp_module_params(model: ModelSpec, active: bool = False) -> int:
    """One multi-token prediction module: ``mtp_projection_params`` and one transformer layer of the model's last
    kind (an MoE layer in DeepSeek-V3; with ``experts_per_token`` routed experts when ``active``)."""
    if not model.is_moe:
        layer = dense_layer_params(model)
    else:
        layer = moe_layer_params(model, model.experts_per_token if active else model.num_experts)
    return mtp_projection_params(model) + layer


@functools.lru_cache(maxsize=256)
def model_parameters(model: ModelSpec) -> ModelParameters:
    """Parameter counts of ``model``: ``first_dense_layers`` dense layers, then MoE layers (all dense if not MoE)."""
    h = model.hidden_size
    embedding = model.vocab_size * h + (model.seq_len * h if model.position_embedding == "learned" else 0)
    moe = model.is_moe
    return ModelParameters(
        embedding=embedding,
        head=0 if model.tie_embeddings else model.vocab_size * h,
        final_norm=norm_params(model),
        dense_layer=dense_layer_params(model),
        num_dense_layers=model.num_layers - model.num_moe_layers,
        moe_layer=moe_layer_params(model, model.num_experts) if moe else 0,
        moe_layer_active=moe_layer_params(model, model.experts_per_token) if moe else 0,
        num_moe_layers=model.num_moe_layers,
        mtp_module=mtp_module_params(model) if model.mtp_layers else 0,
        mtp_module_active=mtp_module_params(model, active=True) if model.mtp_layers else 0,
        num_mtp_modules=model.mtp_layers,
    )
