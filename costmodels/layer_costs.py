"""Per-microbatch forward (F), backward-input (B) and backward-weight (W) times of the three
layer kinds: embedding, transformer layer, head (final norm + logits + loss).

``RooflineTimes`` prices each layer's operator list (``costmodels.operators``, the kernels of
the plan's stack) by roofline (``costmodels.compute``), once per (tp, mbs, seq_len, sequence
parallel, recompute), and adds the tensor-parallel collectives (``tp_comm_passes``); a
measured profile (``costmodels.profile_times``) provides the same ``LayerTimes`` interface
and replaces it. TP communication is inside F and B (on the critical path) unless the stack
overlaps it with the GEMMs (``StackSpec.overlap.tp_comm``); recomputation re-runs forward
operators inside B (Korthikanti et al. 2022, Sec. 5).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import lru_cache
from operator import attrgetter
from typing import Protocol

from costmodels.comm import (
    Link,
    Network,
    collective_s,
    contiguous_placement,
    embedding_tp_comm_s,
    logits_gather_s,
    network_for,
    sequence_parallel_gather_s,
    tp_all_reduce_s,
    tp_layer_comm_s,
    vocab_parallel_loss_comm_s,
)
from costmodels.compute import non_gemm_precision, operator_time_s, operators_time_s
from costmodels.context_parallel import exchange_s, ring_time_s
from costmodels.experts import TpCollective, ep_group_placement, moe_tp_block_reduction, moe_tp_collectives
from costmodels.layer_ops import (
    SHARED_EXPERT_FC2,
    early_stop_tail,
    embedding_ops,
    head_ops,
    mtp_projection_ops,
    stops_early,
    transformer_layer_ops,
)
from costmodels.operators import AllToAll, Gemm, LayerOps, LayerShape, Operator, RingAttention
from costmodels.overlap import cluster_contention_s
from costmodels.selective_ac import recomputed_tp_comm_fraction
from profiles.schema import ClusterSpec, ModelSpec
from profiles.stack_schema import StackKernels, StackSpec


@dataclass(frozen=True)
class PassTimes:
    """Seconds per microbatch. The labelled parts say what F + B + W contain besides compute:
    ``tp_comm_s`` exposed TP communication, ``recompute_s`` re-run forward compute,
    ``dp_comm_s`` exposed ZeRO-3 parameter gathers, ``pp_comm_s`` blocking p2p sends,
    ``overhead_s`` per-action overhead, ``cp_comm_s`` the context-parallel ring's transfers beyond its
    blocks' compute, ``ep_comm_s`` the expert all-to-alls (exposed); ``overlapped_tp_comm_s`` is TP
    communication hidden behind the GEMMs, ``overlapped_cp_comm_s`` ring transfers hidden behind
    the ring's blocks and ``overlapped_ep_comm_s`` all-to-alls hidden under another microbatch's
    compute (``ep_overlap_hidden_s``; none of them in F + B + W). ``split_backward_extra_s`` is how much longer B and W
    take as torch's zero-bubble stages split them than the backward as one autograd call (a measured
    profile's ``backward_s``): a schedule without the split runs the one call, so it is taken off W
    there (``costmodels.estimate``); 0 where nothing measured it."""

    forward_s: float
    backward_input_s: float
    backward_weight_s: float
    tp_comm_s: float = 0.0
    recompute_s: float = 0.0
    dp_comm_s: float = 0.0
    pp_comm_s: float = 0.0
    overhead_s: float = 0.0
    overlapped_tp_comm_s: float = 0.0
    cp_comm_s: float = 0.0
    ep_comm_s: float = 0.0
    overlapped_cp_comm_s: float = 0.0
    split_backward_extra_s: float = 0.0
    overlapped_ep_comm_s: float = 0.0
    offload_s: float = 0.0  # activation offload copies the pass waits for (``costmodels.offload``)

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_input_s + self.backward_weight_s

    def scaled(self, n: float) -> "PassTimes":
        return PassTimes(*[n * value for value in _pass_values(self)])

    def plus(self, other: "PassTimes") -> "PassTimes":
        return PassTimes(*[a + b for a, b in zip(_pass_values(self), _pass_values(other))])

    def joined_backward(self) -> "PassTimes":
        """As a schedule without the split backward runs it: W less the split's measured excess, which
        may be negative for one piece (a sum of pieces is clamped at 0 where it is one stage's W)."""
        return replace(self, backward_weight_s=self.backward_weight_s - self.split_backward_extra_s,
                       split_backward_extra_s=0.0)


PASS_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PassTimes))  # in order (``scaled``, ``plus``)
_pass_values = attrgetter(*PASS_FIELDS)  # a PassTimes' fields as a tuple, in order
ZERO_PASS = PassTimes(0.0, 0.0, 0.0)


class LayerTimes(Protocol):
    """Where per-layer times come from: the roofline or a measured profile. ``seq_len`` is the whole
    sequence, split over ``cp`` context-parallel ranks; ``moe`` asks for a mixture-of-experts layer whose
    experts are split over ``ep`` ranks, each expert over ``etp`` (None: tp); ``ep_overlap``: the share of
    its passes whose all-to-alls hide under a partner microbatch's compute (a schedule that
    ``overlaps_expert_comm``: ``costmodels.schedules.torch_order.combined_paired_share``; 0: none).
    ``context_parallel_degrees`` are the cp degrees it can price (None: any); ``expert_tp_folding``
    whether it prices Megatron-Core's expert layouts: expert TP 1 under tp > 1 and the combined 1F1B.
    ``grad_accumulation_measured``: its W already holds adding the gradients into the step's
    (``costmodels.grad_accumulation``: a profile's, timed with earlier iterations' gradients in place)."""

    context_parallel_degrees: frozenset[int] | None
    expert_tp_folding: bool
    grad_accumulation_measured: bool

    def transformer(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str, cp: int = 1,
                    ep: int = 1, moe: bool = False, etp: int | None = None, ep_overlap: float = 0.0) -> PassTimes: ...

    def embedding(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, cp: int = 1) -> PassTimes: ...

    def head(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, cp: int = 1) -> PassTimes: ...

    def mtp_projection(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, cp: int = 1) -> PassTimes: ...


def bytes_per_element(precision: str) -> int:
    return 4 if non_gemm_precision(precision) == "fp32" else 2


def runs_on_cpu(cluster: ClusterSpec) -> bool:
    """A "cpu" GPU name means ranks are CPU processes (profiles/clusters/cpu-local.yaml)."""
    return cluster.gpu.name.lower() == "cpu"


def tp_group_timeshare(cluster: ClusterSpec, tp: int) -> float:
    """Slowdown of a TP group running alone on a node that computes only
    ``concurrent_ranks_per_node`` (C) ranks at full speed: its ``min(tp, gpus_per_node)``
    ranks on the node work in lockstep, compute and CPU-driven (gloo) collectives
    alike, so they share C cores: ``max(1, ranks / C)``. 1 when every rank has its own
    device (C unset). A ``--tp-group`` profile measures this directly."""
    cores = cluster.concurrent_ranks_per_node
    if cores is None:
        return 1.0
    return max(1.0, min(tp, cluster.gpus_per_node) / cores)


def _tp_collectives_s(collectives: tuple[TpCollective, ...], hidden: int, bytes_per_elem: int, tp: int,
                      network: Network) -> float:
    """Seconds of a pass's tp collectives (``costmodels.experts.moe_tp_collectives``: kinds and rows of h)."""
    placement = contiguous_placement(tp, network.gpus_per_node)
    return sum(collective_s(kind, rows * hidden * bytes_per_elem, placement, network) for kind, rows in collectives)


def _moe_tail_tp_comm_s(model: ModelSpec, tokens: int, tp: int, sequence_parallel: bool, bytes_per_elem: int,
                        network: Network, kernels: StackKernels) -> float:
    """The tp collective of an MoE block's forward after its last saved tensor, which torch's early-stopped
    recompute does not run again (``costmodels.layer_ops.early_stop_tail``): with ``tp_replicated`` dispatch the
    reduction of the block's sum on exit (a reduce-scatter, an all-reduce without sequence parallelism); with
    ``tp_split`` the shared experts' all-reduce after their down projection; none where recompute does not stop
    early. The re-run compute is ``early_stop_tail``'s, in ppplan's block order: a torchtitan MoE block that weights
    the combine by the router's scores (score_before_experts false) runs its shared experts before that last save,
    so under its early stop (torchtitan before 25413d2) their down projection is re-run and not counted."""
    tail = early_stop_tail(model, kernels, moe=True)
    if kernels.expert_dispatch == "tp_replicated" and tail:
        after: tuple[TpCollective, ...] = (moe_tp_block_reduction(tokens, sequence_parallel),)
    else:
        after = (("all_reduce", tokens),) if SHARED_EXPERT_FC2 in tail else ()
    return _tp_collectives_s(after, model.hidden_size, bytes_per_elem, tp, network)


def tp_comm_passes(
    model: ModelSpec, kind: str, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str,
    bytes_per_elem: int, network: Network, vocab_parallel_loss: bool, cp: int = 1, ep: int = 1, moe: bool = False,
    kernels: StackKernels | None = None, expert_imbalance: float | None = None, etp: int | None = None,
) -> PassTimes:
    """The tensor-parallel communication of one layer of ``kind``, alone: what ``RooflineTimes``
    puts into F and B, and what a measured profile of sharded shapes lacks (each collective
    priced once, ``costmodels.comm``); ``tp_comm_s`` is all of it. Tokens are the rank's
    ``seq_len / cp`` positions of ``mbs`` sequences.

    Transformer layer: two all-reduces of s·b·h per pass (``tp_layer_comm_s``); a mixture-of-experts
    layer all-reduces the attention's s·b·h and runs its MoE block's collectives, F's and B's as its stack runs them
    (``costmodels.experts.moe_tp_collectives``); F's once more in B under full recompute (the
    re-run forward's), or the part a per-op selective recompute runs again
    (``costmodels.selective_ac.recomputed_tp_comm_fraction``). Embedding: the vocab-parallel all-reduce in F. A multi-token
    prediction module's projection: its lookup's, and the all-gather of its output (Megatron-Core gathers eh_proj's
    output over tp) with the reduce-scatter in B. Head: with SP the all-gather
    of the final-norm output in F and its reduce-scatter in B; the loss's: Megatron's
    vocab-parallel cross-entropy all-reduces three values per token, a stack without it
    all-gathers the logits in F.
    """
    if tp <= 1:
        return ZERO_PASS
    tokens, h = seq_len * mbs // cp, model.hidden_size
    if kind == "transformer":
        k = kernels or StackKernels()
        if moe:
            forward, backward = moe_tp_collectives(model, tokens, tp, ep, sequence_parallel, k, expert_imbalance, etp,
                                                   bytes_per_elem=bytes_per_elem)
            attention = tp_all_reduce_s(tokens, h, bytes_per_elem, tp, network)
            comm = attention + _tp_collectives_s(forward, h, bytes_per_elem, tp, network)
            comm_b = attention + _tp_collectives_s(backward, h, bytes_per_elem, tp, network)
            after = _moe_tail_tp_comm_s(model, tokens, tp, sequence_parallel, bytes_per_elem, network, k) \
                if recompute == "full" else 0.0
            extra = (comm - after) * recomputed_tp_comm_fraction(recompute, k.selective_recompute, sequence_parallel)
            return PassTimes(comm, comm_b + extra, 0.0, tp_comm_s=comm + comm_b + extra)
        comm = tp_layer_comm_s(tokens, h, bytes_per_elem, tp, network)
        extra = comm * recomputed_tp_comm_fraction(recompute, k.selective_recompute, sequence_parallel, stops_early(k))
        return PassTimes(comm, comm + extra, 0.0, tp_comm_s=2 * comm + extra)
    if kind == "embedding":
        comm = embedding_tp_comm_s(tokens, h, bytes_per_elem, tp, sequence_parallel, network)
        return PassTimes(comm, 0.0, 0.0, tp_comm_s=comm)
    if kind == "mtp_projection":  # the next token's lookup, and the projection's output gathered over tp (and back in B)
        lookup = embedding_tp_comm_s(tokens, h, bytes_per_elem, tp, sequence_parallel, network)
        gather = sequence_parallel_gather_s(tokens, h, bytes_per_elem, tp, network)
        return PassTimes(lookup + gather, gather, 0.0, tp_comm_s=lookup + 2 * gather)
    gather = sequence_parallel_gather_s(tokens, h, bytes_per_elem, tp, network) if sequence_parallel else 0.0
    if vocab_parallel_loss:
        loss_comm = vocab_parallel_loss_comm_s(tokens, tp, network)
    else:
        loss_comm = logits_gather_s(tokens, model.vocab_size, bytes_per_elem, tp, network)
    return PassTimes(gather + loss_comm, gather, 0.0, tp_comm_s=2 * gather + loss_comm)


def backward_async_share(kind: str, sequence_parallel: bool) -> float:
    """The share of a layer's backward TP collectives (``tp_comm_passes``, the recomputed forward's aside) that a
    stack running them asynchronously (``StackOverlap.tp_comm`` ``backward_overlapped``) launches beside the pass's
    GEMMs: the column-parallel linears' (QKV, FC1, the head's output layer). Their backward all-reduces the input
    gradient, or with sequence parallelism reduce-scatters it, asynchronously over the weight-gradient GEMM (and
    re-gathers its saved input over the dgrad GEMM, a gather not counted here): Transformer Engine's
    ``_Linear.backward`` (transformer_engine/pytorch/module/linear.py @ v1.13 L428-431, L507-514, ``async_op=True``;
    LayerNormLinear the same; at v2.0-v2.1 an FP8 run's re-gather waits at once to build its transpose,
    distributed.py ``_all_gather_fp8``, fixed in v2.2) and Megatron-Core's
    ``LinearWithGradAccumulationAndAsyncCommunication`` (tensor_parallel/layers.py). A row-parallel linear's backward
    has no collective without sequence parallelism, and with it all-gathers its output gradient synchronously (TE's
    ``grad_output_preprocess``, module/base.py @ v1.13; Megatron-Core's ``_ReduceScatterToSequenceParallelRegion``
    backward, tensor_parallel/mappings.py): a transformer layer's backward reduce-scatters and all-gathers s·b·h
    twice each, so half of it can hide."""
    return 0.5 if kind == "transformer" and sequence_parallel else 1.0


@dataclass(frozen=True)
class PricedPass:
    """One pass's operators priced: ``total_s`` (compute and the communication operators' exposed time),
    the part of it that is expert all-to-all (``ep_comm_s``) and ring transfers beyond the blocks'
    compute (``cp_comm_s``), and ring transfers hidden behind the blocks (``cp_hidden_s``)."""

    total_s: float = 0.0
    ep_comm_s: float = 0.0
    cp_comm_s: float = 0.0
    cp_hidden_s: float = 0.0

    @property
    def compute_s(self) -> float:
        return self.total_s - self.ep_comm_s - self.cp_comm_s


def price_operators(cluster: ClusterSpec, precision: str, ops: tuple[Operator, ...], network: Network, tp: int,
                    cp: int, ep: int, etp: int | None = None) -> PricedPass:
    """Compute operators by roofline (``costmodels.compute``), ``AllToAll`` over the expert-parallel group
    (``costmodels.comm.collective_s``), ``RingAttention`` as its blocks and its transfers overlap
    (``costmodels.context_parallel.ring_time_s``), the blocks slowed beside the transfers they hide
    (``costmodels.overlap``)."""
    total = ep_s = cp_s = hidden = 0.0
    for op in ops:
        if isinstance(op, AllToAll):
            stride = tp if etp is None else etp
            seconds = collective_s("all_to_all", op.bytes, ep_group_placement(stride, ep, network.gpus_per_node), network)
            total, ep_s = total + seconds, ep_s + seconds
        elif isinstance(op, RingAttention):
            exchange = exchange_s(op, tp, cp, network)
            first, other = operators_time_s(cluster, precision, op.first), operators_time_s(cluster, precision, op.other)
            seconds, exposed = ring_time_s(op, first, other, exchange)
            transfers = exchange * ((op.steps - 1) if op.exchange == "p2p" else 1)
            overlapped = 0.0 if op.exchange == "blocking" else max(0.0, transfers - exposed)
            slowed = cluster_contention_s(cluster, overlapped)  # the blocks run slower beside the transfers
            total, cp_s, hidden = total + seconds + slowed, cp_s + exposed + slowed, hidden + overlapped - slowed
        else:
            total += operator_time_s(cluster, precision, op)
    return PricedPass(total, ep_s, cp_s, hidden)


def ep_overlap_hidden_s(all_to_all_s: tuple[float, float], compute_s: float) -> tuple[float, float]:
    """All-to-all seconds of a layer's (F, B) hidden when each microbatch's forward runs merged with another's
    backward and each one's all-to-alls run under the other's compute (Megatron-Core's
    ``--overlap-moe-expert-parallel-comm``, ``StackOverlap.ep_comm``): the pair takes max(compute, all-to-all),
    so min(all-to-all, compute) of it is hidden, split between F and B as their all-to-alls are. The caller
    scales it by the share of passes that have a partner (``RooflineTimes.transformer``'s ``ep_overlap``)."""
    total = sum(all_to_all_s)
    if total <= 0.0:
        return 0.0, 0.0
    hidden = min(total, compute_s)
    return hidden * all_to_all_s[0] / total, hidden * all_to_all_s[1] / total


def host_operator_count(ops: tuple[Operator, ...]) -> int:
    """Framework calls the host makes for ``ops``: one per operator (a grouped expert GEMM is one call),
    a ring's block operators once per step."""
    count = 0
    for op in ops:
        count += len(op.first) + (op.steps - 1) * len(op.other) if isinstance(op, RingAttention) else 1
    return count


def host_operator_counts(ops: LayerOps) -> tuple[int, int]:
    """Framework calls of a layer's forward, and of its backward (B with the recomputed forward, and W: one
    autograd call)."""
    backward = ops.backward_input + ops.recompute + ops.backward_weight
    return host_operator_count(ops.forward), host_operator_count(backward)


def host_bound(passes: PassTimes, ops: LayerOps, host_s_per_operator: float) -> PassTimes:
    """A layer whose passes cannot start before the host has issued them (a host-device synchronization
    inside each pass, ``StackOverlap.moe_host_s_per_operator``): the forward takes max(GPU, host) with the
    host's time its operators x ``host_s_per_operator``, and so does the backward (B with the recomputed
    forward, and W: one autograd call). The excess is host overhead: ``overhead_s``, inside F and B."""
    if host_s_per_operator <= 0.0:
        return passes
    host_f, host_b = (count * host_s_per_operator for count in host_operator_counts(ops))
    extra_f = max(0.0, host_f - passes.forward_s)
    extra_b = max(0.0, host_b - passes.backward_input_s - passes.backward_weight_s)
    return replace(passes, forward_s=passes.forward_s + extra_f, backward_input_s=passes.backward_input_s + extra_b,
                   overhead_s=passes.overhead_s + extra_f + extra_b)


def _gemm_time_s(cluster: ClusterSpec, precision: str, ops: tuple) -> float:
    return operators_time_s(cluster, precision, tuple(op for op in ops if isinstance(op, Gemm)))


class RooflineTimes:
    """Analytic layer times from the cluster's peaks, its GPU family's constants and the stack's
    kernels (for one TP group alone on its node: ``tp_group_timeshare``). ``tp_links``
    (intra-node, inter-node) replaces the cluster file's links, e.g. with those ``ppplan
    profile-comm`` measured. ``stack`` gives the kernels and whether TP communication overlaps.
    ``expert_imbalance`` is the busiest expert-parallel rank's load over the mean where a run states
    it (default ``costmodels.experts.EXPERT_LOAD_IMBALANCE``)."""

    context_parallel_degrees: frozenset[int] | None = None
    expert_tp_folding = True
    grad_accumulation_measured = False

    def __init__(
        self, model: ModelSpec, cluster: ClusterSpec, precision: str, tp_links: tuple[Link, Link] | None = None,
        *, stack: StackSpec, expert_imbalance: float | None = None,
    ) -> None:
        self.model = model
        self.expert_imbalance = expert_imbalance
        self.cluster = cluster
        self.precision = precision
        self.kernels = stack.kernels
        self.tp_comm = stack.overlap.tp_comm
        self.ep_comm = stack.overlap.ep_comm
        self.moe_host_s_per_operator = stack.overlap.moe_host_s_per_operator
        self.p = bytes_per_element(precision)
        self.network = network_for(cluster, tp_links)
        self._ops_cached = lru_cache(maxsize=None)(self._ops)
        self._priced_cached = lru_cache(maxsize=None)(self._priced)

    def transformer(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str, cp: int = 1,
                    ep: int = 1, moe: bool = False, etp: int | None = None, ep_overlap: float = 0.0) -> PassTimes:
        etp = None if etp == tp else etp
        overlap = float(ep_overlap) if moe and ep > 1 else 0.0
        return self._priced_cached("transformer", tp, mbs, seq_len, sequence_parallel, recompute, cp, ep, moe, etp, overlap)

    def embedding(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, cp: int = 1) -> PassTimes:
        return self._priced_cached("embedding", tp, mbs, seq_len, sequence_parallel, "none", cp, 1, False)

    def head(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, cp: int = 1) -> PassTimes:
        return self._priced_cached("head", tp, mbs, seq_len, sequence_parallel, "none", cp, 1, False)

    def mtp_projection(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, cp: int = 1) -> PassTimes:
        return self._priced_cached("mtp_projection", tp, mbs, seq_len, sequence_parallel, "none", cp, 1, False)

    def operators(self, kind: str, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str = "none",
                  cp: int = 1, ep: int = 1, moe: bool = False, etp: int | None = None) -> LayerOps:
        """The operator list of one layer of ``kind`` ("transformer", "embedding", "head")."""
        return self._ops_cached(kind, tp, mbs, seq_len, sequence_parallel, recompute, cp, ep, moe, etp)

    def _ops(self, kind: str, tp: int, mbs: int, seq_len: int, sp: bool, recompute: str, cp: int, ep: int,
             moe: bool, etp: int | None = None) -> LayerOps:
        shape = LayerShape(tp, mbs, seq_len, sp, recompute, self.p, composite_rmsnorm=runs_on_cpu(self.cluster)
                           and not self.kernels.fused_norm, cp=cp, ep=ep, moe=moe, expert_imbalance=self.expert_imbalance,
                           etp=etp)
        build = {"transformer": transformer_layer_ops, "embedding": embedding_ops, "head": head_ops,
                 "mtp_projection": mtp_projection_ops}[kind]
        return build(self.model, shape, self.kernels)

    def _ep_hidden(self, forward: PricedPass, backward_input: PricedPass, redo: PricedPass, ops: LayerOps) -> tuple[float, float]:
        """``ep_overlap_hidden_s`` of the layer: its all-to-alls (the recomputed forward's with B's) under its F,
        B (with recompute) and W compute."""
        compute = forward.compute_s + backward_input.compute_s + redo.compute_s + operators_time_s(
            self.cluster, self.precision, ops.backward_weight)
        return ep_overlap_hidden_s((forward.ep_comm_s, backward_input.ep_comm_s + redo.ep_comm_s), compute)

    def _pass(self, ops: tuple[Operator, ...], tp: int, cp: int, ep: int, etp: int | None = None) -> PricedPass:
        return price_operators(self.cluster, self.precision, ops, self.network, tp, cp, ep, etp)

    def _priced(self, kind: str, tp: int, mbs: int, seq_len: int, sp: bool, recompute: str, cp: int, ep: int,
                moe: bool, etp: int | None = None, ep_overlap: float = 0.0) -> PassTimes:
        """The layer's operators priced per pass, plus its TP collectives: exposed in F and B, or
        (stack overlapping TP communication with its GEMMs) what the pass's GEMMs cannot hide and the
        contention of what they hide (``costmodels.overlap``: the GEMMs run slower beside the collectives).
        A recomputed forward's expert all-to-alls and ring transfers count as EP and CP communication,
        not as recomputation."""
        ops = self.operators(kind, tp, mbs, seq_len, sp, recompute, cp, ep, moe, etp)
        c, prec = self.cluster, self.precision
        forward, backward_input = self._pass(ops.forward, tp, cp, ep, etp), self._pass(ops.backward_input, tp, cp, ep, etp)
        redo = self._pass(ops.recompute, tp, cp, ep, etp)
        comm = tp_comm_passes(self.model, kind, tp, mbs, seq_len, sp, recompute, self.p, self.network,
                              self.kernels.vocab_parallel_loss, cp, ep, moe, self.kernels, self.expert_imbalance, etp)
        comm_f, comm_b, hidden = comm.forward_s, comm.backward_input_s, 0.0
        if self.tp_comm == "overlapped":
            gemm_f = _gemm_time_s(c, prec, ops.forward)
            gemm_b = _gemm_time_s(c, prec, ops.backward_input + ops.recompute + ops.backward_weight)
            exposed_f, exposed_b = max(0.0, comm_f - gemm_f), max(0.0, comm_b - gemm_b)
            hidden_f, hidden_b = comm_f - exposed_f, comm_b - exposed_b
            slowed_f, slowed_b = cluster_contention_s(c, hidden_f), cluster_contention_s(c, hidden_b)
            comm_f, comm_b = exposed_f + slowed_f, exposed_b + slowed_b
            hidden = hidden_f + hidden_b - slowed_f - slowed_b
        elif self.tp_comm == "backward_overlapped":
            # the recomputed forward's collectives stay on the critical path: B's beyond what B runs without recompute
            recomputed = comm.backward_input_s - tp_comm_passes(
                self.model, kind, tp, mbs, seq_len, sp, "none", self.p, self.network, self.kernels.vocab_parallel_loss,
                cp, ep, moe, self.kernels, self.expert_imbalance, etp).backward_input_s if kind == "transformer" else 0.0
            gemm_b = _gemm_time_s(c, prec, ops.backward_input + ops.backward_weight)
            hideable = (comm_b - recomputed) * backward_async_share(kind, sp)
            hidden_b = min(hideable, gemm_b)
            slowed_b = cluster_contention_s(c, hidden_b)
            comm_b += slowed_b - hidden_b
            hidden = hidden_b - slowed_b
        share = 1.0 if self.ep_comm == "overlapped" else ep_overlap  # passes merged with a partner
        ep_hidden_f, ep_hidden_b = (share * s for s in self._ep_hidden(forward, backward_input, redo, ops)) \
            if share > 0 else (0.0, 0.0)
        ep_slowed_f, ep_slowed_b = cluster_contention_s(c, ep_hidden_f), cluster_contention_s(c, ep_hidden_b)
        passes = PassTimes(
            forward_s=forward.total_s + comm_f - ep_hidden_f + ep_slowed_f,
            backward_input_s=backward_input.total_s + redo.total_s + comm_b - ep_hidden_b + ep_slowed_b,
            backward_weight_s=operators_time_s(c, prec, ops.backward_weight),
            tp_comm_s=comm_f + comm_b,
            recompute_s=redo.compute_s,
            overlapped_tp_comm_s=hidden,
            cp_comm_s=forward.cp_comm_s + backward_input.cp_comm_s + redo.cp_comm_s,
            ep_comm_s=forward.ep_comm_s + backward_input.ep_comm_s + redo.ep_comm_s - ep_hidden_f - ep_hidden_b
            + ep_slowed_f + ep_slowed_b,
            overlapped_cp_comm_s=forward.cp_hidden_s + backward_input.cp_hidden_s + redo.cp_hidden_s,
            overlapped_ep_comm_s=ep_hidden_f + ep_hidden_b - ep_slowed_f - ep_slowed_b,
        )
        if moe:
            passes = host_bound(passes, ops, self.moe_host_s_per_operator)
        return passes.scaled(tp_group_timeshare(self.cluster, tp))
