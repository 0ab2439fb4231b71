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

from dataclasses import dataclass

from costmodels.flops import parameter_counts
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
    RMSNorm is the composite x·rsqrt(mean(x²)+eps)·w, whose product with the
    weight also keeps the normalised input (one more s·b·h per norm, measured
    by ``ppplan profile``); CUDA runs the fused kernel (input and 1/rms only).
    """

    bytes_per_element: int = 2
    dropout: bool = True
    flash_attention: bool = False
    swiglu_saved_ffn_tensors: int = 4
    rmsnorm_saves_normalized: bool = False
    vocab_parallel_loss: bool = True

    @staticmethod
    def korthikanti() -> "ActivationVariant":
        return ActivationVariant(bytes_per_element=2, dropout=True, flash_attention=False)

    @staticmethod
    def runtime(precision: str, device: str = "cuda") -> "ActivationVariant":
        return ActivationVariant(
            bytes_per_element=4 if precision == "fp32" else 2,
            dropout=False,
            flash_attention=True,
            rmsnorm_saves_normalized=device != "cuda",
            vocab_parallel_loss=False,
        )

    @staticmethod
    def for_stack(kernels: StackKernels, precision: str, device: str = "cuda") -> "ActivationVariant":
        """What a stack's kernels keep (``StackSpec.kernels``): dropout masks when it runs
        dropout, the s² scores of unfused attention or flash's log-sum-exp, SwiGLU's gate and up
        plus its output when fused (3 FFN-wide tensors) or also silu(gate) when eager (4), the
        composite RMSNorm's normalised input off CUDA without a fused norm, and the loss over
        vocabulary shards or gathered logits. ppplan-torch's kernels give ``runtime()``."""
        return ActivationVariant(
            bytes_per_element=4 if precision == "fp32" else 2,
            dropout=kernels.dropout,
            flash_attention=kernels.attention == "flash",
            swiglu_saved_ffn_tensors=3 if kernels.fused_activation else 4,
            rmsnorm_saves_normalized=device != "cuda" and not kernels.fused_norm,
            vocab_parallel_loss=kernels.vocab_parallel_loss,
        )


def layer_activation_bytes(
    model: ModelSpec,
    seq_len: int,
    mbs: int,
    tp: int,
    sequence_parallel: bool,
    recompute: str,
    variant: ActivationVariant,
) -> float:
    """Bytes one transformer layer keeps for backward, per microbatch, per TP rank."""
    s, b, h, a = seq_len, mbs, model.hidden_size, model.num_attention_heads
    p = variant.bytes_per_element
    sbh = s * b * h
    replicated_div = tp if sequence_parallel else 1
    if recompute == "full":
        return p * sbh / replicated_div  # the layer input only
    mask = 1 if variant.dropout else 0
    # LayerNorm inputs (2), QKV input, MLP input, two dropout masks: replicated across TP without SP.
    replicated = 4 * p * sbh + 2 * mask * sbh
    if variant.rmsnorm_saves_normalized and model.norm == "rmsnorm":
        replicated += 2 * p * sbh  # each composite RMSNorm's normalised input
    ffn_tensors = 2 if model.activation == "gelu" else variant.swiglu_saved_ffn_tensors
    sharded = (
        p * s * b * (h + model.kv_dim)  # Q and K
        + p * s * b * model.kv_dim  # V
        + p * sbh  # attention output = output-projection input
        + ffn_tensors * p * s * b * model.ffn_size
    )
    if variant.flash_attention:
        scores = 4.0 * a * s * b  # fp32 log-sum-exp per head and token
    else:
        scores = (p + (mask + p if variant.dropout else 0)) * a * s * s * b  # softmax out, mask, dropout out
    if recompute == "selective" and not variant.flash_attention:
        scores = 0.0
    return replicated / replicated_div + (sharded + scores) / tp


def head_activation_bytes(
    model: ModelSpec, seq_len: int, mbs: int, tp: int, sequence_parallel: bool, variant: ActivationVariant
) -> float:
    """Final norm input, logits input, and what the loss keeps for backward.

    Megatron's vocab-parallel cross-entropy keeps the fp32 softmax and the logits
    over V/t per rank (``vocab_parallel_loss``); ppplan's torch runtime gathers the
    logits to the full vocabulary and keeps only the fp32 log-softmax (4·s·b·V per
    rank, measured with saved-tensor hooks by the profiler)."""
    tokens = seq_len * mbs
    p = variant.bytes_per_element
    norm_in = p * tokens * model.hidden_size / (tp if sequence_parallel else 1)
    logits_in = p * tokens * model.hidden_size
    if variant.vocab_parallel_loss:
        logits = (4 + p) * tokens * model.vocab_size / tp
    else:
        logits = 4 * tokens * model.vocab_size
    return norm_in + logits_in + logits


def embedding_activation_bytes(model: ModelSpec, seq_len: int, mbs: int, tp: int, sequence_parallel: bool, variant: ActivationVariant) -> float:
    """Token and position ids (int64) and the embedding-dropout mask (Korthikanti Sec. 4.3)."""
    tokens = seq_len * mbs
    mask = tokens * model.hidden_size / (tp if sequence_parallel else 1) if variant.dropout else 0
    return 8.0 * tokens + 8.0 * seq_len + mask


@dataclass(frozen=True)
class StaticMemory:
    """Per-rank bytes that do not depend on microbatches in flight."""

    weights_bytes: float
    gradients_bytes: float
    optimizer_bytes: float


def state_bytes_per_param(precision: str, grad_accumulation_fp32: bool = False) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes per parameter for Adam.

    Mixed precision: 2 + 2 + 12 (fp32 master, m, v) = 16 (ZeRO paper Sec. 3.1), the gradients
    in fp32 (4 B) where the stack accumulates them in fp32 for bf16 and fp8 runs
    (``StackSpec.grad_accumulation_fp32``: Megatron-LM, torchtitan); fp32: 4 + 4 + 8 (m, v) = 16.
    """
    if precision == "fp32":
        return 4, 4, 8
    if grad_accumulation_fp32 and precision in ("bf16", "fp8"):
        return 2, 4, 12
    return 2, 2, 12


def static_memory(
    num_params_on_rank: float, precision: str, dp: int, zero: int, gradients_sharded: bool | None = None,
    grad_accumulation_fp32: bool = False,
) -> StaticMemory:
    """Weights, gradients and optimizer state under ZeRO stage ``zero`` (Rajbhandari et al. 2020, Fig. 1).

    ``gradients_sharded=None`` is the paper's ZeRO-2/3 (gradients divided by dp); a stack
    passes its own rule (``gradients_sharded``).
    """
    w, g, o = state_bytes_per_param(precision, grad_accumulation_fp32)
    shard_grads = zero >= 2 if gradients_sharded is None else gradients_sharded
    return StaticMemory(
        weights_bytes=num_params_on_rank * w / (dp if zero >= 3 else 1),
        gradients_bytes=num_params_on_rank * g / (dp if shard_grads else 1),
        optimizer_bytes=num_params_on_rank * o / (dp if zero >= 1 else 1),
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


def microbatch_grad_sync(stack: StackSpec, pp: int, dp: int, zero: int) -> bool:
    """Whether gradients are reduce-scattered after every microbatch's backward (FSDP without
    pipeline parallelism on a stack that does so, ``StackOverlap.dp_grad_sync``) rather than once
    per step."""
    return stack.overlap.dp_grad_sync == "per_microbatch_without_pp" and pp == 1 and dp > 1 and zero >= 1


def stage_params(model: ModelSpec, num_layers: int, has_embedding: bool, has_head: bool, tp: int) -> float:
    """Parameters a virtual stage holds per TP rank (vocab-parallel embedding and head).

    With tied embeddings and more than one pipeline stage the last stage keeps
    its own copy of the embedding matrix for the logits (Megatron-LM's
    ``shared_embedding``), so both ends pay for it.
    """
    counts = parameter_counts(model)
    vocab_matrix = model.vocab_size * model.hidden_size
    total = num_layers * counts.per_layer
    if has_embedding:
        total += counts.embedding
    if has_head:
        total += counts.final_norm + counts.head
        if model.tie_embeddings and not has_embedding:
            total += vocab_matrix
    return total / tp
