"""``costmodels.data_parallel``: how many collectives carry a stage's data-parallel traffic, each paying
its ring's latency, derived by hand."""

from __future__ import annotations

import pytest

from costmodels.comm import GroupPlacement, collective_s, network_for
from costmodels.data_parallel import (
    StageUnits,
    collective_pieces,
    fsdp_units_of,
    pieces_s,
    stage_pieces,
)
from costmodels.layout import layouts_of
from profiles.loader import load_stack
from profiles.schema import ClusterSpec, ParallelConfig


def _cfg(**fields: object) -> ParallelConfig:
    base = {"tp": 1, "pp": 1, "dp": 16, "mbs": 1, "num_microbatches": 4, "stage_layers": [4]}
    return ParallelConfig.model_validate({**base, **fields})


def test_each_stack_moves_a_stage_in_its_own_pieces() -> None:
    """Megatron-Core: buckets of max(40M, 1M x dp x cp) parameters (dp 16: 40M; dp 64: 64M), ceil over the
    stage; torchtitan (FSDP2): one per unit; Megatron-LM 2021: one buffer."""
    core, titan, old = (load_stack(s).overlap for s in ("megatron-core", "torchtitan", "megatron-lm-2021"))
    assert collective_pieces(core, 100e6, 5, 16) == 3  # 40M + 40M + 20M
    assert collective_pieces(core, 100e6, 5, 64) == 2  # 64M + 36M
    assert collective_pieces(titan, 100e6, 5, 16) == 5
    assert collective_pieces(old, 100e6, 5, 16) == 1
    assert collective_pieces(core, 0.0, 5, 16) == 1  # nothing to move: one empty piece, priced 0


def test_fsdp_units_are_the_blocks_and_the_root_with_the_ends() -> None:
    """pp 2, 3 + 3 layers: stage 0 holds the embedding (3 blocks + root), stage 1 the head; a middle stage of
    an interleaved split holds blocks only. The experts of each MoE layer are a unit of their own."""
    first, last = layouts_of([3, 3], 2, 1, "1f1b")
    assert fsdp_units_of(first, 0) == StageUnits(4, 0) and fsdp_units_of(last, 2) == StageUnits(4, 2)
    middle = layouts_of([2, 2, 2, 2], 2, 2, "interleaved-1f1b")[1]
    assert fsdp_units_of(middle, 0) == StageUnits(2, 0)


def test_routed_experts_count_their_own_pieces_on_their_own_group() -> None:
    """Megatron-Core, dp 16, 84M dense and 1,409M expert parameters on a stage: 3 dense buckets of 40M and 36
    expert buckets when ep > 1 reduces the experts apart; with ep 1 they fill the same buffer, 38 buckets. FSDP2:
    5 dense units and 2 expert units apart, 7 together."""
    core, titan = load_stack("megatron-core").overlap, load_stack("torchtitan").overlap
    units = StageUnits(5, 2)
    assert stage_pieces(core, _cfg(ep=4), 84e6, 1409e6, units) == (3, 36)
    assert stage_pieces(core, _cfg(), 84e6, 1409e6, units) == (38, 0)
    assert stage_pieces(titan, _cfg(ep=4), 84e6, 1409e6, units) == (5, 2)
    assert stage_pieces(titan, _cfg(), 84e6, 1409e6, units) == (7, 0)


def test_pieces_pay_the_latency_each_and_the_bytes_once() -> None:
    """4 equal reduce-scatters of 1 GB over 16 ranks, 8 on each of 2 nodes (NVLink 300 GB/s, 8 us; network
    25 GB/s, 15 us): each is NCCL's ring through all 16 ranks, 14 NVLink steps and 1 network step, and moves
    a quarter of the bytes; the NVLink tier bounds (7/8 of it at 300 GB/s, against 1/2 of its 1/8 shard at
    25 GB/s on the network)."""
    cluster = ClusterSpec(
        name="test", gpu={"name": "TEST", "memory_gib": 80, "peak_tflops": {"bf16": 312}, "hbm_bandwidth_gbs": 2000},
        gpus_per_node=8, intra_node={"bandwidth_gbs": 300, "latency_us": 8}, inter_node={"bandwidth_gbs": 25, "latency_us": 15},
        efficiency={"intra_node_collective": 1.0, "inter_node_collective": 1.0},
    )  # fmt: skip
    network, group, n = network_for(cluster), GroupPlacement(16, 8, 2, 8), 1e9
    intra_s, inter_s = 7 / 8 * (n / 4) / 300e9, 1 / 2 * (n / 4) / 8 / 25e9
    assert intra_s > inter_s
    piece = 14 * 8e-6 + 1 * 15e-6 + intra_s
    assert collective_s("reduce_scatter", n / 4, group, network) == pytest.approx(piece)
    assert pieces_s("reduce_scatter", n, 4, group, network) == pytest.approx(4 * piece)
    assert pieces_s("reduce_scatter", 0.0, 4, group, network) == 0.0
