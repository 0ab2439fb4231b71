"""Per-microbatch forward (F), backward-input (B) and backward-weight (W) times
of the three layer kinds: embedding, transformer layer, head (final norm +
logits + loss).

``RooflineTimes`` prices them from shapes and the cluster file; a measured
profile (``ppplan profile``) provides the same interface and replaces it.
Tensor-parallel communication is inside F and B (it is on the critical path);
recomputation re-runs the forward inside B (Korthikanti et al. 2022, Sec. 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from costmodels.comm import (
    Link,
    embedding_tp_comm_s,
    link_for,
    logits_gather_s,
    sequence_parallel_gather_s,
    tp_layer_comm_s,
)
from costmodels.compute import attention_time_s, gemm_time_s, memory_bound_time_s, non_gemm_precision
from costmodels.flops import transformer_layer_forward_flops
from profiles.schema import ClusterSpec, ModelSpec


@dataclass(frozen=True)
class PassTimes:
    """Seconds per microbatch; ``tp_comm_s`` and ``recompute_s`` are the parts of F + B spent on them."""

    forward_s: float
    backward_input_s: float
    backward_weight_s: float
    tp_comm_s: float = 0.0
    recompute_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_input_s + self.backward_weight_s

    def scaled(self, n: float) -> "PassTimes":
        return PassTimes(*(n * x for x in (self.forward_s, self.backward_input_s, self.backward_weight_s, self.tp_comm_s, self.recompute_s)))

    def plus(self, other: "PassTimes") -> "PassTimes":
        return PassTimes(
            self.forward_s + other.forward_s,
            self.backward_input_s + other.backward_input_s,
            self.backward_weight_s + other.backward_weight_s,
            self.tp_comm_s + other.tp_comm_s,
            self.recompute_s + other.recompute_s,
        )


ZERO_PASS = PassTimes(0.0, 0.0, 0.0)


class LayerTimes(Protocol):
    """Where per-layer times come from: the roofline or a measured profile."""

    def transformer(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str) -> PassTimes: ...

    def embedding(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool) -> PassTimes: ...

    def head(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool) -> PassTimes: ...


def bytes_per_element(precision: str) -> int:
    return 4 if non_gemm_precision(precision) == "fp32" else 2


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
    bytes_per_elem: int, link: Link,
) -> PassTimes:
    """The tensor-parallel communication of one layer of ``kind``, alone: what ``RooflineTimes``
    puts into F and B, and what a measured profile of sharded shapes lacks (one pricing of
    each collective, ``costmodels.comm``).

    Transformer layer: two all-reduces of s·b·h per pass (``tp_layer_comm_s``), once more
    in B under full recompute. Embedding: the vocab-parallel all-reduce in F. Head: with SP
    the all-gather of the final-norm output in F and its reduce-scatter in B, plus the
    all-gather of the logits in F (``logits_gather_s``).
    """
    if tp <= 1:
        return ZERO_PASS
    tokens, h = seq_len * mbs, model.hidden_size
    if kind == "transformer":
        comm = tp_layer_comm_s(tokens, h, bytes_per_elem, tp, link)
        extra = comm if recompute == "full" else 0.0
        return PassTimes(comm, comm + extra, 0.0, tp_comm_s=2 * comm + extra, recompute_s=extra)
    if kind == "embedding":
        comm = embedding_tp_comm_s(tokens, h, bytes_per_elem, tp, sequence_parallel, link)
        return PassTimes(comm, 0.0, 0.0, tp_comm_s=comm)
    gather = sequence_parallel_gather_s(tokens, h, bytes_per_elem, tp, link) if sequence_parallel else 0.0
    loss_comm = logits_gather_s(tokens, model.vocab_size, bytes_per_elem, tp, link)
    return PassTimes(gather + loss_comm, gather, 0.0, tp_comm_s=2 * gather + loss_comm)


class RooflineTimes:
    """Analytic layer times from the cluster's peaks and efficiency curve (for one TP
    group alone on its node: ``tp_group_timeshare``). ``tp_links`` (intra-node,
    inter-node) replaces the cluster file's links, e.g. with those ``ppplan
    profile-comm`` measured."""

    def __init__(
        self, model: ModelSpec, cluster: ClusterSpec, precision: str, tp_links: tuple[Link, Link] | None = None
    ) -> None:
        self.model = model
        self.cluster = cluster
        self.precision = precision
        self.p = bytes_per_element(precision)
        self.tp_link_intra, self.tp_link_inter = tp_links or (link_for(cluster, False), link_for(cluster, True))
        self._transformer_cached = lru_cache(maxsize=None)(self._transformer)
        self._head_cached = lru_cache(maxsize=None)(self._head)
        self._embedding_cached = lru_cache(maxsize=None)(self._embedding)

    def transformer(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str) -> PassTimes:
        return self._transformer_cached(tp, mbs, seq_len, sequence_parallel, recompute)

    def embedding(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool) -> PassTimes:
        return self._embedding_cached(tp, mbs, seq_len, sequence_parallel)

    def head(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool) -> PassTimes:
        return self._head_cached(tp, mbs, seq_len, sequence_parallel)

    def _tp_link(self, tp: int) -> Link:
        return self.tp_link_intra if tp <= self.cluster.gpus_per_node else self.tp_link_inter

    def _comm(self, kind: str, tp: int, mbs: int, seq_len: int, sp: bool, recompute: str = "none") -> PassTimes:
        return tp_comm_passes(self.model, kind, tp, mbs, seq_len, sp, recompute, self.p, self._tp_link(tp))

    def _gemms_s(self, tokens: int, tp: int) -> float:
        """Forward GEMMs of one layer on one TP rank (column-parallel QKV/fc1, row-parallel out/fc2)."""
        m, h, kv, f = self.model, self.model.hidden_size, self.model.kv_dim, self.model.ffn_size
        c, prec = self.cluster, self.precision
        mlp_in = (2 if m.activation == "swiglu" else 1) * f
        return (
            gemm_time_s(c, prec, tokens, (h + 2 * kv) / tp, h)
            + gemm_time_s(c, prec, tokens, h, h / tp)
            + gemm_time_s(c, prec, tokens, mlp_in / tp, h)
            + gemm_time_s(c, prec, tokens, h, f / tp)
        )

    def _elementwise_bytes(self, tokens: int, tp: int, sequence_parallel: bool) -> float:
        """Bytes read+written by one layer's forward element-wise kernels: two norms and two
        residual adds on s·b·h (replicated over TP unless SP), the activation on the MLP
        intermediate and rotary on Q/K (sharded)."""
        m, p = self.model, self.p
        rep = tp if sequence_parallel else 1
        hidden_rw = (2 * 2 + 2 * 3) * p * tokens * m.hidden_size / rep
        act_rw = (3 if m.activation == "swiglu" else 2) * p * tokens * m.ffn_size / tp
        rotary = 2 * p * tokens * (m.hidden_size + m.kv_dim) / tp if m.position_embedding == "rope" else 0.0
        return hidden_rw + act_rw + rotary

    def _transformer(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str) -> PassTimes:
        """F: the GEMMs, the attention core, element-wise work and TP communication. B: the
        GEMMs again (input gradients), the attention backward at 2.5x its forward FLOPs
        (FlashAttention-2's count: five GEMM-like products against two, Dao 2023, Sec. 3.1.2
        and its benchmark's FLOP formula), element-wise work twice, TP communication, and the
        recomputed forward (all of it for full recompute, the attention core for selective).
        W: the weight-gradient GEMMs."""
        tokens = seq_len * mbs
        c = self.cluster
        gemm = self._gemms_s(tokens, tp)
        attn_fwd = attention_time_s(c, self.precision, transformer_layer_forward_flops(self.model, seq_len, mbs).attention / tp)
        elem = memory_bound_time_s(c, self._elementwise_bytes(tokens, tp, sequence_parallel))
        comm_passes = self._comm("transformer", tp, mbs, seq_len, sequence_parallel, recompute)
        comm = comm_passes.forward_s
        forward = gemm + attn_fwd + elem + comm
        redo = {"full": forward, "selective": attn_fwd}.get(recompute, 0.0)
        backward_input = gemm + 2.5 * attn_fwd + 2 * elem + comm + redo
        backward_weight = gemm
        return self._timeshared(tp, PassTimes(forward, backward_input, backward_weight, comm_passes.tp_comm_s, redo))

    def _timeshared(self, tp: int, passes: PassTimes) -> PassTimes:
        """Scale a layer's passes by ``tp_group_timeshare`` (1 on GPU clusters)."""
        return passes.scaled(tp_group_timeshare(self.cluster, tp))

    def _embedding(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool) -> PassTimes:
        """Vocab-parallel lookup (gather), its all-reduce (reduce-scatter with SP), and the
        weight-gradient scatter-add into the V/t × h table."""
        tokens, h, p = seq_len * mbs, self.model.hidden_size, self.p
        c = self.cluster
        lookup = memory_bound_time_s(c, 2 * p * tokens * h)
        comm = self._comm("embedding", tp, mbs, seq_len, sequence_parallel).forward_s
        grad = memory_bound_time_s(c, 3 * p * tokens * h)
        return self._timeshared(tp, PassTimes(lookup + comm, 0.0, grad, tp_comm_s=comm))

    def _head(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool) -> PassTimes:
        """Final norm, column-parallel logits GEMM over V/t, then the loss as ppplan's runtime
        runs it: the logits gathered to the full vocabulary on every TP rank and a fp32
        cross-entropy over all V (what the profiler measures)."""
        tokens, h, v = seq_len * mbs, self.model.hidden_size, self.model.vocab_size
        c, p = self.cluster, self.p
        logits = gemm_time_s(c, self.precision, tokens, v / tp, h)
        norm = memory_bound_time_s(c, 2 * p * tokens * h / (tp if sequence_parallel else 1))
        loss = memory_bound_time_s(c, 4 * (4 + p) * tokens * v)
        link = self._tp_link(tp)
        gather = sequence_parallel_gather_s(tokens, h, p, tp, link) if sequence_parallel else 0.0
        loss_comm = logits_gather_s(tokens, v, p, tp, link)
        forward = norm + gather + logits + loss + loss_comm
        backward_input = logits + loss + norm + gather
        return self._timeshared(tp, PassTimes(forward, backward_input, logits, tp_comm_s=2 * gather + loss_comm))
