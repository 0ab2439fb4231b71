"""Memory per pipeline rank: weights, gradients, optimizer states, activations.

Activations follow Korthikanti et al. 2022, "Reducing Activation Recomputation
in Large Transformer Models", Sec. 4 and Table 2, term by term, generalised to
GQA (K and V of ``kv_dim``), SwiGLU and fp32. With the reference variant
(2-byte activations, 1-byte dropout masks, no fused attention, GELU MLP) one
layer stores ``s·b·h·(34 + 5·a·s/h)`` bytes without tensor parallelism,
``s·b·h·(10 + 24/t + 5·a·s/(h·t))`` with TP, ``s·b·h/t·(34 + 5·a·s/h)`` with
sequence parallelism, ``34·s·b·h/t`` with SP and selective recomputation, and
``2·s·b·h`` (``/t`` with SP) with full recomputation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from costmodels.context_parallel import cp_activation_bytes
from costmodels.experts import moe_activation_bytes, routed_rows
from costmodels.flops import parameter_counts
from costmodels.layer_ops import transformer_layer_ops
from costmodels.mla import mla_activation_bytes
from costmodels.operators import FP32_BYTES, LayerShape
from costmodels.params import (
    dense_layer_params,
    mla_tp_replicated_params,
    moe_layer_params,
    moe_layers_in,
    mtp_projection_params,
    routed_expert_params,
    router_params,
)
from costmodels.schedules.fsdp_lowering import MAX_ACTIVE_STAGES
from costmodels.selective_ac import OP_SAC, op_sac_saved_bytes
from profiles.schema import ModelSpec
from profiles.stack_schema import StackKernels, StackSpec

GIB = 1024**3


@dataclass(frozen=True)
class ActivationVariant:
    """What the runtime actually stores.

    ``korthikanti()`` is the paper's setting (fp16/bf16, dropout, unfused
    attention, Megatron's GELU MLP); ``runtime()`` is ppplan's torch runtime
    (no dropout, SDPA/flash attention storing only the log-sum-exp, eager
    SwiGLU storing gate, silu(gate), up and their product). Off CUDA, torch's
    RMSNorm is the composite x·rsqrt(mean(x²)+eps)·w in fp32, whose product with the
    weight also keeps the fp32 normalised input, and in bf16 runs the fp32 upcast of
    its input (``composite_rmsnorm_extra_bytes``, measured by ``ppplan profile``); CUDA
    runs the fused kernel (input and 1/rms only).
    """

    bytes_per_element: int = 2
    dropout: bool = True
    flash_attention: bool = False
    swiglu_saved_ffn_tensors: int = 4
    rmsnorm_saves_normalized: bool = False
    vocab_parallel_loss: bool = True
    loss_kernel: str = "log_softmax"  # loss_kernel_of(StackKernels): fused, inplace_softmax or log_softmax
    tp_loss_kernel: str | None = None  # loss_kernel_of(StackKernels, tp > 1) where it differs: dtensor_loss_parallel
    context_parallel_attention: str = "p2p_ring"
    gemm_input_bytes: int | None = None  # what a GEMM's saved input takes per value (None: bytes_per_element)
    gemm_weight_copy_bytes: int = 0  # per GEMM weight value, a copy each microbatch keeps until its backward (autocast)
    residual_bytes: int | None = None  # the residual stream's values (norm inputs, layer inputs; None: bytes_per_element)
    moe_probs_in_activation: bool = False  # StackKernels.moe_probs_in_activation (no weighted copies kept)
    sp_keeps_gathered_inputs: bool = False  # StackKernels.sequence_parallel_keeps_gathered_inputs
    # ... in the forward a full recompute re-runs, whatever ParallelConfig.sp_regather (which sets the former false)
    sp_recompute_keeps_gathered_inputs: bool = False
    keeps_stage_output: bool = False  # torch.distributed.pipelining: each stage's output until its backward
    last_output_is_loss: bool = False  # ... but the last stage's is the loss (StackSpec.pipeline_keeps_stage_outputs)
    single_stage_pipeline: bool = False  # ... and without pipeline parallelism too (StackSpec.single_stage_pipeline)
    op_sac_kernels: StackKernels | None = None  # the stack's kernels where "selective" is per-op (torchtitan)

    def with_input_shards(self) -> "ActivationVariant":
        """What a plan that keeps its sequence-parallel blocks' inputs as shards stores (``ParallelConfig.sp_regather``;
        the layer a full recompute re-runs still keeps them gathered, ``sp_recompute_keeps_gathered_inputs``)."""
        return replace(self, sp_keeps_gathered_inputs=False)

    def keeps_stage_output_at(self, pp: int) -> bool:
        """Whether a stage's output is kept until its backward (``stage_output_bytes``) in a plan of ``pp``
        pipeline ranks: where torch.distributed.pipelining runs the schedule with a pipeline, and without one
        where the stack still runs it as one stage (``single_stage_pipeline``)."""
        return self.keeps_stage_output and (pp > 1 or self.single_stage_pipeline)

    @property
    def saved_gemm_input_bytes(self) -> int:
        return self.bytes_per_element if self.gemm_input_bytes is None else self.gemm_input_bytes

    @property
    def residual_stream_bytes(self) -> int:
        return self.bytes_per_element if self.residual_bytes is None else self.residual_bytes

    @staticmethod
    def korthikanti() -> "ActivationVariant":
        return ActivationVariant(bytes_per_element=2, dropout=True, flash_attention=False, loss_kernel="inplace_softmax")

    @staticmethod
    def runtime(precision: str, device: str = "cuda") -> "ActivationVariant":
        return ActivationVariant(
            bytes_per_element=4 if precision == "fp32" else 2,
            dropout=False,
            flash_attention=True,
            rmsnorm_saves_normalized=device != "cuda",
            vocab_parallel_loss=False,
            context_parallel_attention="eager_ring",
            keeps_stage_output=True,
            single_stage_pipeline=True,
            sp_keeps_gathered_inputs=True,
            sp_recompute_keeps_gathered_inputs=True,
        )

    @staticmethod
    def for_stack(kernels: StackKernels, precision: str, device: str = "cuda",
                  keeps_stage_output: bool = False, single_stage_pipeline: bool = False,
                  last_output_is_loss: bool = False, autocast: bool = False) -> "ActivationVariant":
        """What a stack's kernels keep (``StackSpec.kernels``): dropout masks when it runs
        dropout, the s² scores of unfused attention or flash's log-sum-exp, SwiGLU's gate and up
        plus its output when fused (3 FFN-wide tensors) or also silu(gate) when eager (4), the
        composite RMSNorm's normalised input off CUDA without a fused norm, the loss over
        vocabulary shards or gathered logits, what its context-parallel attention keeps, and in
        fp8 runs the fp8-cast GEMM inputs where the stack keeps those (``fp8_saved_gemm_inputs``); under autocast over
        fp32 parameters (``autocast``: ``StackSpec.autocasts``) an fp32 residual stream (fp32 embedding, fp32 + bf16
        residual adds: the norms' and the layers' inputs, ``residual_bytes``) beside the GEMMs' bf16 outputs and input
        casts, and a bf16 copy of every GEMM weight per microbatch (``gemm_weight_copy_bytes``);
        ``keeps_stage_output`` where torch.distributed.pipelining runs the schedule or the stack's engine keeps
        the stage outputs (``stage_output_bytes``; ``last_output_is_loss`` for the latter), ``single_stage_pipeline``
        where torch's runs it without pipeline parallelism too; its kernels where its selective recompute is per-op
        (``costmodels.selective_ac``). ppplan-torch's kernels give ``runtime()``."""
        return ActivationVariant(
            bytes_per_element=4 if precision == "fp32" else 2,
            dropout=kernels.dropout,
            flash_attention=kernels.attention == "flash",
            swiglu_saved_ffn_tensors=3 if kernels.fused_activation else 4,
            rmsnorm_saves_normalized=device != "cuda" and not kernels.fused_norm,
            vocab_parallel_loss=kernels.vocab_parallel_loss,
            loss_kernel=loss_kernel_of(kernels),
            tp_loss_kernel=loss_kernel_of(kernels, tp_sharded=True),
            context_parallel_attention=kernels.context_parallel_attention,
            gemm_input_bytes=1 if precision == "fp8" and kernels.fp8_saved_gemm_inputs else None,
            gemm_weight_copy_bytes=2 if autocast else 0,
            residual_bytes=4 if autocast else None,
            moe_probs_in_activation=kernels.moe_probs_in_activation,
            sp_keeps_gathered_inputs=kernels.sequence_parallel_keeps_gathered_inputs,
            sp_recompute_keeps_gathered_inputs=kernels.sequence_parallel_keeps_gathered_inputs,
            keeps_stage_output=keeps_stage_output,
            last_output_is_loss=last_output_is_loss,
            single_stage_pipeline=single_stage_pipeline,
            op_sac_kernels=kernels if kernels.selective_recompute == OP_SAC else None,
        )


def recompute_working_bytes(layer_bytes_none: float, layer_bytes_full: float) -> float:
    """What a fully recomputed layer holds beyond its checkpoint while its backward runs: the backward re-runs the
    layer's forward and keeps that forward's whole activation set (what no recompute would keep) until the layer's
    backward ends, beside every checkpoint still in flight (Korthikanti et al. 2022, "Reducing Activation
    Recomputation in Large Transformer Models", Sec. 5: full recomputation stores each layer's input, and one
    layer's activations are live at a time during the backward)."""
    return max(0.0, layer_bytes_none - layer_bytes_full)


def layer_activation_bytes(
    model: ModelSpec,
    seq_len: int,
    mbs: int,
    tp: int,
    sequence_parallel: bool,
    recompute: str,
    variant: ActivationVariant,
    cp: int = 1,
    ep: int = 1,
    moe: bool = False,
    etp: int | None = None,
) -> float:
    """Bytes one transformer layer keeps for backward, per microbatch, per TP rank (routed experts split
    over ``etp`` ranks, tp when None).

    With ``cp`` context-parallel ranks every term counts the rank's ``seq_len / cp`` positions and the
    attention core keeps what its ring keeps (``costmodels.context_parallel.cp_activation_bytes``);
    multi-head latent attention keeps its projections (``costmodels.mla``); a mixture-of-experts layer
    (``moe``) keeps its MoE block's tensors (``costmodels.experts.moe_activation_bytes``) instead of
    the dense MLP's. With sequence parallelism the norms' and residuals' tensors are the rank's ``s / tp``
    positions (Korthikanti et al. 2022, Eq. 4); the QKV and MLP inputs too where the stack all-gathers them
    again in the backward (Megatron-LM), every position where it keeps the gathered input
    (``sp_keeps_gathered_inputs``: DTensor's plan, ppplan's runtime and torchtitan)."""
    s, b, h, a = seq_len // cp, mbs, model.hidden_size, model.num_attention_heads
    p, r = variant.bytes_per_element, variant.residual_stream_bytes
    sbh = s * b * h
    replicated_div = tp if sequence_parallel else 1
    if recompute == "full":
        return r * sbh / replicated_div  # the layer input only
    if recompute == "selective" and variant.op_sac_kernels is not None:
        return _op_sac_layer_bytes(model, seq_len, mbs, tp, sequence_parallel, variant, cp, ep, moe, etp)
    mask = 1 if variant.dropout else 0
    g = variant.saved_gemm_input_bytes  # QKV, MLP, output-projection and FC2 inputs: GEMM inputs
    # LayerNorm inputs (2), two dropout masks: replicated across TP without SP, sharded with it.
    replicated = 2 * r * sbh + 2 * mask * sbh
    replicated += 2 * composite_rmsnorm_extra_bytes(model, variant) * sbh
    # the QKV and MLP inputs: with SP, the rank's shard (re-gathered in the backward), or the gathered whole
    gathered = 2 * g * sbh / (1 if variant.sp_keeps_gathered_inputs else replicated_div)
    ffn_tensors = 2 if model.activation == "gelu" else variant.swiglu_saved_ffn_tensors
    whole = 0.0  # kept whole on every tp rank whatever the sequence parallelism (MLA's latents)
    if model.is_mla:
        attention, whole = mla_activation_bytes(model, s * b, tp, p)
        attention *= tp
    else:
        attention = (
            p * s * b * (h + model.kv_dim)  # Q and K
            + p * s * b * model.kv_dim  # V
            + g * sbh  # attention output = output-projection input
        )
    if moe:
        mlp = tp * moe_activation_bytes(model, s * b, tp, ep, p, ffn_tensors, etp, variant.gemm_input_bytes,
                                        variant.moe_probs_in_activation)
    else:  # the FFN-wide tensors, the last of them the FC2 input
        mlp = ((ffn_tensors - 1) * p + g) * s * b * model.ffn_size
    if variant.flash_attention:
        scores = 4.0 * a * s * b  # fp32 log-sum-exp per head and token
    else:
        scores = (p + (mask + p if variant.dropout else 0)) * a * s * s * b  # softmax out, mask, dropout out
    if recompute == "selective" and not variant.flash_attention:
        scores = 0.0
    if cp > 1 and recompute != "selective":
        shape = LayerShape(tp, mbs, seq_len, sequence_parallel, recompute, p, cp=cp)
        scores = tp * cp_activation_bytes(model, shape, variant.context_parallel_attention)
    return replicated / replicated_div + gathered + whole + (attention + mlp + scores) / tp


def _op_sac_layer_bytes(model: ModelSpec, seq_len: int, mbs: int, tp: int, sequence_parallel: bool,
                        variant: ActivationVariant, cp: int, ep: int, moe: bool, etp: int | None = None) -> float:
    """``layer_activation_bytes`` under per-op selective recompute: what the policy keeps of the layer's
    own operator list (``costmodels.selective_ac.op_sac_saved_bytes``), plus a context-parallel ring's
    kept blocks (its attention calls are saved)."""
    assert variant.op_sac_kernels is not None
    shape = LayerShape(tp, mbs, seq_len, sequence_parallel, "selective", variant.bytes_per_element, cp=cp, ep=ep, moe=moe,
                       etp=etp)
    kernels = variant.op_sac_kernels
    kept = op_sac_saved_bytes(transformer_layer_ops(model, shape, kernels), model, shape, kernels.compiled_blocks)
    if cp > 1:
        kept += cp_activation_bytes(model, shape, variant.context_parallel_attention)
    return kept


def saved_weight_copy_bytes(model: ModelSpec, variant: ActivationVariant, first_layer: int, num_layers: int,
                            has_head: bool, tp: int, ep: int, recompute: str, layer_kind: str | None = None,
                            etp: int | None = None) -> float:
    """Bytes of the weight casts one microbatch of a stage saves for its backward (``gemm_weight_copy_bytes`` per
    GEMM weight, autocast over fp32 parameters; 0 otherwise): its ``num_layers`` layers' and, with ``has_head``, the
    head's, not the embedding table (a lookup); a full-recompute checkpoint saves none of its layers', the head's
    GEMM still does (``stage_param_split`` without the embedding)."""
    if not variant.gemm_weight_copy_bytes:
        return 0.0
    saving = 0 if recompute == "full" else num_layers
    return variant.gemm_weight_copy_bytes * stage_param_split(model, first_layer, saving, False, has_head, tp, ep,
                                                             layer_kind, etp).total


def weight_grad_input_bytes(
    model: ModelSpec, seq_len: int, mbs: int, tp: int, sequence_parallel: bool, variant: ActivationVariant,
    cp: int = 1, ep: int = 1, moe: bool = False, etp: int | None = None,
) -> float:
    """Bytes one transformer layer still holds after its input gradients (B) for its weight
    gradients (W), per microbatch and tp rank, when a split-backward schedule defers W: the
    gradient of each weight-carrying operator's output (Qi et al. 2024, Zero Bubble, Sec. 2: W
    needs the output gradients; torch.distributed.pipelining's ``stage_backward_input`` keeps them
    for ``stage_backward_weight``). Column-parallel outputs are split over tp (QKV, FC1 with its
    gate); row-parallel outputs (attention out, FC2) and the two norms carry every position's
    hidden vector (the norms' over tp with sequence parallelism). A mixture-of-experts layer keeps
    its router's logits, its routed rows' expert FC1 and FC2 outputs (the busiest rank's rows,
    ``costmodels.experts.routed_rows``) and its shared experts'. MLA is counted with its query and
    key/value widths (``ModelSpec.q_dim``, ``kv_dim``)."""
    t = seq_len // cp * mbs
    h, p = model.hidden_size, variant.bytes_per_element
    gate = 2 if model.activation == "swiglu" else 1
    norms = 2 * h * (t / tp if sequence_parallel else t)
    attention = t * (model.q_dim + 2 * model.kv_dim) / tp + t * h
    if not moe:
        return p * (norms + attention + t * gate * model.ffn_size / tp + t * h)
    expert_tp = tp if etp is None else etp
    rows = routed_rows(model, t, ep) * expert_tp / tp  # the rows this tp rank's experts compute
    experts = rows * (gate * (model.moe_ffn_hidden_size or 0) / expert_tp + h)
    shared = t * (gate * (model.shared_expert_ffn_hidden_size or 0) / tp + h) if model.shared_expert_ffn_hidden_size else 0.0
    return p * (norms + attention + t * (model.num_experts or 0) + experts + shared)


def end_weight_grad_input_bytes(model: ModelSpec, seq_len: int, mbs: int, tp: int, variant: ActivationVariant,
                                embedding: bool, head: bool) -> float:
    """``weight_grad_input_bytes`` of the embedding (its output gradient, for the table's scatter-add)
    and of the head (the final norm's output gradient and the logits' gradient over the vocabulary,
    split over tp where the loss is vocab-parallel)."""
    t, h, p = seq_len * mbs, model.hidden_size, variant.bytes_per_element
    vocab = model.vocab_size / tp if variant.vocab_parallel_loss else model.vocab_size
    return p * ((t * h if embedding else 0.0) + (t * h + t * vocab if head else 0.0))


def loss_kernel_of(kernels: StackKernels, tp_sharded: bool = False) -> str:
    """How a stack's loss holds the logits (``loss_bytes_per_logit``): ``fused`` (one kernel over the logits in
    their dtype, ``StackKernels.fused_cross_entropy``), ``inplace_softmax`` (an fp32 copy overwritten in place,
    ``StackKernels.cross_entropy_inplace``) or ``log_softmax`` (torch's, new fp32 tensors); with the vocabulary
    sharded over tp > 1 ranks (``tp_sharded``) ``dtensor_loss_parallel`` where the stack runs DTensor's
    decomposition there (``StackKernels.vocab_parallel_loss_decomposed``)."""
    if kernels.fused_cross_entropy:
        return "fused"
    if tp_sharded and kernels.vocab_parallel_loss and kernels.vocab_parallel_loss_decomposed:
        return "dtensor_loss_parallel"
    return "inplace_softmax" if kernels.cross_entropy_inplace else "log_softmax"


def loss_bytes_per_logit(variant: ActivationVariant, tp: int = 1) -> tuple[int, int]:
    """(bytes the loss keeps for the backward, bytes alive beside them at its peak) per logit on a rank of
    ``tp`` tensor-parallel ranks.

    - fused (flash-attn's xentropy ``SoftmaxCrossEntropyLossFn``: saves the logits and the log-sum-exp;
      its backward writes a new gradient, ``inplace_backward`` False by default): p kept, p beside.
    - inplace_softmax (Megatron's ``VocabParallelCrossEntropy``: ``logits.float()``, then subtract, ``exp(out=)``
      and ``div_`` in place; the backward scales that softmax in place into the gradient, cast back to the
      logits' dtype): 4 kept (the fp32 softmax), p beside (the compute-dtype logits in the forward, their
      gradient in the backward); nothing beside in fp32, where ``.float()`` is the logits themselves.
    - log_softmax (torch's ``F.cross_entropy(logits.float())``): 4 kept (the log-softmax), 2 x 4 beside (the NLL
      and log-softmax backward outputs: measured on ppplan's runtime with the torch profiler's allocation events,
      tiny-gpt tp 4 at mbs 4, two 2 MiB tensors alive at the rank's peak).
    - dtensor_loss_parallel, with tp > 1 (``ActivationVariant.tp_loss_kernel``; DTensor's vocab-parallel
      decomposition, torch/distributed/tensor/parallel/loss.py): 4 kept (the log-softmax), 3 x 4 beside at the
      backward's peak, ``(grad_input + torch.exp(x)) * grad_output`` in ``_nll_loss_and_log_softmax_backward``:
      the zeroed ``grad_input``, the sum and the product alive together (the forward's peak, the compute-dtype
      logits, their fp32 copy, ``shifted`` and ``exp(shifted)``, is p + 12 with nothing kept yet)."""
    p = variant.bytes_per_element
    kernel = variant.tp_loss_kernel if tp > 1 and variant.tp_loss_kernel else variant.loss_kernel
    if kernel == "fused":
        return p, p
    if kernel == "inplace_softmax":
        return FP32_BYTES, 0 if p == FP32_BYTES else p
    if kernel == "dtensor_loss_parallel":
        return FP32_BYTES, 3 * FP32_BYTES
    return FP32_BYTES, 2 * FP32_BYTES


def composite_rmsnorm_extra_bytes(model: ModelSpec, variant: ActivationVariant) -> int:
    """Bytes per value one RMSNorm keeps beyond its input at the residual stream's width, where it is torch's
    composite (``ActivationVariant.rmsnorm_saves_normalized``: off CUDA, no fused norm): ``rms_norm`` computes in
    fp32, so autograd saves the fp32 upcast of its input (the input itself in fp32 runs) and the fp32 normalised
    values the weight multiplies (measured with saved-tensor hooks on torch 2.13's CPU ``nn.RMSNorm``:
    ``tests/launch/profiler/test_layers.py``). 0 for a fused norm or a LayerNorm."""
    if not (variant.rmsnorm_saves_normalized and model.norm == "rmsnorm"):
        return 0
    return FP32_BYTES - variant.residual_stream_bytes + FP32_BYTES


def head_activation_bytes(
    model: ModelSpec, seq_len: int, mbs: int, tp: int, sequence_parallel: bool, variant: ActivationVariant
) -> float:
    """Final norm input, logits input, and what the loss keeps for backward (``loss_bytes_per_logit``): the
    fp32 softmax over the rank's V/t logits where the loss is vocab-parallel (Megatron's
    ``_VocabParallelCrossEntropy`` saves ``exp_logits`` of ``logits.float()``, megatron/mpu/cross_entropy.py
    @ v2.6 and megatron/core/tensor_parallel/cross_entropy.py @ core_v0.14.0), the fp32 log-softmax over all
    V where the logits are gathered (ppplan's torch runtime: 4·s·b·V per rank, measured with saved-tensor
    hooks by the profiler), the logits in their own dtype where the loss is one fused kernel. Not the
    logits beside that: the output layer keeps its input,
    and the loss's caller drops them before the backward (torchtitan ``del pred``, train.py @ v0.2.2;
    a local of Megatron's model forward)."""
    tokens = seq_len * mbs
    p = variant.bytes_per_element
    norm_width = variant.residual_stream_bytes + composite_rmsnorm_extra_bytes(model, variant)
    norm_in = norm_width * tokens * model.hidden_size / (tp if sequence_parallel else 1)
    logits_in = p * tokens * model.hidden_size
    logits = loss_bytes_per_logit(variant, tp)[0] * tokens * model.vocab_size / (tp if variant.vocab_parallel_loss else 1)
    return norm_in + logits_in + logits


def stage_output_bytes(
    model: ModelSpec, seq_len: int, mbs: int, tp: int, sequence_parallel: bool, variant: ActivationVariant,
    has_head: bool,
) -> float:
    """What a pipeline stage's output holds per microbatch where torch.distributed.pipelining runs it:
    ``_PipelineStageBase.forward_one_chunk`` keeps the output tuple in ``fwd_cache`` until that
    microbatch's backward pops it (torch 2.13 ``pipelining/stage.py``), on every stage of a pipeline
    (``estimate`` adds it where pp > 1, and at pp 1 where the stack runs a one-stage schedule,
    ``single_stage_pipeline``: ppplan's runtime, whose gathered logits the torch profiler's allocation
    events show alive through the backward on tiny-gpt tp 4; torchtitan's and Composer's loops free
    the logits before the backward, and priced at pp 1 they called 22 more published runs
    infeasible). Nothing else keeps the last stage's logits (the loss keeps its log-softmax or
    softmax, ``head_activation_bytes``): s·b·V values per rank (V/t where the loss runs over vocabulary
    shards), in the compute dtype (the runtime's loss casts a copy to fp32); none where the loss is a
    fused kernel, which keeps that same tensor and is counted there. Another stage's output
    is the residual stream, s·b·h (over t under sequence parallelism). 0 where Megatron's engine
    runs the pipeline (its last stage returns the loss; its sends are counted as p2p buffers), except where the
    stack's engine keeps every stage's output until its backward (``StackSpec.pipeline_keeps_stage_outputs``:
    DeepSpeed's PipelineEngine): the residual stream on every stage but the last, whose output is the loss."""
    if not variant.keeps_stage_output or (has_head and variant.last_output_is_loss):
        return 0.0
    tokens = seq_len * mbs
    p = variant.bytes_per_element
    if has_head:
        if variant.loss_kernel == "fused":
            return 0.0
        return p * tokens * model.vocab_size / (tp if variant.vocab_parallel_loss else 1)
    return variant.residual_stream_bytes * tokens * model.hidden_size / (tp if sequence_parallel else 1)


def embedding_activation_bytes(model: ModelSpec, seq_len: int, mbs: int, tp: int, sequence_parallel: bool, variant: ActivationVariant) -> float:
    """Token and position ids (int64) and the embedding-dropout mask (Korthikanti Sec. 4.3)."""
    tokens = seq_len * mbs
    mask = tokens * model.hidden_size / (tp if sequence_parallel else 1) if variant.dropout else 0
    return 8.0 * tokens + 8.0 * seq_len + mask


@dataclass(frozen=True)
class StaticMemory:
    """Per-rank bytes that do not depend on microbatches in flight, and the parameters whose optimizer
    state the rank holds and updates (its ZeRO share)."""

    weights_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    updated_params: float


def state_bytes_per_param(precision: str, grad_accumulation_fp32: bool = False,
                          bf16_grads_kept: bool = False, bf16_optimizer_state: bool = False) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes per parameter for Adam.

    Mixed precision: 2 + 2 + 12 (fp32 master, m, v) = 16 (ZeRO paper Sec. 3.1), the gradients
    in fp32 (4 B) where the stack accumulates them in fp32 for bf16 and fp8 runs
    (``StackSpec.grad_accumulation_fp32``: Megatron-LM, torchtitan), and the bf16 gradients beside
    them where the stack keeps those too (6 B: ``StackSpec.bf16_grads_kept_beside_fp32``, DeepSpeed's
    BF16_Optimizer); the optimizer's 12 B become 6 where the stack keeps Adam's state and parameter copy
    in bf16 (``StackSpec.optimizer_state_bf16``, Apex's DistributedFusedAdam with dtype bf16); fp32:
    4 + 4 + 8 (m, v) = 16.
    """
    if precision == "fp32":
        return 4, 4, 8
    optimizer = 6 if bf16_optimizer_state else 12
    if grad_accumulation_fp32 and precision in ("bf16", "fp8"):
        return 2, (6 if bf16_grads_kept and precision == "bf16" else 4), optimizer
    return 2, 2, optimizer


STEP_TEMP_BYTES_PER_PARAM = 4  # one fp32 value per updated parameter (a gradient copy, or foreach Adam's sqrt)


def optimizer_step_temp_bytes(stack: StackSpec, precision: str, updated_params: float, zero: int = 0) -> float:
    """Bytes the optimizer step allocates beside the static state, over the ``updated_params`` the rank
    updates: the fp32 copy of fp16 gradients where the stack makes one (``StackSpec.fp16_main_grads_copied``), twice at
    ZeRO stage ``zero`` 0 where the copy is concatenated from per-tensor casts (``StackSpec.fp16_grads_flattened``),
    and foreach Adam's fp32 temporary (``StackSpec.optimizer_implementation``)."""
    copied = precision == "fp16" and stack.fp16_main_grads_copied
    copies = int(copied) * (2 if stack.fp16_grads_flattened and zero == 0 else 1)
    copies += int(stack.optimizer_implementation == "foreach")
    return copies * STEP_TEMP_BYTES_PER_PARAM * updated_params


def static_memory(
    num_params_on_rank: float, precision: str, dp: int, zero: int, gradients_sharded: bool | None = None,
    state_bytes: tuple[int, int, int] | None = None,
) -> StaticMemory:
    """Weights, gradients and optimizer state under ZeRO stage ``zero`` (Rajbhandari et al. 2020, Fig. 1).

    ``gradients_sharded=None`` is the paper's ZeRO-2/3 (gradients divided by dp); a stack
    passes its own rule (``gradients_sharded``). ``state_bytes``: the (weights, gradients, optimizer)
    bytes per parameter as the stack keeps them (``state_bytes_per_param``; None: the paper's for ``precision``).
    """
    w, g, o = state_bytes or state_bytes_per_param(precision)
    shard_grads = zero >= 2 if gradients_sharded is None else gradients_sharded
    updated = num_params_on_rank / (dp if zero >= 1 else 1)
    return StaticMemory(
        weights_bytes=num_params_on_rank * w / (dp if zero >= 3 else 1),
        gradients_bytes=num_params_on_rank * g / (dp if shard_grads else 1),
        optimizer_bytes=updated * o,
        updated_params=updated,
    )


def gradients_sharded(stack: StackSpec, pp: int, dp: int, zero: int) -> bool:
    """Whether a rank keeps only its 1/dp share of the gradients while microbatches accumulate.

    - No ZeRO, or one data-parallel rank: no.
    - A stack that reduce-scatters every microbatch without pipeline parallelism
      (``StackOverlap.dp_grad_sync``, torchtitan's FSDP2 with pp = 1): yes, for every ZeRO stage it
      shards with (FSDP2 shards gradients whenever it shards over dp).
    - torch.distributed.pipelining otherwise (ppplan's runtime always; torchtitan with pp > 1):
      no: the pipeline turns FSDP2's gradient sync off until the last microbatch, so gradients
      accumulate unsharded and are reduce-scattered once per step (launch/runtime/fsdp.py;
      pytorch torch/distributed/pipelining/schedules.py ``perform_reduce_grad``).
    - Megatron: the ZeRO paper's rule, sharded from ZeRO-2 (Megatron-FSDP ``optim_grads``); the
      distributed optimizer (ZeRO-1) keeps the whole gradient buffer (Rajbhandari et al. 2020).
    """
    if zero == 0 or dp == 1:
        return False
    if microbatch_grad_sync(stack, pp, dp, zero):
        return True
    if stack.pipeline_runtime == "torch":
        return False
    return zero >= 2


def gradients_fp32(stack: StackSpec, pp: int, data_ranks: int, zero: int, precision: str) -> bool:
    """Whether a bf16 or fp8 run's gradients take 4 B/param (``state_bytes_per_param``): the stack
    accumulates them in fp32 (``StackSpec.grad_accumulation_fp32``, Megatron-LM), or FSDP2 accumulates
    the unsharded gradients in its fp32 reduce dtype while the pipeline keeps the gradient sync off
    (``StackSpec.fsdp_unsharded_grads_fp32``, torchtitan with pp > 1: FSDP2 upcasts each unsharded
    gradient to the reduce dtype before accumulating it, ``FSDPParam.to_accumulated_grad_if_needed``).
    Without the pipeline, FSDP2 reduce-scatters every microbatch and keeps only fp32 shards of its fp32
    sharded parameters, which the ZeRO paper's 2 + 2 + 12 B/param already counts. Where FSDP2 wraps the stages is
    the stack's rule (``StackSpec.fsdp_wraps``), the one ppplan's runtime builds by."""
    if stack.grad_accumulation_fp32:
        return True
    return (precision != "fp32" and stack.fsdp_unsharded_grads_fp32 and stack.fsdp_wraps(data_ranks, zero, precision)
            and not gradients_sharded(stack, pp, data_ranks, zero))


def bf16_grads_beside_fp32(stack: StackSpec, pp: int, data_ranks: int, zero: int, precision: str,
                           split_backward: bool) -> bool:
    """Whether a bf16 run also keeps the stage's bf16 weight gradients beside the fp32 ones (6 B per parameter): the
    stack says so (``StackSpec.bf16_grads_kept_beside_fp32``, DeepSpeed's BF16_Optimizer), or FSDP2 accumulates the
    unsharded gradients in fp32 (``gradients_fp32`` by ``fsdp_unsharded_grads_fp32``) under a schedule that splits
    the backward: torch's W pass (``stage_backward_weight``) sets each weight's bf16 ``.grad`` after the unit's
    post-backward hook has run, and FSDP2 folds it into the fp32 accumulator only at the next microbatch's backward or
    the step's reduce, so from the first W on the stage holds both (checked on the runtime's FSDP2 units:
    ``tests/launch/runtime/test_units.py``)."""
    if precision != "bf16":
        return False
    if stack.bf16_grads_kept_beside_fp32:
        return True
    # gradients_fp32 without the stack's own fp32 accumulation is FSDP2's (fsdp_unsharded_grads_fp32)
    return split_backward and not stack.grad_accumulation_fp32 and gradients_fp32(stack, pp, data_ranks, zero, precision)


def microbatch_grad_sync(stack: StackSpec, pp: int, dp: int, zero: int) -> bool:
    """Whether gradients are reduce-scattered after every microbatch's backward (FSDP without
    pipeline parallelism on a stack that does so, ``StackOverlap.dp_grad_sync``) rather than once
    per step."""
    return stack.overlap.dp_grad_sync == "per_microbatch_without_pp" and pp == 1 and dp > 1 and zero >= 1


def split_static_memory(dense_params: float, expert_params: float, precision: str, data_ranks: int, ep: int,
                        zero: int, gradients_sharded: bool = False, expert_data_ranks: int | None = None,
                        state_bytes: tuple[int, int, int] | None = None) -> StaticMemory:
    """``static_memory`` of a rank's dense parameters, ZeRO-sharded over its ``data_ranks`` (dp x cp)
    ranks, plus its routed experts, sharded over the ``data_ranks / ep`` ranks holding the same experts
    (Megatron-Core's distributed optimizer and FSDP over the expert-data-parallel group; torchtitan's
    ``efsdp``); ``gradients_sharded`` and ``state_bytes`` are the stack's rules (``stack_static_memory``).
    ``expert_data_ranks`` replaces ``data_ranks / ep`` where expert TP 1 folds the tp ranks in
    (``ParallelConfig.expert_data_ranks``)."""
    dense = static_memory(dense_params, precision, data_ranks, zero, gradients_sharded, state_bytes)
    if not expert_params:
        return dense
    edp = max(1, data_ranks // ep) if expert_data_ranks is None else expert_data_ranks
    experts = static_memory(expert_params, precision, edp, zero, gradients_sharded, state_bytes)
    return StaticMemory(dense.weights_bytes + experts.weights_bytes, dense.gradients_bytes + experts.gradients_bytes,
                        dense.optimizer_bytes + experts.optimizer_bytes, dense.updated_params + experts.updated_params)


def stack_static_memory(stack: StackSpec, dense_params: float, expert_params: float, precision: str, pp: int,
                        data_ranks: int, ep: int, zero: int, split_backward: bool,
                        expert_data_ranks: int | None = None) -> StaticMemory:
    """``split_static_memory`` with the gradients and the optimizer state as ``stack`` keeps them
    (``gradients_sharded``; ``state_bytes_per_param`` of ``gradients_fp32``, ``bf16_grads_beside_fp32`` under a
    schedule that does or does not ``split_backward``, and ``StackSpec.optimizer_state_bf16``, in the precision the
    stack holds them in, ``StackSpec.held_precision``): the one place the estimate and the search's memory bound take
    that rule from."""
    fp32_grads = gradients_fp32(stack, pp, data_ranks, zero, precision)
    both = bf16_grads_beside_fp32(stack, pp, data_ranks, zero, precision, split_backward)
    precision = stack.held_precision(precision)
    state = state_bytes_per_param(precision, fp32_grads, both, stack.optimizer_state_bf16)
    return split_static_memory(dense_params, expert_params, precision, data_ranks, ep, zero,
                               gradients_sharded(stack, pp, data_ranks, zero), expert_data_ranks, state)


def gradients_held_per_stage(stack: StackSpec, pp: int, data_ranks: int, zero: int, precision: str) -> bool:
    """Whether each pipeline stage's gradients live only from the stage's first weight-gradient pass to its
    last (``StageTimes.held_bytes``) rather than through the whole step: where FSDP2 wraps the stages
    (``StackSpec.fsdp_wraps``) under torch.distributed.pipelining and does not sync every microbatch. The
    pipeline keeps the gradient sync off, so the unsharded gradients appear at the stage's first W or full
    backward (the step before freed them: ``zero_grad(set_to_none=True)``) and its REDUCE_GRAD action,
    right after its last, reduce-scatters and frees them (torch 2.13 ``pipelining/schedules.py``
    ``_add_reduce_grad``; ``Schedule1F1B`` and ``ScheduleGPipe`` reduce at the step's end, which with one
    stage per rank is its last backward too). torchtitan's December 2024 report ran the same rule
    (``backward_maybe_with_nosync`` ran FSDP's post-backward with the stage's last backward)."""
    return (stack.pipeline_runtime == "torch" and stack.fsdp_wraps(data_ranks, zero, precision)
            and not microbatch_grad_sync(stack, pp, data_ranks, zero))


def evicts_unsharded_stages(stack: StackSpec, pp: int, v: int, data_ranks: int, zero: int, precision: str) -> bool:
    """Whether torch's pipeline runtime keeps only some of a rank's stages unsharded at a time: stages FSDP2 wraps
    on torch's pipelining without a per-microbatch sync (``gradients_held_per_stage``), on ranks of more than
    ``MAX_ACTIVE_STAGES`` stages. Its lowering reshards every stage outside the next ``MAX_ACTIVE_STAGES`` distinct
    stages of the rank's list and unshards those before their actions, and FSDP2's reshard frees the unsharded
    copy (``costmodels.schedules.fsdp_lowering``): at ZeRO 0-2 the units stay unsharded between their actions, at
    ZeRO 3 a stage a backward gathered stays so until a forward or the lowering reshards it, and either way only
    stages of the look-ahead are unsharded."""
    return v > MAX_ACTIVE_STAGES and gradients_held_per_stage(stack, pp, data_ranks, zero, precision)


def unsharded_weights_share(stage_params: list[float]) -> float:
    """The share of a rank's unsharded weights alive at once where the lowering evicts
    (``evicts_unsharded_stages``): at most ``MAX_ACTIVE_STAGES`` stages at any time, priced as the largest
    ``MAX_ACTIVE_STAGES`` of ``stage_params`` (the rank's stages' parameters) over their sum, an upper bound of
    any ``MAX_ACTIVE_STAGES`` of them. It is at least ``MAX_ACTIVE_STAGES / len(stage_params)``, the share the
    search's memory bounds take (equal stages)."""
    total = sum(stage_params)
    if total <= 0 or len(stage_params) <= MAX_ACTIVE_STAGES:
        return 1.0
    return sum(sorted(stage_params, reverse=True)[:MAX_ACTIVE_STAGES]) / total


def held_gradient_bytes(gradients_bytes: float, dense_params: float, expert_params: float, data_ranks: int,
                        ep: int, zero: int, expert_data_ranks: int | None = None) -> tuple[float, float]:
    """(held, kept) bytes of one stage whose gradients live per stage (``gradients_held_per_stage``): its
    unsharded gradients as the stack keeps them (``gradients_bytes``, from ``stack_static_memory``), and the
    fp32 shard FSDP2's reduce-scatter leaves on its fp32 sharded parameters until the step ends (the dense
    parameters' over the dp x cp ranks they are sharded over, at ZeRO >= 1, the routed experts' over their
    expert-data-parallel ranks; whole at ZeRO 0, where ppplan's runtime runs HSDP with one shard)."""
    edp = max(1, data_ranks // ep) if expert_data_ranks is None else expert_data_ranks
    return gradients_bytes, min(gradients_bytes, fp32_shard_bytes(dense_params, expert_params, data_ranks, zero, edp))


def fp32_shard_bytes(dense_params: float, expert_params: float, data_ranks: int, zero: int,
                     expert_data_ranks: int) -> float:
    """Bytes of an fp32 tensor per parameter as FSDP2 shards it in ppplan's runtime: whole at ZeRO 0 (HSDP with one
    shard), at ZeRO >= 1 the dense parameters' over the ``data_ranks`` (dp x cp) and the routed experts' over their
    ``expert_data_ranks``."""
    if zero == 0:
        return FP32_BYTES * (dense_params + expert_params)
    return FP32_BYTES * (dense_params / data_ranks + expert_params / expert_data_ranks)


@dataclass(frozen=True)
class StageParams:
    """Parameters a virtual stage holds on one rank: ``dense`` (every rank of its data-parallel x
    context-parallel group holds the same ones, before ZeRO shards them) and ``expert`` (this rank's
    routed experts, held alike by the ``dp·cp / ep`` ranks of its expert-data-parallel group)."""

    dense: float
    expert: float = 0.0

    @property
    def total(self) -> float:
        return self.dense + self.expert


@functools.lru_cache(maxsize=1024)
def _layer_split(model: ModelSpec, ep: int, moe: bool) -> tuple[float, float, float]:
    """(tp-split, whole on every tp rank, routed experts before tp) parameters of one layer."""
    whole = mla_tp_replicated_params(model)
    if not moe:
        return dense_layer_params(model) - whole, whole, 0.0
    router = router_params(model)
    experts = (model.num_experts or 0) / ep * routed_expert_params(model)
    return moe_layer_params(model, 0) - router - whole, whole + router, experts


def layer_params(model: ModelSpec, tp: int, ep: int, moe: bool, etp: int | None = None) -> StageParams:
    """One layer's parameters per rank. Dense parts are split over tp (the norms too, a small
    over-count of the sharding kept from SC21's per-layer formula), but MLA's down-projections and
    the router are whole on every tp rank (``costmodels.params.mla_tp_replicated_params``,
    ``router_params``); the routed experts are ``num_experts / ep`` per rank, each split over tp
    (expert TP = tp, Megatron-Core's default and ppplan's runtime) or over ``etp`` ranks."""
    split, whole, experts = _layer_split(model, ep, moe)
    return StageParams(dense=split / tp + whole, expert=experts / (tp if etp is None else etp))


def stage_param_split(model: ModelSpec, first_layer: int, num_layers: int, has_embedding: bool, has_head: bool,
                      tp: int, ep: int = 1, layer_kind: str | None = None, etp: int | None = None) -> StageParams:
    """Parameters a virtual stage (layers ``[first_layer, first_layer + num_layers)``) holds per rank:
    its dense and MoE layers (``layer_params``), the vocab-parallel embedding and head (the last stage
    of a tied model keeping its own copy of the embedding matrix for the logits, Megatron-LM's
    ``shared_embedding``), and on the last stage the multi-token prediction modules: a layer of the model's
    last kind and ``mtp_projection_params`` each, with a copy of the embedding their next tokens are looked up
    in (Megatron-Core builds the embedding on the stage that runs MTP). ``layer_kind`` "moe" or "dense" counts every layer as that kind; routed experts
    are split over ``etp`` ranks (tp when None)."""
    moe_layers = moe_layers_in(model, first_layer, num_layers)
    if layer_kind is not None:
        moe_layers = num_layers if layer_kind == "moe" else 0
    dense_layers = num_layers - moe_layers
    split, whole, _ = _layer_split(model, ep, False)
    total, kept_whole, experts = dense_layers * split, dense_layers * whole, 0.0
    if moe_layers:
        moe_split, moe_whole, moe_experts = _layer_split(model, ep, True)
        total, kept_whole, experts = total + moe_layers * moe_split, kept_whole + moe_layers * moe_whole, moe_layers * moe_experts
    counts = parameter_counts(model)
    if has_embedding:
        total += counts.embedding
    if has_head:
        total += counts.final_norm + counts.head
        if (model.tie_embeddings or model.mtp_layers) and not has_embedding:
            total += model.vocab_size * model.hidden_size
        if model.mtp_layers:
            mtp_split, mtp_whole, mtp_experts = _layer_split(model, ep, model.is_moe)
            total += model.mtp_layers * (mtp_split + mtp_projection_params(model))
            kept_whole += model.mtp_layers * mtp_whole
            experts += model.mtp_layers * mtp_experts
    return StageParams(dense=total / tp + kept_whole, expert=experts / (tp if etp is None else etp))


def stage_params(model: ModelSpec, num_layers: int, has_embedding: bool, has_head: bool, tp: int) -> float:
    """Parameters a virtual stage holds per TP rank without expert parallelism (``stage_param_split``
    of its first ``num_layers`` layers, all of them as the model lays them out from layer 0)."""
    return stage_param_split(model, 0, num_layers, has_embedding, has_head, tp).total
