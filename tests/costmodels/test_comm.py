"""``costmodels.comm``: ring collectives, hierarchical collectives over the node boundary and
the node's NICs shared by its GPUs, derived by hand.

Units: GB/s = 1e9 B/s. A test cluster has efficiencies 1 unless a test says otherwise.
"""

from __future__ import annotations

import pytest

from costmodels.comm import (
    GroupPlacement,
    Link,
    Network,
    collective_s,
    contiguous_placement,
    inter_node_rate,
    network_for,
    placement_of,
    ring_s,
    tp_layer_comm_s,
)
from profiles.schema import ClusterSpec

GB = 1e9


def cluster(nics: int | None = None, nic_gbit_s: float | None = None, **efficiency) -> ClusterSpec:
    """8 GPUs a node, NVLink 300 GB/s and 8 us, network 25 GB/s per GPU and 15 us."""
    extra = {"nics_per_node": nics, "nic_bandwidth_gbit_s": nic_gbit_s} if nics else {}
    return ClusterSpec(
        name="test",
        gpu={"name": "TEST", "memory_gib": 80, "peak_tflops": {"bf16": 312}, "hbm_bandwidth_gbs": 2000},
        gpus_per_node=8,
        intra_node={"bandwidth_gbs": 300, "latency_us": 8},
        inter_node={"bandwidth_gbs": 25, "latency_us": 15},
        efficiency={"intra_node_collective": 1.0, "inter_node_collective": 1.0, **efficiency},
        **extra,
    )


def test_ring_within_a_node() -> None:
    """All-reduce of n over g ranks: 2(g-1)·α + 2(g-1)/g·n/β; reduce-scatter and all-gather half."""
    net = network_for(cluster())
    n = 1e9
    inside = GroupPlacement(size=8, ranks_per_node=8, nodes=1, node_senders=8)
    assert collective_s("all_reduce", n, inside, net) == pytest.approx(14 * 8e-6 + 2 * 7 / 8 * n / (300 * GB))
    assert collective_s("reduce_scatter", n, inside, net) == pytest.approx(7 * 8e-6 + 7 / 8 * n / (300 * GB))
    assert collective_s("all_gather", n, inside, net) == collective_s("reduce_scatter", n, inside, net)
    assert ring_s("all_reduce", n, 8, Link(300 * GB, 8e-6)) == collective_s("all_reduce", n, inside, net)
    assert collective_s("all_reduce", n, GroupPlacement(1, 1, 1, 1), net) == 0.0


def test_hierarchical_all_reduce_over_eight_nodes() -> None:
    """64 ranks, 8 on each of 8 nodes: NVLink ring over 8 (2·7/8·n at 300 GB/s) and the nodes' ring
    over 8 on each rank's 1/8 shard (2·7/8·n/8 at 25 GB/s); the slower tier bounds the time,
    every step's latency adds: 14·8 us + 14·15 us."""
    net = network_for(cluster())
    n = 1e9
    group = GroupPlacement(size=64, ranks_per_node=8, nodes=8, node_senders=8)
    intra = 2 * 7 / 8 * n / (300 * GB)
    inter = 2 * 7 / 8 * n / 8 / (25 * GB)
    assert inter > intra
    assert collective_s("all_reduce", n, group, net) == pytest.approx(14 * 8e-6 + 14 * 15e-6 + inter)
    # one rank a node (a DP group beside tp = 8): the plain ring over the nodes at one NIC's rate
    sparse = GroupPlacement(size=8, ranks_per_node=1, nodes=8, node_senders=8)
    assert collective_s("all_reduce", n, sparse, net) == pytest.approx(14 * 15e-6 + 2 * 7 / 8 * n / (25 * GB))


def test_reduce_scatter_across_nodes() -> None:
    """32 ranks, 2 on each of 16 nodes: NCCL runs a reduce-scatter as one ring through all 32 ranks, 31 steps of
    which 15 cross nodes (src/graph/tuning.cc: nsteps = nRanks - 1, nInterSteps = nNodes - 1), so 16 NVLink steps
    at 8 us and 15 network steps at 15 us; the bytes as the hierarchical split prices them."""
    net = network_for(cluster())
    n = 1e9
    group = GroupPlacement(size=32, ranks_per_node=2, nodes=16, node_senders=8)
    expected = 16 * 8e-6 + 15 * 15e-6 + max(1 / 2 * n / (300 * GB), 15 / 16 * n / 2 / (25 * GB))
    assert collective_s("reduce_scatter", n, group, net) == pytest.approx(expected)
    # the latency grows with every rank the ring visits: 512 ranks on 64 nodes, 448 + 63 steps for a tiny gather
    wide = GroupPlacement(size=512, ranks_per_node=8, nodes=64, node_senders=8)
    assert collective_s("all_gather", 8.0, wide, net) == pytest.approx(448 * 8e-6 + 63 * 15e-6, rel=1e-3)


def test_node_nics_are_shared_by_the_gpus_that_send() -> None:
    """Four 200 Gb/s NICs for eight GPUs: the node sends 100 GB/s, 12.5 GB/s for each of its eight
    senders, below the 25 GB/s one GPU could inject; with two senders each gets its own 25."""
    shared = network_for(cluster(nics=4, nic_gbit_s=200))
    assert shared.node_egress_bytes_per_s == pytest.approx(100 * GB)
    all_send = GroupPlacement(size=16, ranks_per_node=1, nodes=16, node_senders=8)
    assert inter_node_rate(shared, all_send) == pytest.approx(12.5 * GB)
    assert inter_node_rate(shared, GroupPlacement(16, 1, 16, node_senders=2)) == pytest.approx(25 * GB)
    n = 1e9
    assert collective_s("all_reduce", n, all_send, shared) == pytest.approx(30 * 15e-6 + 2 * 15 / 16 * n / (12.5 * GB))
    assert collective_s("p2p", n, all_send, shared) == pytest.approx(15e-6 + n / (12.5 * GB))
    # rail-optimised (one NIC per GPU at the per-GPU rate): sharing changes nothing
    rail = network_for(cluster(nics=8, nic_gbit_s=200))
    assert inter_node_rate(rail, all_send) == pytest.approx(25 * GB)


def test_a_cluster_file_without_nics_gets_one_per_gpu_at_the_network_rate() -> None:
    """Default egress: gpus_per_node x inter_node.bandwidth_gbs (what files before the NIC keys meant)."""
    legacy = cluster()
    assert legacy.node_egress_gbs == 8 * 25
    net = network_for(legacy)
    assert inter_node_rate(net, GroupPlacement(16, 1, 16, node_senders=8)) == pytest.approx(25 * GB)


def test_efficiency_scales_each_tier() -> None:
    net = network_for(cluster(intra_node_collective=0.5, inter_node_collective=0.8))
    assert net.intra.bandwidth_bytes_per_s == pytest.approx(150 * GB)
    assert net.inter.bandwidth_bytes_per_s == pytest.approx(20 * GB)
    assert net.node_egress_bytes_per_s == pytest.approx(0.8 * 200 * GB)


def test_placement_of_a_group_of_global_ranks() -> None:
    # a DP group beside tp = 4: ranks 0, 4, 8, ..., 60 on 8-GPU nodes: 2 per node, 8 nodes
    group = placement_of(list(range(0, 64, 4)), gpus_per_node=8, node_senders=8)
    assert (group.size, group.ranks_per_node, group.nodes) == (16, 2, 8)
    tp16 = contiguous_placement(16, 8)
    assert (tp16.ranks_per_node, tp16.nodes, tp16.node_senders) == (8, 2, 8)


def test_tp_layer_comm_is_two_all_reduces_of_the_activations() -> None:
    net = Network(Link(300 * GB, 8e-6), Link(25 * GB, 15e-6), 200 * GB, gpus_per_node=8)
    tokens, hidden, p, tp = 2048, 4096, 2, 8
    one = collective_s("all_reduce", tokens * hidden * p, GroupPlacement(8, 8, 1, 8), net)
    assert tp_layer_comm_s(tokens, hidden, p, tp, net) == pytest.approx(2 * one)
