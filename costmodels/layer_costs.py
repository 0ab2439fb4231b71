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

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Protocol

from costmodels.comm import (
    Link,
    Network,
    embedding_tp_comm_s,
    logits_gather_s,
    network_for,
    sequence_parallel_gather_s,
    tp_layer_comm_s,
    vocab_parallel_loss_comm_s,
)
from costmodels.compute import non_gemm_precision, operators_time_s
from costmodels.operators import Gemm, LayerOps, LayerShape, embedding_ops, head_ops, transformer_layer_ops
from profiles.schema import ClusterSpec, ModelSpec
from profiles.stack_schema import StackSpec


@dataclass(frozen=True)
class PassTimes:
    """Seconds per microbatch. The labelled parts say what F + B + W contain besides compute:
    ``tp_comm_s`` exposed TP communication, ``recompute_s`` re-run forward compute,
    ``dp_comm_s`` exposed ZeRO-3 parameter gathers, ``pp_comm_s`` blocking p2p sends,
    ``overhead_s`` per-action overhead; ``overlapped_tp_comm_s`` is TP communication hidden
    behind the GEMMs (not in F + B + W)."""

    forward_s: float
    backward_input_s: float
    backward_weight_s: float
    tp_comm_s: float = 0.0
    recompute_s: float = 0.0
    dp_comm_s: float = 0.0
    pp_comm_s: float = 0.0
    overhead_s: float = 0.0
    overlapped_tp_comm_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_input_s + self.backward_weight_s

    def scaled(self, n: float) -> "PassTimes":
        return PassTimes(*(n * getattr(self, f.name) for f in fields(self)))

    def plus(self, other: "PassTimes") -> "PassTimes":
        return PassTimes(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


ZERO_PASS = PassTimes(0.0, 0.0, 0.0)


class LayerTimes(Protocol):
    """Where per-layer times come from: the roofline or a measured profile."""

    def transformer(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str) -> PassTimes: ...

    def embedding(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool) -> PassTimes: ...

    def head(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool) -> PassTimes: ...


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


def tp_comm_passes(
    model: ModelSpec, kind: str, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str,
    bytes_per_elem: int, network: Network, vocab_parallel_loss: bool,
) -> PassTimes:
    """The tensor-parallel communication of one layer of ``kind``, alone: what ``RooflineTimes``
    puts into F and B, and what a measured profile of sharded shapes lacks (each collective
    priced once, ``costmodels.comm``); ``tp_comm_s`` is all of it.

    Transformer layer: two all-reduces of s·b·h per pass (``tp_layer_comm_s``), once more
    in B under full recompute (the re-run forward's). Embedding: the vocab-parallel
    all-reduce in F. Head: with SP the all-gather of the final-norm output in F and its
    reduce-scatter in B; the loss's: Megatron's vocab-parallel cross-entropy all-reduces three
    values per token, a stack without it all-gathers the logits in F.
    """
    if tp <= 1:
        return ZERO_PASS
    tokens, h = seq_len * mbs, model.hidden_size
    if kind == "transformer":
        comm = tp_layer_comm_s(tokens, h, bytes_per_elem, tp, network)
        extra = comm if recompute == "full" else 0.0
        return PassTimes(comm, comm + extra, 0.0, tp_comm_s=2 * comm + extra)
    if kind == "embedding":
        comm = embedding_tp_comm_s(tokens, h, bytes_per_elem, tp, sequence_parallel, network)
        return PassTimes(comm, 0.0, 0.0, tp_comm_s=comm)
    gather = sequence_parallel_gather_s(tokens, h, bytes_per_elem, tp, network) if sequence_parallel else 0.0
    if vocab_parallel_loss:
        loss_comm = vocab_parallel_loss_comm_s(tokens, tp, network)
    else:
        loss_comm = logits_gather_s(tokens, model.vocab_size, bytes_per_elem, tp, network)
    return PassTimes(gather + loss_comm, gather, 0.0, tp_comm_s=2 * gather + loss_comm)


def _gemm_time_s(cluster: ClusterSpec, precision: str, ops: tuple) -> float:
    return operators_time_s(cluster, precision, tuple(op for op in ops if isinstance(op, Gemm)))


class RooflineTimes:
    """Analytic layer times from the cluster's peaks, its GPU family's constants and the stack's
    kernels (for one TP group alone on its node: ``tp_group_timeshare``). ``tp_links``
    (intra-node, inter-node) replaces the cluster file's links, e.g. with those ``ppplan
    profile-comm`` measured. ``stack`` gives the kernels and whether TP communication overlaps."""

    def __init__(
        self, model: ModelSpec, cluster: ClusterSpec, precision: str, tp_links: tuple[Link, Link] | None = None,
        *, stack: StackSpec,
    ) -> None:
        self.model = model
        self.cluster = cluster
        self.precision = precision
        self.kernels = stack.kernels
        self.tp_comm = stack.overlap.tp_comm
        self.p = bytes_per_element(precision)
        self.network = network_for(cluster, tp_links)
        self._ops_cached = lru_cache(maxsize=None)(self._ops)
        self._transformer_cached = lru_cache(maxsize=None)(self._transformer)
        self._head_cached = lru_cache(maxsize=None)(self._head)
        self._embedding_cached = lru_cache(maxsize=None)(self._embedding)

    def transformer(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str) -> PassTimes:
        return self._transformer_cached(tp, mbs, seq_len, sequence_parallel, recompute)

    def embedding(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool) -> PassTimes:
        return self._embedding_cached(tp, mbs, seq_len, sequence_parallel)

    def head(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool) -> PassTimes:
        return self._head_cached(tp, mbs, seq_len, sequence_parallel)

    def operators(self, kind: str, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str = "none") -> LayerOps:
        """The operator list of one layer of ``kind`` ("transformer", "embedding", "head")."""
        return self._ops_cached(kind, tp, mbs, seq_len, sequence_parallel, recompute)

    def _ops(self, kind: str, tp: int, mbs: int, seq_len: int, sp: bool, recompute: str) -> LayerOps:
        shape = LayerShape(tp, mbs, seq_len, sp, recompute, self.p, composite_rmsnorm=runs_on_cpu(self.cluster)
                           and not self.kernels.fused_norm)
        build = {"transformer": transformer_layer_ops, "embedding": embedding_ops, "head": head_ops}[kind]
        return build(self.model, shape, self.kernels)

    def _comm(self, kind: str, tp: int, mbs: int, seq_len: int, sp: bool, recompute: str = "none") -> PassTimes:
        return tp_comm_passes(self.model, kind, tp, mbs, seq_len, sp, recompute, self.p, self.network,
                              self.kernels.vocab_parallel_loss)

    def _priced(self, kind: str, tp: int, mbs: int, seq_len: int, sp: bool, recompute: str = "none") -> PassTimes:
        """The layer's operators priced per pass, plus its TP collectives: exposed in F and B, or
        (stack overlapping TP communication with its GEMMs) only what the pass's GEMMs cannot hide."""
        ops = self.operators(kind, tp, mbs, seq_len, sp, recompute)
        c, prec = self.cluster, self.precision
        forward, backward_input = operators_time_s(c, prec, ops.forward), operators_time_s(c, prec, ops.backward_input)
        redo = operators_time_s(c, prec, ops.recompute)
        comm = self._comm(kind, tp, mbs, seq_len, sp, recompute)
        comm_f, comm_b, hidden = comm.forward_s, comm.backward_input_s, 0.0
        if self.tp_comm == "overlapped":
            gemm_f = _gemm_time_s(c, prec, ops.forward)
            gemm_b = _gemm_time_s(c, prec, ops.backward_input + ops.recompute + ops.backward_weight)
            exposed_f, exposed_b = max(0.0, comm_f - gemm_f), max(0.0, comm_b - gemm_b)
            hidden = comm_f + comm_b - exposed_f - exposed_b
            comm_f, comm_b = exposed_f, exposed_b
        elif self.tp_comm == "backward_overlapped":
            # the recomputed forward's collectives (full recompute) stay on the critical path
            recomputed = comm.forward_s if kind == "transformer" and recompute == "full" else 0.0
            gemm_b = _gemm_time_s(c, prec, ops.backward_input + ops.backward_weight)
            hidden = min(comm_b - recomputed, gemm_b)
            comm_b -= hidden
        passes = PassTimes(
            forward_s=forward + comm_f,
            backward_input_s=backward_input + redo + comm_b,
            backward_weight_s=operators_time_s(c, prec, ops.backward_weight),
            tp_comm_s=comm_f + comm_b,
            recompute_s=redo,
            overlapped_tp_comm_s=hidden,
        )
        return passes.scaled(tp_group_timeshare(self.cluster, tp))

    def _transformer(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str) -> PassTimes:
        return self._priced("transformer", tp, mbs, seq_len, sequence_parallel, recompute)

    def _embedding(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool) -> PassTimes:
        return self._priced("embedding", tp, mbs, seq_len, sequence_parallel)

    def _head(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool) -> PassTimes:
        return self._priced("head", tp, mbs, seq_len, sequence_parallel)
