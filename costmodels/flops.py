"""FLOP and parameter counts from model shapes (never 6·N alone).

Conventions follow Narayanan et al., SC21 ("Efficient Large-Scale Language
Model Training on GPU Clusters Using Megatron-LM", Sec. 5.1 and Appendix):
a multiply-add is 2 FLOPs, attention scores and attention-over-values are
counted in full (no causal discount), the backward pass costs twice the
forward, and full recomputation adds one more forward of the transformer
layers (not of the logits). For GPT shapes this gives exactly
``72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h))`` model FLOPs per iteration and
``96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h))`` with full recomputation.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodels.params import model_parameters
from profiles.schema import ModelSpec


@dataclass(frozen=True)
class LayerForwardFlops:
    """Forward FLOPs of one transformer layer for ``tokens = seq_len * mbs`` tokens (unsharded)."""

    gemm: float
    attention: float

    @property
    def total(self) -> float:
        return self.gemm + self.attention


def layer_gemm_params(model: ModelSpec) -> int:
    """Weights of the layer's GEMMs: Q, K, V, output projection and the MLP (GQA and SwiGLU aware;
    the query and output projections are h x heads·head_dim, which is h x h unless head_dim is set apart)."""
    h, q, kv, f = model.hidden_size, model.q_dim, model.kv_dim, model.ffn_size
    mlp_mats = 3 if model.activation == "swiglu" else 2
    return h * (q + 2 * kv) + q * h + mlp_mats * h * f


def transformer_layer_forward_flops(model: ModelSpec, seq_len: int, mbs: int) -> LayerForwardFlops:
    """2·tokens·(GEMM weights) for the projections and MLP, plus 4·b·s²·h for QKᵀ and AV (SC21 eq. 1 terms)."""
    tokens = seq_len * mbs
    gemm = 2.0 * tokens * layer_gemm_params(model)
    attention = 4.0 * mbs * seq_len * seq_len * model.hidden_size
    return LayerForwardFlops(gemm=gemm, attention=attention)


def logits_forward_flops(model: ModelSpec, seq_len: int, mbs: int) -> float:
    """The output projection onto the vocabulary: 2·b·s·h·V."""
    return 2.0 * mbs * seq_len * model.hidden_size * model.vocab_size


def recompute_forward_flops(model: ModelSpec, seq_len: int, mbs: int, recompute: str) -> float:
    """Extra forward FLOPs per layer per microbatch that recomputation re-executes."""
    layer = transformer_layer_forward_flops(model, seq_len, mbs)
    if recompute == "full":
        return layer.total
    if recompute == "selective":
        return layer.attention
    return 0.0


def model_flops_per_iteration(model: ModelSpec, global_batch: int, seq_len: int) -> float:
    """Model FLOPs (no recomputation): 3 × forward of every layer and the logits."""
    layer = transformer_layer_forward_flops(model, seq_len, global_batch).total
    return 3.0 * (model.num_layers * layer + logits_forward_flops(model, seq_len, global_batch))


def hardware_flops_per_iteration(
    model: ModelSpec, global_batch: int, seq_len: int, recompute_per_layer: list[str]
) -> float:
    """Model FLOPs plus what recomputation re-executes, one entry of ``recompute_per_layer`` per layer."""
    extra = sum(recompute_forward_flops(model, seq_len, global_batch, kind) for kind in recompute_per_layer)
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
