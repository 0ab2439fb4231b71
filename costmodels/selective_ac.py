"""Per-operator selective activation checkpointing, as torchtitan runs ``selective_ac_option = "op"``.

torchtitan wraps each transformer block in a checkpoint whose policy saves the outputs of the ops on
its save list and recomputes every other op in the backward (``_apply_op_sac`` in
``torchtitan/distributed/activation_checkpoint.py`` and each model's ``_op_sac_save_list``, pytorch/
torchtitan v0.2.2): every ``aten.mm`` except every second one (a counter per block: the 2nd, 4th, ...
mm are recomputed), the scaled-dot-product attention kernels, the tensor-parallel reduce-scatters,
and for the mixture-of-experts models the expert all-to-alls. Everything else runs again in the
backward: norms, rotary, the activation function, residual adds, the every-second mm, the grouped
expert GEMMs (``torch._grouped_mm`` is not on the list) and the sequence-parallel all-gathers
(``all_gather_into_tensor`` is not either; without sequence parallelism the all-reduces).

Under torch.compile (``StackKernels.compiled_blocks``: published runs that compiled; ppplan's jobs run eager) the
partitioner saves only those of the marked outputs that the backward reads (``unread_saved_bytes``).

A block's linears run in this order (torchtitan's llama3 ``Attention.forward``: ``wq``, ``wk``, ``wv``,
then ``wo``; ``FeedForward``: ``w2(silu(w1(x)) * w3(x))``, so ``w1``, ``w3``, ``w2``): a dense SwiGLU block
keeps the outputs of wq, wv, w1 and w2 and recomputes wk, wo and w3. ppplan's operator lists fuse
q/k/v into one ``attn.qkv`` GEMM and SwiGLU's w1/w3 into one ``fc1`` (``costmodels.layer_ops``);
``block_linears`` splits them back into the products torchtitan runs.

The other stacks' "selective" is Korthikanti et al. 2022's (Sec. 5): the attention core alone is
recomputed (``StackKernels.selective_recompute`` says which).
"""

from __future__ import annotations

from dataclasses import replace

from costmodels.operators import FP32_BYTES, AllToAll, FlashAttention, Gemm, LayerOps, LayerShape, MemoryBound, Operator
from profiles.schema import ModelSpec

OP_SAC = "every_other_mm"


def _split_n(gemm: Gemm, widths: list[float]) -> list[Gemm]:
    """A fused GEMM as the products it fuses, side by side along its output features."""
    return [replace(gemm, name=f"{gemm.name}[{i}]", n=w) for i, w in enumerate(widths)]


def block_linears(forward: tuple[Operator, ...], model: ModelSpec, tp: int) -> list[Gemm]:
    """The forward ``aten.mm`` calls of one block in the order torchtitan runs them (module
    docstring): ppplan's fused ``attn.qkv`` as wq, wk, wv and a SwiGLU ``fc1`` as w1, w3. The layer's
    linears are its low-precision GEMMs (``Gemm.low_precision``: the attention's batched products
    and the logits are not); the routed experts' grouped GEMMs (``moe.expert``) are not mm calls."""
    swiglu = model.activation == "swiglu"
    out: list[Gemm] = []
    for op in forward:
        if not isinstance(op, Gemm) or not op.low_precision or op.name.startswith("moe.expert"):
            continue
        if op.name == "attn.qkv":
            out += _split_n(op, [model.q_dim / tp, model.kv_dim / tp, model.kv_dim / tp])
        elif op.name.endswith(".fc1") and swiglu:
            out += _split_n(op, [op.n / 2, op.n / 2])
        else:
            out.append(op)
    return out


def _saved_mm(linears: list[Gemm]) -> list[Gemm]:
    """The mm outputs the policy keeps: the 1st, 3rd, 5th, ... of the block."""
    return linears[0::2]


def op_sac_recompute(forward: tuple[Operator, ...], model: ModelSpec, tp: int) -> tuple[Operator, ...]:
    """What the backward re-runs of a block's forward: the every-second mm, the grouped expert GEMMs,
    the unfused attention's products, every memory-bound kernel; not the attention kernels, the
    saved mm, nor the all-to-alls and context-parallel rings (their outputs are kept)."""
    linears = block_linears(forward, model, tp)
    redo: list[Operator] = list(linears[1::2])
    for op in forward:
        if isinstance(op, MemoryBound):
            redo.append(op)
        elif isinstance(op, Gemm) and (not op.low_precision or op.name.startswith("moe.expert")):
            redo.append(op)
        # FlashAttention, AllToAll and RingAttention outputs are saved; the linears are counted above
    return tuple(redo)


def op_sac_saved_bytes(ops: LayerOps, model: ModelSpec, shape: LayerShape, compiled: bool = False) -> float:
    """Bytes one block keeps per microbatch and tp rank: the checkpoint's input, the kept mm outputs,
    each attention kernel's output and fp32 log-sum-exp, the two sequence-parallel reduce-scatter
    outputs (tp > 1 with sequence parallelism) and the expert all-to-alls' outputs. A context-parallel
    ring's kept blocks are ``costmodels.context_parallel``'s and added by the caller.

    Eager, the policy's cache keeps every output it marks saved. A ``compiled`` dense block
    (``StackKernels.compiled_blocks``) keeps only those its backward reads (``unread_saved_bytes``)."""
    p, h, t, tp = shape.bytes_per_element, model.hidden_size, shape.tokens, shape.tp
    linears = block_linears(ops.forward, model, tp)
    kept = p * shape.replicated_tokens * h  # the block's input
    kept += sum(_output_bytes(g, p) for g in _saved_mm(linears))
    heads = model.num_attention_heads / tp
    if any(isinstance(op, FlashAttention) for op in ops.forward):
        kept += t * heads * (p * model.value_head_dim + FP32_BYTES)
    kept += 2 * _reduce_scatter_output_bytes(model, shape)  # after the attention's and the FFN's output linears
    kept += sum(op.bytes for op in ops.forward if isinstance(op, AllToAll))
    if compiled and not shape.moe:
        kept -= unread_saved_bytes(linears, model, shape)
    return kept


def _output_bytes(gemm: Gemm, bytes_per_element: int) -> float:
    return bytes_per_element * gemm.m * gemm.n * gemm.batch


def _reduce_scatter_output_bytes(model: ModelSpec, shape: LayerShape) -> float:
    """One sequence-parallel reduce-scatter's output, the rank's tokens / tp of the residual stream; 0 without
    sequence parallelism (tp > 1)."""
    if shape.tp == 1 or not shape.sequence_parallel:
        return 0.0
    return shape.bytes_per_element * (shape.tokens / shape.tp) * model.hidden_size


def unread_saved_bytes(linears: list[Gemm], model: ModelSpec, shape: LayerShape) -> float:
    """What the eager policy keeps of a dense block that its backward never reads: the block's output is
    the residual stream plus the last linear's output (FFN's w2), and an add's backward reads neither,
    so that output, where the policy keeps it (the 7th mm of a SwiGLU block; a GELU block's fc2 is the
    6th, recomputed), and under sequence parallelism the reduce-scatter after it are read by nothing.
    torch.compile's partitioner (AOTAutograd's min-cut, which the policy's MUST_SAVE only bans from
    recomputing) saves what the backward reads, so a compiled block drops them; torch's eager
    checkpoint caches every MUST_SAVE output (torch/utils/checkpoint.py ``_CachingTorchDispatchMode``).
    Measured on CPU, torch 2.13, Llama blocks as torchtitan 9dec370 writes them under its op policy (SDPA's
    CPU flash kernel on the save list): 7.76-7.77 s·b·h bf16 values kept per block eager, 6.75-6.78
    compiled, where this model says 7.77 and 6.77 (``bench/op_sac_compiled.py``). The tp > 1 term is
    derived, not measured. A mixture-of-experts block keeps the eager set (its shared expert's last output
    is unread too: an over-estimate, not modelled)."""
    kept_last = linears and linears[-1] is _saved_mm(linears)[-1]
    unread = _output_bytes(linears[-1], shape.bytes_per_element) if kept_last else 0.0
    return unread + _reduce_scatter_output_bytes(model, shape)  # the one after the last linear


def recomputed_tp_comm_fraction(recompute: str, selective_kind: str, sequence_parallel: bool,
                                stops_early: bool = False) -> float:
    """The share of a block's forward TP collectives its backward runs again: all of them under full
    recompute, but in a dense block the one after the down projection where torch's early stop ends the re-run
    forward before that GEMM (``stops_early``: ``costmodels.layer_ops.early_stop_tail``; 1 of 2 all-reduces, 1 of 4
    sequence-parallel collectives; the MoE block's collective after its last save, its shared experts' all-reduce or
    the reduction of its partial outputs on exit, is left out by ``costmodels.layer_costs._moe_tail_tp_comm_s``);
    under per-op selective recompute the
    all-gathers (half the sequence-parallel
    collectives, the reduce-scatters being saved) or, without sequence parallelism, the all-reduces."""
    if recompute == "full":
        if stops_early:
            return 0.75 if sequence_parallel else 0.5
        return 1.0
    if recompute == "selective" and selective_kind == OP_SAC:
        return 0.5 if sequence_parallel else 1.0
    return 0.0
