"""Communication time by the alpha–beta model, per network tier.

Ring collectives (Thakur, Rabenseifner & Gropp 2005; Patarasuk & Yuan 2009):
an all-reduce of n bytes over g ranks moves 2(g−1)/g·n bytes per rank in
2(g−1) steps; reduce-scatter and all-gather move (g−1)/g·n in g−1 steps. A
point-to-point send costs α + n/β. β is the cluster file's per-GPU,
one-direction bandwidth of the slowest tier the group crosses, scaled by the
achievable collective efficiency.
"""

from __future__ import annotations

from dataclasses import dataclass

from profiles.schema import ClusterSpec

US = 1e-6


@dataclass(frozen=True)
class Link:
    """Effective per-rank bandwidth (bytes/s) and latency (s) of one tier."""

    bandwidth_bytes_per_s: float
    latency_s: float


def link_for(cluster: ClusterSpec, crosses_nodes: bool) -> Link:
    if crosses_nodes:
        tier, eff = cluster.inter_node, cluster.efficiency.inter_node_collective
    else:
        tier, eff = cluster.intra_node, cluster.efficiency.intra_node_collective
    return Link(bandwidth_bytes_per_s=bandwidth_bytes_per_s(tier.bandwidth_gbs) * eff, latency_s=tier.latency_us * US)


def all_reduce_s(num_bytes: float, group_size: int, link: Link) -> float:
    """Ring all-reduce: 2(g−1)·α + 2(g−1)/g · n/β."""
    if group_size <= 1 or num_bytes <= 0:
        return 0.0
    g = group_size
    return 2 * (g - 1) * link.latency_s + 2 * (g - 1) / g * num_bytes / link.bandwidth_bytes_per_s


def reduce_scatter_s(num_bytes: float, group_size: int, link: Link) -> float:
    """Ring reduce-scatter of an ``num_bytes`` buffer: (g−1)·α + (g−1)/g · n/β."""
    if group_size <= 1 or num_bytes <= 0:
        return 0.0
    g = group_size
    return (g - 1) * link.latency_s + (g - 1) / g * num_bytes / link.bandwidth_bytes_per_s


def all_gather_s(num_bytes: float, group_size: int, link: Link) -> float:
    """Ring all-gather producing ``num_bytes`` per rank; same cost as reduce-scatter."""
    return reduce_scatter_s(num_bytes, group_size, link)


def p2p_s(num_bytes: float, link: Link) -> float:
    """One point-to-point transfer: α + n/β."""
    if num_bytes <= 0:
        return 0.0
    return link.latency_s + num_bytes / link.bandwidth_bytes_per_s


def bandwidth_bytes_per_s(bandwidth_gbs: float) -> float:
    """GB/s (1e9 bytes per second, the cluster and profile files' unit) to bytes per second."""
    return bandwidth_gbs * 1e9


def tp_layer_comm_s(tokens: int, hidden: int, bytes_per_element: int, tp: int, link: Link) -> float:
    """Tensor-parallel traffic of one transformer layer in one direction (forward or backward).

    Megatron's layer needs two all-reduces of the s·b·h activations per pass
    (Shoeybi et al. 2019, Fig. 4); with sequence parallelism each becomes a
    reduce-scatter plus an all-gather of the same total volume
    (Korthikanti et al. 2022, Sec. 4.2.2), so the time is the same.
    """
    return 2 * all_reduce_s(tokens * hidden * bytes_per_element, tp, link)


def embedding_tp_comm_s(tokens: int, hidden: int, bytes_per_element: int, tp: int, sequence_parallel: bool, link: Link) -> float:
    """The vocab-parallel embedding's all-reduce of s·b·h in the forward (a reduce-scatter of the
    same buffer with sequence parallelism: half the time; Korthikanti et al. 2022, Sec. 4.2.2)."""
    return all_reduce_s(bytes_per_element * tokens * hidden, tp, link) / (2 if sequence_parallel else 1)


def sequence_parallel_gather_s(tokens: int, hidden: int, bytes_per_element: int, tp: int, link: Link) -> float:
    """With sequence parallelism, the all-gather of the s·b·h activations before a column-parallel
    GEMM (and the matching reduce-scatter of their gradient): half an all-reduce."""
    return all_reduce_s(bytes_per_element * tokens * hidden, tp, link) / 2


def logits_gather_s(tokens: int, vocab: int, bytes_per_element: int, tp: int, link: Link) -> float:
    """All-gather of the vocab-parallel logits to the full vocabulary on every TP rank, as ppplan's
    runtime computes its loss (its backward is a local slice: no traffic)."""
    return all_reduce_s(bytes_per_element * tokens * vocab, tp, link) / 2 if tp > 1 else 0.0
