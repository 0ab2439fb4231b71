"""``costmodels.data_parallel``: how many collectives carry a stage's data-parallel traffic, each paying
its ring's latency, derived by hand."""

from __future__ import annotations

import pytest

from costmodels.comm import GroupPlacement, collective_s, network_for
from costmodels.data_parallel import (
    StageUnits,
    StageWindow,
    collective_pieces,
    fsdp_units_of,
    pieces_s,
    rank_sync,
    stage_pieces,
)
from costmodels.layout import layouts_of
from costmodels.overlap import contention_s
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


def test_megatron_core_reduces_later_model_chunks_as_one_bucket_after_their_last_backward() -> None:
    """Megatron-Core wraps a rank's model chunks 2 onwards with disable_bucketing: interleaved pp 2 x v 2, dp 16 in
    one node (NVLink 0.15 GB/s, no latency), ZeRO 0, 100M parameters a chunk in fp32: each all-reduce moves
    2 x 15/16 x 400 MB in 5 s, in buckets of max(40M, 16M) = 40M, 3 pieces (the last 5/3 s). Chunk 1's last
    backward ends at 14 s, chunk 0's (the rank's last action, B + W 4 s) at 20 s.
    One bucket for chunk 1: it starts at 14 s and ends at 19; chunk 0 then runs 19-24: 4 s exposed.
    Bucketed, chunk 1 could start at 10 s and end by 15 + 2/3 s; chunk 0 runs 16-21 and its last bucket, which
    may start at 20, ends at 21 + 2/3: 5/3 s exposed. What hides costs its contention either way."""
    cluster = ClusterSpec(
        name="test", gpu={"name": "TEST", "memory_gib": 80, "peak_tflops": {"bf16": 312}, "hbm_bandwidth_gbs": 2000},
        gpus_per_node=16, intra_node={"bandwidth_gbs": 0.15, "latency_us": 0}, inter_node={"bandwidth_gbs": 0.15, "latency_us": 0},
        efficiency={"intra_node_collective": 1.0, "inter_node_collective": 1.0},
    )  # fmt: skip
    cfg = _cfg(pp=2, dp=16, v=2, schedule="interleaved-1f1b", stage_layers=[1, 1, 1, 1], zero=0)
    chunks = [StageWindow(100e6, 0.0, 1.0, 20.0, 4.0, chunk=0), StageWindow(100e6, 2.0, 1.0, 14.0, 4.0, chunk=1)]
    core = load_stack("megatron-core").overlap
    assert core.dp_later_chunks_one_bucket
    bucketed = core.model_copy(update={"dp_later_chunks_one_bucket": False})
    network = network_for(cluster)
    assert collective_s("all_reduce", 400e6, GroupPlacement(16, 16, 1, 16), network) == pytest.approx(5.0)
    for overlap, exposed in ((core, 4.0), (bucketed, 5 / 3)):
        sync = rank_sync(cluster, cfg, overlap, network, 0, chunks, 20.0, 2, 4)
        assert sync.grad_reduce_s == pytest.approx(10.0)
        assert sync.grad_reduce_exposed_s == pytest.approx(exposed + contention_s(10.0 - exposed))
