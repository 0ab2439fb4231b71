"""Each layer as the list of operators its stack runs (``costmodels.operators`` holds the operator
types and the building blocks): the embedding, a transformer layer (attention block, then the dense
or mixture-of-experts MLP block), and the head.

The attention block is multi-head / grouped-query attention or multi-head latent attention
(``costmodels.mla``); its core is one flash or unfused attention kernel, or with context parallelism
the stack's ring (``costmodels.context_parallel``). The MLP block is dense, or a mixture-of-experts
block (``costmodels.experts``) for the layers from ``first_dense_layers`` on.
"""

from __future__ import annotations

from costmodels.context_parallel import ring_attention_ops
from costmodels.experts import moe_mlp_ops
from costmodels.mla import mla_projection_ops
from costmodels.operators import (
    MASK_BYTES,
    Gemm,
    LayerOps,
    LayerShape,
    MemoryBound,
    Operator,
    activation,
    cross_entropy,
    flash_attention,
    linear,
    norm,
    residual,
    rotary,
    unfused_attention,
)
from costmodels.selective_ac import OP_SAC, op_sac_recompute
from profiles.schema import ModelSpec
from profiles.stack_schema import StackKernels


def attention_core_flops(model: ModelSpec, shape: LayerShape) -> float:
    """QKᵀ and AV of the rank's heads over its positions, counted in full (SC21's convention):
    4·b·s²·q/t, or 2·b·s²·H·(d_qk + d_v)/t for MLA."""
    s, b, tp = shape.local_seq_len, shape.mbs, shape.tp
    if model.is_mla:
        return 2.0 * b * s * s * model.num_attention_heads * (model.score_head_dim + model.value_head_dim) / tp
    return 4.0 * b * s * s * model.q_dim / tp


def _attention(model: ModelSpec, shape: LayerShape, kernels: StackKernels) -> LayerOps:
    t, tp, p = shape.tokens, shape.tp, shape.bytes_per_element
    h, q, kv = model.hidden_size, model.q_dim, model.kv_dim
    ops = norm("attn.norm", shape.replicated_tokens * h, p, shape.composite_rmsnorm and model.norm == "rmsnorm")
    if model.is_mla:
        ops = ops.plus(mla_projection_ops(model, shape, kernels))
    else:
        ops = ops.plus(linear("attn.qkv", t, h, (q + 2 * kv) / tp))
        if model.position_embedding == "rope":
            ops = ops.plus(rotary(t * (q + kv) / tp, p, kernels.fused_rope))
    if shape.cp > 1:
        ops = ops.plus(ring_attention_ops(model, shape, kernels))
    elif kernels.attention == "flash":
        ops = ops.plus(flash_attention(attention_core_flops(model, shape), generation=kernels.flash_generation))
    else:
        ops = ops.plus(unfused_attention(model, shape, kernels))
    ops = ops.plus(linear("attn.out", t, model.num_attention_heads * model.value_head_dim / tp, h))
    return ops.plus(residual("attn.residual", shape.replicated_tokens * h, p, kernels.dropout, kernels.fused_activation))


def _mlp(model: ModelSpec, shape: LayerShape, kernels: StackKernels) -> LayerOps:
    if shape.moe:
        return moe_mlp_ops(model, shape, kernels)
    t, tp, p = shape.tokens, shape.tp, shape.bytes_per_element
    h, f = model.hidden_size, model.ffn_size
    swiglu = model.activation == "swiglu"
    ops = norm("mlp.norm", shape.replicated_tokens * h, p, shape.composite_rmsnorm and model.norm == "rmsnorm")
    ops = ops.plus(linear("mlp.fc1", t, h, (2 if swiglu else 1) * f / tp))
    ops = ops.plus(activation(t * f / tp, p, swiglu, kernels.fused_activation))
    ops = ops.plus(linear("mlp.fc2", t, f / tp, h))
    return ops.plus(residual("mlp.residual", shape.replicated_tokens * h, p, kernels.dropout, kernels.fused_activation))


def stops_early(kernels: StackKernels) -> bool:
    """Whether the stack's full recompute is torch's early-stopped checkpoint (``StackKernels.full_recompute_early_stop``)
    ending before the block's tail: not with dropout, whose mask after the last GEMM is a saved tensor."""
    return kernels.full_recompute_early_stop and not kernels.dropout


SHARED_EXPERT_FC2 = "moe.shared.fc2"  # costmodels.experts.moe_mlp_ops names the shared experts' down projection so


def early_stop_tail(model: ModelSpec, kernels: StackKernels, moe: bool) -> tuple[str, ...]:
    """The operators a block runs after its forward's last saved tensor is packed, which torch's early-stopped
    recompute does not run again (autograd packs an op's inputs before the op runs; a residual add saves nothing):
    a dense block's down projection and residual add; an MoE block's shared experts' down projection (ppplan's
    runtime adds the shared experts after the weighted combine, ``launch/runtime/moe.py``) and residual add, or
    without shared experts the residual add alone (the combine's weighting saves the expert outputs)."""
    if not stops_early(kernels):
        return ()
    if not moe:
        return ("mlp.fc2", "mlp.residual")
    if model.shared_expert_ffn_hidden_size:
        return (SHARED_EXPERT_FC2, "mlp.residual")
    return ("mlp.residual",)


def early_stopped_recompute(forward: tuple[Operator, ...], model: ModelSpec, shape: LayerShape,
                            kernels: StackKernels) -> tuple[Operator, ...]:
    """The forward operators full recompute runs again: all of them, or under torch's early stop all but the
    block's tail (``early_stop_tail``): torch/utils/checkpoint.py stops the re-run forward once it has packed as
    many tensors as the forward saved."""
    tail = early_stop_tail(model, kernels, shape.moe)
    return tuple(op for op in forward if op.name not in tail)


def transformer_layer_ops(model: ModelSpec, shape: LayerShape, kernels: StackKernels) -> LayerOps:
    """One transformer layer (pre-norm: attention block, then MLP block). Recomputation: full
    re-runs every forward operator inside B (but the block's tail under torch's early stop,
    ``early_stopped_recompute``); selective re-runs the attention core (Korthikanti et al. 2022,
    Sec. 5), or with a per-op policy (torchtitan) every operator whose output the policy does not
    keep (``costmodels.selective_ac``)."""
    ops = _attention(model, shape, kernels).plus(_mlp(model, shape, kernels))
    redo = {"full": early_stopped_recompute(ops.forward, model, shape, kernels), "selective": ops.recompute}.get(shape.recompute, ())
    if shape.recompute == "selective" and kernels.selective_recompute == OP_SAC:
        redo = op_sac_recompute(ops.forward, model, shape.tp)
    return LayerOps(ops.forward, ops.backward_input, ops.backward_weight, redo)


def embedding_ops(model: ModelSpec, shape: LayerShape, kernels: StackKernels) -> LayerOps:
    """Token lookup (read the rows, write s·b·h: 2 accesses), learned positions added (3), the
    embedding dropout (Korthikanti et al. 2022, Sec. 4.3; 2p + 1 each way), and the weight
    gradient's scatter-add into the table (read the gradient and the rows, write the rows: 3)."""
    t, h, p = shape.tokens, model.hidden_size, shape.bytes_per_element
    forward: list[Operator] = [MemoryBound("embed.lookup", 2 * p * t * h)]
    weight: list[Operator] = [MemoryBound("embed.wgrad", 3 * p * t * h)]
    if model.position_embedding == "learned":
        forward.append(MemoryBound("embed.positions", 3 * p * t * h))
    if kernels.dropout:
        forward.append(MemoryBound("embed.dropout", (2 * p + MASK_BYTES) * shape.replicated_tokens * h))
    return LayerOps(forward=tuple(forward), backward_weight=tuple(weight))


def head_ops(model: ModelSpec, shape: LayerShape, kernels: StackKernels) -> LayerOps:
    """Final norm, the column-parallel logits GEMM over V/t, and the loss (``cross_entropy``)."""
    t, h, p, tp = shape.tokens, model.hidden_size, shape.bytes_per_element, shape.tp
    vocab = model.vocab_size
    ops = norm("head.norm", shape.replicated_tokens * h, p, shape.composite_rmsnorm and model.norm == "rmsnorm")
    ops = ops.plus(linear("head.logits", t, h, vocab / tp, low_precision=False))
    return ops.plus(cross_entropy(t, vocab / tp if kernels.vocab_parallel_loss else vocab, p, kernels))


def mtp_projection_ops(model: ModelSpec, shape: LayerShape, kernels: StackKernels) -> LayerOps:
    """A multi-token prediction module's own operators before its transformer layer: the next token's embedding
    (a lookup), the norms of it and of the hidden state, and the column-parallel 2h -> h projection of their
    concatenation (Megatron-Core ``MultiTokenPredictionLayer``: enorm, hnorm, eh_proj); its transformer layer and
    its head are priced as the model's (``costmodels.mtp``)."""
    t, h, p, tp = shape.tokens, model.hidden_size, shape.bytes_per_element, shape.tp
    composite = shape.composite_rmsnorm and model.norm == "rmsnorm"
    ops = embedding_ops(model, shape, kernels)
    ops = ops.plus(norm("mtp.enorm", shape.replicated_tokens * h, p, composite))
    ops = ops.plus(norm("mtp.hnorm", shape.replicated_tokens * h, p, composite))
    return ops.plus(linear("mtp.eh_proj", t, 2 * h, h / tp))


def op_sac_recompute_flops(model: ModelSpec, seq_len: int, mbs: int, moe: bool = False) -> float:
    """FLOPs a per-op selective recompute re-runs per layer and ``mbs`` sequences (no tensor
    parallelism): its recomputed GEMMs (``costmodels.selective_ac.op_sac_recompute``)."""
    shape = LayerShape(1, mbs, seq_len, False, "selective", 2, moe=moe)
    ops = transformer_layer_ops(model, shape, StackKernels(selective_recompute=OP_SAC))
    return sum(op.flops for op in ops.recompute if isinstance(op, Gemm))
