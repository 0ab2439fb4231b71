"""Context parallelism: each rank holds ``seq_len / cp`` positions of every sequence and the attention
core becomes a ring over the cp ranks (``RingAttention`` operators of ``costmodels.operators``).

Causal load balance (Megatron-Core's CP, torchtitan's "headtail", ppplan's runtime alike): the
sequence is cut into ``2·cp`` chunks of ``c = seq_len / (2 cp)`` positions and rank i holds chunks
i and 2cp-1-i. Its queries then attend to ``2cp + 1`` chunk pairs (blocks of c × c): at its own
step three (the two diagonal blocks, causal, and one full), and two full ones at each of the
other ``cp - 1`` steps, so every rank does the same work and a flash kernel executes ``2`` blocks'
worth per step (a diagonal block runs half of its positions): ``cp · 2`` blocks in all, the
``1/cp`` share of the causal ``s²/2`` (Liu et al. 2023, "Ring Attention with Blockwise
Transformers"; Megatron-Core ``--cp-comm-type p2p``).

How the K/V blocks travel and what is kept is the stack's (``StackKernels.context_parallel_attention``):

- ``p2p_ring`` (Transformer Engine's ``AttnFuncWithCPAndKVP2P``, what Megatron-Core runs): while a
  step's block computes, the rank sends its current K/V block on and receives the next, so a step
  takes the longer of the two; the backward sends the K/V blocks round again with the gradients
  of K and V (twice the bytes), each step overlapped with its block's backward; only the local
  K/V and each step's log-sum-exp are kept.
- ``all_gather`` (torch's ``context_parallel`` with the "allgather" rotater, torchtitan's default):
  the K/V blocks of all ranks are all-gathered while the first (local) step computes, and the
  gradients reduce-scattered beside the first step of the backward; the gathered blocks are kept.
- ``eager_ring`` (ppplan's runtime, ``launch/runtime/cp.py``): each block is einsums on
  ``.float()`` copies (QKᵀ, scale, mask on the diagonal, log-sum-exp, exp, ·V) computed in full,
  merged by their log-sum-exps; every step's shift waits for its exchange (nothing overlaps);
  autograd keeps each block's scores and probabilities, the merges' inputs and the received K/V
  blocks. In bf16 runs the two GEMMs take the bf16 q, k and v as they are (the received blocks
  are kept, as in fp32), their scores are cast up to fp32 for the softmax and the probabilities
  back to bf16 for ·V (6 B per score each way, forward and backward), and autograd keeps the
  bf16 probabilities beside the fp32 ones.
"""

from __future__ import annotations

from costmodels.comm import GroupPlacement, Network, collective_s
from costmodels.operators import FLASH_BACKWARD_FLOPS_RATIO, FP32_BYTES, FlashAttention, Gemm, LayerOps, LayerShape, MemoryBound, RingAttention
from profiles.schema import ModelSpec
from profiles.stack_schema import StackKernels

MASK_BYTES = 1  # a bool per score of a diagonal block's causal mask
# Bytes per score of one eager block, forward: scale (read 4, write 4), log-sum-exp (read 4), subtract
# the log-sum-exp (8), exp (8): 28; a diagonal block's masked_fill adds read 4 + mask 1 + write 4 = 9.
EAGER_SCORE_FORWARD_BYTES = 28
EAGER_MASK_BYTES = 9
# Backward per score: exp's (read grad and output, write: 12), the subtraction's reduction into the
# log-sum-exp gradient (read 4), log-sum-exp's (recompute exp(x - lse) and scale: read 4, write 4,
# then added to the scores' gradient: read 8, write 4 = 20), the scale's (8), and the sum of the two
# score-gradient paths counted in log-sum-exp's: 12 + 4 + 20 + 8 = 44; the mask's backward 9.
EAGER_SCORE_BACKWARD_BYTES = 44
# Online-softmax merge of two partial outputs (c × d_v per head, fp32): two rescaling multiplies (read 1,
# write 1 each) and their sum (read 2, write 1) over the output, ~6 accesses of 4 bytes per element
# (logaddexp and the two exps act on the c log-sum-exps only); its backward about twice that.
EAGER_MERGE_FORWARD_BYTES = 24
EAGER_MERGE_BACKWARD_BYTES = 48
# The backward of a p2p ring sends K/V on and the K/V gradients back: twice the forward's bytes
# (Transformer Engine, AttnFuncWithCPAndKVP2P.backward).
P2P_BACKWARD_EXCHANGES = 2


def chunk_len(shape: LayerShape) -> float:
    """Positions of one of the ``2·cp`` load-balancing chunks: ``seq_len / (2 cp)``."""
    return shape.seq_len / (2 * shape.cp)


def kv_heads_local(model: ModelSpec, tp: int) -> float:
    """K/V heads of one tp rank: the kv heads over tp, or every MLA head's up-projected K and V."""
    return (model.num_attention_heads if model.is_mla else model.kv_heads) / tp


def kv_block_bytes(model: ModelSpec, shape: LayerShape) -> float:
    """One rank's K and V (its ``seq_len / cp`` positions, its tp share of heads): what one ring step sends."""
    width = model.score_head_dim + model.value_head_dim
    return shape.bytes_per_element * shape.mbs * shape.local_seq_len * kv_heads_local(model, shape.tp) * width


def _flash_ring(model: ModelSpec, shape: LayerShape, kernels: StackKernels) -> LayerOps:
    """Flash blocks: each step executes two c × c blocks' QKᵀ and AV (module docstring)."""
    c, heads = chunk_len(shape), shape.mbs * model.num_attention_heads / shape.tp
    block_flops = 2.0 * heads * c * c * (model.score_head_dim + model.value_head_dim)
    step = (FlashAttention("attn.ring.block", 2 * block_flops, generation=kernels.flash_generation),)
    step_b = (FlashAttention("attn.ring.block.bwd", 2 * block_flops * FLASH_BACKWARD_FLOPS_RATIO, True,
                             generation=kernels.flash_generation),)
    kv = kv_block_bytes(model, shape)
    if kernels.context_parallel_attention == "all_gather":
        forward = RingAttention("attn.ring", shape.cp, step, step, shape.cp * kv, "all_gather")
        backward = RingAttention("attn.ring.bwd", shape.cp, step_b, step_b, shape.cp * kv, "reduce_scatter")
    else:
        forward = RingAttention("attn.ring", shape.cp, step, step, kv, "p2p")
        backward = RingAttention("attn.ring.bwd", shape.cp, step_b, step_b, P2P_BACKWARD_EXCHANGES * kv, "p2p")
    return LayerOps(forward=(forward,), backward_input=(backward,), recompute=(forward,))


def _eager_blocks(model: ModelSpec, shape: LayerShape, blocks: int, diagonal: int, merges: int,
                  backward: bool) -> tuple:
    """The operators of ``blocks`` eager fp32 blocks (``diagonal`` of them masked) and ``merges`` merges."""
    c, heads = chunk_len(shape), shape.mbs * model.num_attention_heads / shape.tp
    d_qk, d_v = model.score_head_dim, model.value_head_dim
    scores, outputs = heads * c * c, heads * c * d_v
    if not backward:
        one = [Gemm("ring.qk", c, c, d_qk, heads, low_precision=False), MemoryBound("ring.softmax", EAGER_SCORE_FORWARD_BYTES * scores),
               Gemm("ring.av", c, d_v, c, heads, low_precision=False)]
        mask, merge = EAGER_MASK_BYTES, EAGER_MERGE_FORWARD_BYTES
    else:
        one = [Gemm("ring.av.dgrad_p", c, c, d_v, heads, low_precision=False), Gemm("ring.av.dgrad_v", c, d_v, c, heads, low_precision=False),
               MemoryBound("ring.softmax.bwd", EAGER_SCORE_BACKWARD_BYTES * scores),
               Gemm("ring.qk.dgrad_q", c, d_qk, c, heads, low_precision=False), Gemm("ring.qk.dgrad_k", c, d_qk, c, heads, low_precision=False)]
        mask, merge = EAGER_MASK_BYTES, EAGER_MERGE_BACKWARD_BYTES
    if shape.bytes_per_element != FP32_BYTES:  # the scores cast up, the probabilities down (or their gradients)
        one.append(MemoryBound("ring.cast", 2 * (shape.bytes_per_element + FP32_BYTES) * scores))
    ops = one * blocks
    if diagonal:
        ops.append(MemoryBound("ring.mask", diagonal * mask * scores))
    if merges:
        ops.append(MemoryBound("ring.merge", merges * merge * outputs))
    return tuple(ops)


def _eager_ring(model: ModelSpec, shape: LayerShape) -> LayerOps:
    """ppplan's runtime: 3 blocks at the own step (2 diagonal, 1 merge), 2 at each other (2 merges);
    each shift waits for its exchange."""
    kv = kv_block_bytes(model, shape)
    forward = RingAttention("attn.ring", shape.cp, _eager_blocks(model, shape, 3, 2, 1, False),
                            _eager_blocks(model, shape, 2, 0, 2, False), kv, "blocking")
    backward = RingAttention("attn.ring.bwd", shape.cp, _eager_blocks(model, shape, 3, 2, 1, True),
                             _eager_blocks(model, shape, 2, 0, 2, True), kv, "blocking")
    return LayerOps(forward=(forward,), backward_input=(backward,), recompute=(forward,))


def ring_attention_ops(model: ModelSpec, shape: LayerShape, kernels: StackKernels) -> LayerOps:
    """The attention core of a layer with ``shape.cp > 1``, as the stack runs it (module docstring)."""
    if kernels.context_parallel_attention == "eager_ring":
        return _eager_ring(model, shape)
    return _flash_ring(model, shape, kernels)


def cp_neighbour_placement(tp: int, cp: int, gpus_per_node: int) -> GroupPlacement:
    """A ring step's transfer: cp ranks ``tp`` apart (``costmodels.rank_grid``), so a ring of ``cp·tp`` ranks
    over more than a node crosses nodes, and the slowest hop sets each step; the node's ``tp`` rings
    (one per tp rank) cross at once."""
    if cp * tp <= gpus_per_node:
        return GroupPlacement(size=2, ranks_per_node=2, nodes=1, node_senders=1)
    return GroupPlacement(size=2, ranks_per_node=1, nodes=2, node_senders=min(tp, gpus_per_node))


def cp_group_placement(tp: int, cp: int, gpus_per_node: int) -> GroupPlacement:
    """The cp group (an all-gather's): ``cp`` ranks ``tp`` apart; every rank of a node it spans takes
    part in one such group at once."""
    per_node = max(1, min(cp, gpus_per_node // tp))
    nodes = -(-cp // per_node)
    return GroupPlacement(size=cp, ranks_per_node=per_node, nodes=nodes, node_senders=gpus_per_node)


def exchange_s(ring: RingAttention, tp: int, cp: int, network: Network) -> float:
    """Seconds of the ring's transfers: one step's p2p (``p2p``, ``blocking``) or the whole collective."""
    if ring.exchange in ("p2p", "blocking"):
        return collective_s("p2p", ring.exchange_bytes, cp_neighbour_placement(tp, cp, network.gpus_per_node), network)
    kind = "all_gather" if ring.exchange == "all_gather" else "reduce_scatter"
    return collective_s(kind, ring.exchange_bytes, cp_group_placement(tp, cp, network.gpus_per_node), network)


def ring_time_s(ring: RingAttention, first_s: float, other_s: float, exchange: float) -> tuple[float, float]:
    """(seconds of the ring, seconds of them its transfers add over its compute).

    ``p2p``: step i's block overlaps the transfer of block i + 1, so each of the first cp - 1 steps
    takes the longer of the two: max(first, x) + (cp - 2)·max(other, x) + other. ``all_gather`` /
    ``reduce_scatter``: one collective beside the first step: max(first, x) + (cp - 1)·other.
    ``blocking``: first + (cp - 1)·(x + other)."""
    steps = ring.steps
    compute = first_s + (steps - 1) * other_s
    if steps <= 1:
        return compute, 0.0
    if ring.exchange == "p2p":
        total = max(first_s, exchange) + (steps - 2) * max(other_s, exchange) + other_s
    elif ring.exchange == "blocking":
        total = compute + (steps - 1) * exchange
    else:
        total = max(first_s, exchange) + (steps - 1) * other_s
    extra = total - compute  # exactly 0 when compute hides every transfer: drop the summation residue
    return total, extra if extra > 1e-12 * total else 0.0


def eager_ring_activation_bytes(model: ModelSpec, shape: LayerShape) -> float:
    """What the eager ring keeps per layer (module docstring), as autograd saves it (``launch/runtime/cp.py``;
    measured with saved-tensor hooks, ``tests/launch/runtime/test_cp.py``): per block its fp32 scores and
    probabilities (8 bytes per score; bf16 runs also the probabilities' bf16 copy, 2 more) and its log-sum-exp;
    the diagonal blocks' masks; per merge its two fp32 partial outputs and three log-sum-exp-sized fp32 tensors
    (the merged log-sum-exp and the two rescaling factors; a query chunk's last merged log-sum-exp is not kept, so
    this is an upper figure by that much); the rank's own stacked K/V and each received block, which the GEMMs
    save views of; and under grouped-query attention each block's contiguous copy of its query chunk, which the
    QKᵀ einsum makes to fold the group into the rows."""
    cp, c = shape.cp, chunk_len(shape)
    heads = shape.mbs * model.num_attention_heads / shape.tp
    blocks, merges = 2 * cp + 1, 2 * cp - 1
    low = shape.bytes_per_element if shape.bytes_per_element != FP32_BYTES else 0
    lse = FP32_BYTES * heads * c
    kept = blocks * ((2 * FP32_BYTES + low) * heads * c * c + lse) + 2 * MASK_BYTES * c * c
    kept += merges * (2 * FP32_BYTES * heads * c * model.value_head_dim + 3 * lse)
    if not model.is_mla and model.kv_heads < model.num_attention_heads:
        kept += blocks * shape.bytes_per_element * heads * c * model.score_head_dim
    return kept + cp * kv_block_bytes(model, shape)


def cp_activation_bytes(model: ModelSpec, shape: LayerShape, kernels_kind: str) -> float:
    """What the attention core keeps per layer with ``cp > 1`` instead of flash's one log-sum-exp: a
    log-sum-exp per step (fp32, per head and local position), plus the gathered K/V blocks
    (``all_gather``) or everything the eager ring keeps."""
    if kernels_kind == "eager_ring":
        return eager_ring_activation_bytes(model, shape)
    lse = shape.cp * FP32_BYTES * shape.mbs * shape.local_seq_len * model.num_attention_heads / shape.tp
    if kernels_kind == "all_gather":
        return lse + (shape.cp - 1) * kv_block_bytes(model, shape)
    return lse

