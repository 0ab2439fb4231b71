"""Communication time: alpha–beta collectives, hierarchical over the node boundary.

One tier (every rank of the group on one node, or one rank per node): ring collectives
(Thakur, Rabenseifner & Gropp 2005; Patarasuk & Yuan 2009) — an all-reduce of n bytes over
g ranks moves 2(g−1)/g·n bytes per rank in 2(g−1) steps; reduce-scatter and all-gather move
(g−1)/g·n in g−1 steps; a point-to-point send costs α + n/β.

A group that spans N nodes with L of its ranks on each (``GroupPlacement``) runs
hierarchically, intra-node then inter-node: an all-reduce is a reduce-scatter among the L
local ranks over NVLink, an all-reduce of each rank's 1/L shard among the N nodes (the L
shards in parallel, each over its own NIC path), and an all-gather among the L local ranks
(the two-level algorithm of Jia et al. 2018, "Highly Scalable Deep Learning Training System
with Mixed-Precision", Sec. 3.3; NCCL's rings and trees move the same bytes per tier). NCCL
cuts the buffer into chunks that stream through both tiers at once, so the slower tier's
bandwidth term bounds the time while every step's latency adds; this is why NCCL's measured
multi-node all-reduce bus bandwidth approaches the node's total NIC rate rather than one
GPU's (nccl-tests PERFORMANCE.md: busbw = algbw · 2(n−1)/n).

Latency steps: NCCL runs an all-gather or reduce-scatter as one ring through every rank (it has
no tree for them), g−1 steps of which N−1 cross nodes, each at its tier's latency (NCCL's own
model, src/graph/tuning.cc: (nsteps − nInterSteps)·intraLat + nInterSteps·interLat): at 512
ranks the ring's latency alone is milliseconds, why ZeRO-3 at scale pays per gather. An
all-reduce counts the two-level steps, 2(L−1) + 2(N−1): NCCL picks its tree over the ring where
the ring's 2(g−1) steps would dominate.

Node egress (``ClusterSpec.node_egress_gbs``: NICs per node × NIC rate) is shared by the
node's ranks that send across nodes at the same time (``node_senders``): each gets
min(its own injection rate ``inter_node.bandwidth_gbs``, egress / senders). Collective
efficiencies (``intra_node_collective``, ``inter_node_collective``, the GPU family's) scale
each tier's bandwidth. ``collective_s`` prices every collective; the helpers below it name
the tensor-parallel ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from profiles.schema import ClusterSpec

US = 1e-6
FP32_BYTES = 4
Collective = Literal["all_reduce", "reduce_scatter", "all_gather", "all_to_all", "p2p"]


@dataclass(frozen=True)
class Link:
    """Effective per-rank bandwidth (bytes/s) and latency (s) of one tier."""

    bandwidth_bytes_per_s: float
    latency_s: float


@dataclass(frozen=True)
class Network:
    """What a rank sees: its NVLink tier, its own path into the network, and its node's NICs.

    ``inter`` is one GPU's injection rate (its NIC in a rail-optimised node);
    ``node_egress_bytes_per_s`` all NICs of the node together, shared by its senders."""

    intra: Link
    inter: Link
    node_egress_bytes_per_s: float
    gpus_per_node: int
    # measured intra-node links per collective (``ppplan profile-comm``, ``costmodels.runtime_costs``)
    intra_by_collective: tuple[tuple[str, Link], ...] = ()

    def intra_for(self, kind: str) -> Link:
        """The intra-node link a collective of ``kind`` runs at: its measured one, else ``intra``."""
        return next((link for name, link in self.intra_by_collective if name == kind), self.intra)


@dataclass(frozen=True)
class GroupPlacement:
    """Where a process group's ranks sit: ``size`` ranks, at most ``ranks_per_node`` (L) of them
    on each of the ``nodes`` (N) it spans, and ``node_senders`` ranks of one node that send
    across nodes at the same time (all groups of that kind run together)."""

    size: int
    ranks_per_node: int
    nodes: int
    node_senders: int

    @property
    def crosses_nodes(self) -> bool:
        return self.nodes > 1


def bandwidth_bytes_per_s(bandwidth_gbs: float) -> float:
    """GB/s (1e9 bytes per second, the cluster and profile files' unit) to bytes per second."""
    return bandwidth_gbs * 1e9


def link_for(cluster: ClusterSpec, crosses_nodes: bool) -> Link:
    """One GPU's link of a tier, scaled by the family's collective efficiency of that tier."""
    if crosses_nodes:
        tier, eff = cluster.inter_node, cluster.efficiency.inter_node_collective
    else:
        tier, eff = cluster.intra_node, cluster.efficiency.intra_node_collective
    return Link(bandwidth_bytes_per_s=bandwidth_bytes_per_s(tier.bandwidth_gbs) * eff, latency_s=tier.latency_us * US)


def network_for(cluster: ClusterSpec, links: tuple[Link, Link] | None = None) -> Network:
    """The cluster's network; ``links`` (intra, inter), e.g. measured by ``ppplan profile-comm``,
    replace the cluster file's per-GPU links (the node's egress stays the file's)."""
    intra, inter = links or (link_for(cluster, False), link_for(cluster, True))
    egress = bandwidth_bytes_per_s(cluster.node_egress_gbs) * cluster.efficiency.inter_node_collective
    return Network(intra=intra, inter=inter, node_egress_bytes_per_s=egress, gpus_per_node=cluster.gpus_per_node)


def placement_of(ranks: list[int], gpus_per_node: int, node_senders: int) -> GroupPlacement:
    """The placement of a group of global ranks on nodes of ``gpus_per_node`` consecutive ranks."""
    per_node: dict[int, int] = {}
    for rank in ranks:
        per_node[rank // gpus_per_node] = per_node.get(rank // gpus_per_node, 0) + 1
    return GroupPlacement(size=len(ranks), ranks_per_node=max(per_node.values()), nodes=len(per_node),
                          node_senders=node_senders)


def contiguous_placement(size: int, gpus_per_node: int) -> GroupPlacement:
    """A group of ``size`` consecutive ranks (a TP group) on full nodes: every rank of a node it
    spans sends across nodes at once."""
    local = min(size, gpus_per_node)
    return GroupPlacement(size=size, ranks_per_node=local, nodes=math.ceil(size / gpus_per_node),
                          node_senders=gpus_per_node)


def inter_node_rate(network: Network, placement: GroupPlacement) -> float:
    """Bytes/s one rank moves across nodes: its own path, or its share of the node's NICs."""
    return min(network.inter.bandwidth_bytes_per_s, network.node_egress_bytes_per_s / max(1, placement.node_senders))


def _ring_steps(kind: Collective, group: int) -> tuple[float, float]:
    """(latency steps, fraction of the buffer moved per rank) of a ring collective over ``group`` ranks."""
    if group <= 1:
        return 0.0, 0.0
    if kind == "all_reduce":
        return 2.0 * (group - 1), 2.0 * (group - 1) / group
    return float(group - 1), (group - 1) / group


def collective_s(kind: Collective, num_bytes: float, placement: GroupPlacement, network: Network) -> float:
    """Seconds of one collective of ``num_bytes`` (the buffer each rank holds: the all-reduced
    tensor, the reduce-scatter's input, the all-gather's output, the p2p message).

    Within a node: the ring at the NVLink rate. Across nodes: the bytes as the intra-node ring
    over the L local ranks and the inter-node ring over the N nodes on each rank's 1/L shard,
    the slower tier's bandwidth term bounding the time; the latency of every step added, an
    all-reduce's 2(L−1) + 2(N−1), an all-gather's or reduce-scatter's g−1 of the ring through
    every rank, N−1 of them across nodes (see the module docstring). p2p: α + n/β of the tier
    it crosses."""
    if num_bytes <= 0:
        return 0.0
    intra = network.intra_for(kind)
    if kind == "p2p":
        if placement.crosses_nodes:
            return network.inter.latency_s + num_bytes / inter_node_rate(network, placement)
        return intra.latency_s + num_bytes / intra.bandwidth_bytes_per_s
    if placement.size <= 1:
        return 0.0
    if kind == "all_to_all":
        return all_to_all_s(num_bytes, placement, network)
    local_steps, local_fraction = _ring_steps(kind, placement.ranks_per_node)
    if not placement.crosses_nodes:
        return local_steps * intra.latency_s + local_fraction * num_bytes / intra.bandwidth_bytes_per_s
    node_steps, node_fraction = _ring_steps(kind, placement.nodes)
    intra_s = local_fraction * num_bytes / intra.bandwidth_bytes_per_s
    inter_s = node_fraction * num_bytes / placement.ranks_per_node / inter_node_rate(network, placement)
    if kind != "all_reduce":  # one ring through every rank: (g-1) steps, (N-1) of them across nodes
        local_steps = _ring_steps(kind, placement.size)[0] - node_steps
    latency_s = local_steps * intra.latency_s + node_steps * network.inter.latency_s
    return latency_s + max(intra_s, inter_s)


def all_to_all_s(num_bytes: float, placement: GroupPlacement, network: Network) -> float:
    """An all-to-all over g ranks: each sends ``num_bytes / g`` to every other rank, all at once (NCCL
    runs it as grouped point-to-point sends to every peer; nccl-tests PERFORMANCE.md: busbw = algbw ·
    (g−1)/g). With L of the ranks on each node, ``(L−1)/g`` of a rank's buffer moves over NVLink and
    ``(g−L)/g`` leaves the node through its share of the NICs, both tiers at once: the slower sets the
    time, plus one latency of each tier crossed."""
    g, local = placement.size, placement.ranks_per_node
    intra_s = (local - 1) / g * num_bytes / network.intra.bandwidth_bytes_per_s
    latency_s = network.intra.latency_s if local > 1 else 0.0
    if not placement.crosses_nodes:
        return latency_s + intra_s
    inter_s = (g - local) / g * num_bytes / inter_node_rate(network, placement)
    return latency_s + network.inter.latency_s + max(intra_s, inter_s)


# -- one tier (measured links, CPU profiles) ---------------------------------------------------


def ring_s(kind: Collective, num_bytes: float, group_size: int, link: Link) -> float:
    """A ring collective over ``group_size`` ranks on one ``link``: ``collective_s`` for a group
    inside one node whose NVLink tier is ``link``."""
    network = Network(intra=link, inter=link, node_egress_bytes_per_s=link.bandwidth_bytes_per_s, gpus_per_node=group_size)
    return collective_s(kind, num_bytes, GroupPlacement(group_size, group_size, 1, group_size), network)


# -- tensor-parallel collectives of one layer (Megatron-LM's placement) -------------------------


def tp_all_reduce_s(rows: float, hidden: int, bytes_per_element: int, tp: int, network: Network) -> float:
    """One all-reduce of ``rows`` × ``hidden`` activations over the TP group (or, with sequence
    parallelism, the all-gather and reduce-scatter that move the same bytes; Korthikanti et al. 2022,
    Sec. 4.2.2)."""
    placement = contiguous_placement(tp, network.gpus_per_node)
    return collective_s("all_reduce", rows * hidden * bytes_per_element, placement, network)


def tp_layer_comm_s(tokens: float, hidden: int, bytes_per_element: int, tp: int, network: Network) -> float:
    """Tensor-parallel traffic of one transformer layer in one direction (forward or backward).

    Megatron's layer needs two all-reduces of the s·b·h activations per pass
    (Shoeybi et al. 2019, Fig. 4); with sequence parallelism each becomes a
    reduce-scatter plus an all-gather of the same total volume
    (Korthikanti et al. 2022, Sec. 4.2.2), so the time is the same.
    """
    return 2 * tp_all_reduce_s(tokens, hidden, bytes_per_element, tp, network)


def embedding_tp_comm_s(tokens: int, hidden: int, bytes_per_element: int, tp: int, sequence_parallel: bool,
                        network: Network) -> float:
    """The vocab-parallel embedding's all-reduce of s·b·h in the forward (a reduce-scatter of the
    same buffer with sequence parallelism; Korthikanti et al. 2022, Sec. 4.2.2)."""
    placement = contiguous_placement(tp, network.gpus_per_node)
    kind: Collective = "reduce_scatter" if sequence_parallel else "all_reduce"
    return collective_s(kind, bytes_per_element * tokens * hidden, placement, network)


def sequence_parallel_gather_s(tokens: int, hidden: int, bytes_per_element: int, tp: int, network: Network) -> float:
    """With sequence parallelism, the all-gather of the s·b·h activations before a column-parallel
    GEMM (and the matching reduce-scatter of their gradient)."""
    placement = contiguous_placement(tp, network.gpus_per_node)
    return collective_s("all_gather", bytes_per_element * tokens * hidden, placement, network)


def logits_gather_s(tokens: int, vocab: int, bytes_per_element: int, tp: int, network: Network) -> float:
    """All-gather of the vocab-parallel logits to the full vocabulary on every TP rank, as a stack
    without a vocab-parallel loss computes it (its backward is a local slice: no traffic)."""
    placement = contiguous_placement(tp, network.gpus_per_node)
    return collective_s("all_gather", bytes_per_element * tokens * vocab, placement, network)


def vocab_parallel_loss_comm_s(tokens: int, tp: int, network: Network) -> float:
    """Megatron's vocab-parallel cross-entropy: three all-reduces of one fp32 value per token
    (the logits' max, the sum of exponentials, the target logit; Megatron-LM
    ``mpu/cross_entropy.py``)."""
    placement = contiguous_placement(tp, network.gpus_per_node)
    return 3 * collective_s("all_reduce", FP32_BYTES * tokens, placement, network)
