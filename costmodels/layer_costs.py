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

from costmodels.comm import all_reduce_s, link_for, tp_layer_comm_s
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


class RooflineTimes:
    """Analytic layer times from the cluster's peaks and efficiency curve (for one TP
    group alone on its node: ``tp_group_timeshare``)."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, precision: str) -> None:
        self.model = model
        self.cluster = cluster
        self.precision = precision
        self.p = bytes_per_element(precision)
        self.tp_link_intra = link_for(cluster, crosses_nodes=False)
        self.tp_link_inter = link_for(cluster, crosses_nodes=True)
        self.transformer = lru_cache(maxsize=None)(self._timeshared(self._transformer))  # type: ignore[method-assign]
        self.head = lru_cache(maxsize=None)(self._timeshared(self._head))  # type: ignore[method-assign]
        self.embedding = lru_cache(maxsize=None)(self._timeshared(self._embedding))  # type: ignore[method-assign]

    def _timeshared(self, pass_times):  # noqa: ANN001, ANN202
        """Scale a layer's passes by ``tp_group_timeshare`` (1 on GPU clusters)."""

        def timed(tp: int, *args: object) -> PassTimes:
            return pass_times(tp, *args).scaled(tp_group_timeshare(self.cluster, tp))

        return timed

    def _tp_link(self, tp: int):  # noqa: ANN202
        return self.tp_link_intra if tp <= self.cluster.gpus_per_node else self.tp_link_inter

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
        tokens = seq_len * mbs
        c = self.cluster
        gemm = self._gemms_s(tokens, tp)
        attn_fwd = attention_time_s(c, self.precision, transformer_layer_forward_flops(self.model, seq_len, mbs).attention / tp)
        elem = memory_bound_time_s(c, self._elementwise_bytes(tokens, tp, sequence_parallel))
        comm = tp_layer_comm_s(tokens, self.model.hidden_size, self.p, tp, self._tp_link(tp))
        forward = gemm + attn_fwd + elem + comm
        redo = {"full": forward, "selective": attn_fwd}.get(recompute, 0.0)
        backward_input = gemm + 2.5 * attn_fwd + 2 * elem + comm + redo
        backward_weight = gemm
        tp_comm = 2 * comm + (comm if recompute == "full" else 0.0)
        return PassTimes(forward, backward_input, backward_weight, tp_comm, redo)

    def _embedding(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool) -> PassTimes:
        """Vocab-parallel lookup (gather), its all-reduce (reduce-scatter with SP), and the
        weight-gradient scatter-add into the V/t × h table."""
        tokens, h, p = seq_len * mbs, self.model.hidden_size, self.p
        c = self.cluster
        lookup = memory_bound_time_s(c, 2 * p * tokens * h)
        comm = all_reduce_s(p * tokens * h, tp, self._tp_link(tp)) / (2 if sequence_parallel else 1)
        grad = memory_bound_time_s(c, 3 * p * tokens * h)
        return PassTimes(lookup + comm, 0.0, grad, tp_comm_s=comm)

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
        gather = all_reduce_s(p * tokens * h, tp, link) / 2 if sequence_parallel else 0.0
        loss_comm = all_reduce_s(p * tokens * v, tp, link) / 2 if tp > 1 else 0.0  # all-gather of the logits
        forward = norm + gather + logits + loss + loss_comm
        backward_input = logits + loss + norm + gather
        return PassTimes(forward, backward_input, logits, tp_comm_s=2 * gather + loss_comm)
