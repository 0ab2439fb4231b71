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
    return Link(bandwidth_bytes_per_s=tier.bandwidth_gbs * 1e9 * eff, latency_s=tier.latency_us * US)


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


def tp_layer_comm_s(tokens: int, hidden: int, bytes_per_element: int, tp: int, link: Link) -> float:
    """Tensor-parallel traffic of one transformer layer in one direction (forward or backward).

    Megatron's layer needs two all-reduces of the s·b·h activations per pass
    (Shoeybi et al. 2019, Fig. 4); with sequence parallelism each becomes a
    reduce-scatter plus an all-gather of the same total volume
    (Korthikanti et al. 2022, Sec. 4.2.2), so the time is the same.
    """
    return 2 * all_reduce_s(tokens * hidden * bytes_per_element, tp, link)
