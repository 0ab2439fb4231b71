"""NCCL communicators per rank and their buffers (costmodels/communicators.py), counted by hand."""

import pytest

from costmodels.communicators import (
    NCCL_COMMUNICATOR_GIB,
    communicator_gib,
    communicators_of_rank,
    outside_allocator_gib,
    pipeline_peers,
)
from costmodels.estimate import estimate
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ParallelConfig, TrainSpec


def _count(tied: bool = True, *, tp: int = 1, cp: int = 1, dp: int = 1, ep: int = 1, expert_data: int = 1, pp: int = 1,
           v: int = 1, schedule: str = "1f1b", rank: int = 0) -> int:
    return communicators_of_rank(tied, tp=tp, cp=cp, dp=dp, ep=ep, expert_data=expert_data, pp=pp, v=v,
                                 schedule=schedule, rank=rank)


def test_a_single_gpu_has_no_communicator() -> None:
    assert _count() == 0


def test_data_parallel_only_uses_the_default_group_and_the_data_group() -> None:
    assert _count(dp=8) == 2


@pytest.mark.parametrize(("tied", "rank", "expected"), [
    # default + tp + data + pipeline group = 4; then the tie group on the end ranks, then the peers
    (True, 0, 4 + 1 + 1),
    (True, 1, 4 + 0 + 2),
    (True, 3, 4 + 1 + 1),
    (False, 0, 4 + 0 + 1),
    (False, 2, 4 + 0 + 2),
])
def test_3d_ranks_count_their_groups_the_tie_and_their_peers(tied: bool, rank: int, expected: int) -> None:
    assert _count(tied, tp=2, dp=2, pp=4, rank=rank) == expected


def test_interleaving_makes_the_last_rank_feed_the_first() -> None:
    # pp 4 x v 2: rank 0 holds stages 0 and 4; stage 1 and 5 sit on rank 1, stage 3 on rank 3
    assert pipeline_peers(4, 2, "interleaved-1f1b", 0) == 2
    assert pipeline_peers(4, 1, "1f1b", 0) == 1
    assert pipeline_peers(2, 4, "interleaved-1f1b", 0) == 1


def test_v_placement_keeps_both_ends_on_rank_0_without_a_tie_group() -> None:
    # ZBV pp 4: rank 0 holds stages 0 and 7, both next to rank 1's stages 1 and 6
    assert pipeline_peers(4, 2, "zbv", 0) == 1
    assert pipeline_peers(4, 2, "zbv", 3) == 1  # stages 3 and 4: its neighbours 2 and 5 are rank 2's
    assert pipeline_peers(4, 2, "zbv", 1) == 2
    assert _count(True, pp=4, v=2, schedule="zbv", rank=0) == 1 + 1 + 1  # default, pipeline group, one peer


def test_expert_parallel_adds_the_expert_and_expert_data_groups() -> None:
    assert _count(dp=8, ep=4, expert_data=2) == 2 + 2
    assert _count(dp=4, ep=4, expert_data=1) == 2 + 1


def test_each_communicator_is_priced_688_mb_on_gpus_and_nothing_on_cpu_ranks() -> None:
    assert NCCL_COMMUNICATOR_GIB == pytest.approx(0.671875)
    h100 = load_cluster("dgx-h100")
    assert communicator_gib(h100) == NCCL_COMMUNICATOR_GIB
    assert communicator_gib(load_cluster("cpu-local")) == 0.0
    assert communicator_gib(h100.model_copy(update={"nccl_communicator_gib": 1.5})) == 1.5


def test_the_estimate_holds_the_buffers_outside_the_allocator() -> None:
    """gpt3-1.7b (tied) on 16 H100, tp 2 pp 4 dp 2: 6 communicators on every rank (above) x 688 MB."""
    model, train = load_model("gpt3-1.7b"), TrainSpec(global_batch=16, seq_len=2048)
    cfg = ParallelConfig(stack="megatron-core", tp=2, pp=4, dp=2, mbs=1, num_microbatches=8, schedule="1f1b",
                         stage_layers=[6, 6, 6, 6])
    est = estimate(model, load_cluster("dgx-h100"), train, cfg, stack=load_stack("megatron-core"))
    for parts in est.memory_breakdown_gib:
        assert parts["nccl_buffers"] == pytest.approx(6 * 688 / 1024, abs=1e-4)
        assert outside_allocator_gib(parts) == pytest.approx(parts["runtime_reserved"] + parts["nccl_buffers"])
    cpu = estimate(load_model("tiny-gpt"), load_cluster("cpu-local"), TrainSpec(global_batch=8, seq_len=128, precision="fp32"),
                   ParallelConfig(tp=1, pp=2, dp=2, mbs=1, num_microbatches=4, schedule="1f1b", stage_layers=[4, 4]),
                   stack=load_stack("ppplan-torch"))
    assert all("nccl_buffers" not in parts for parts in cpu.memory_breakdown_gib)


@pytest.mark.parametrize("schedule", ["1f1b", "interleaved-1f1b", "zbv"])
@pytest.mark.parametrize("pp", [2, 3, 4, 8])
def test_rank_none_counts_the_fewest_any_pipeline_rank_uses(schedule: str, pp: int) -> None:
    """What the search's memory bounds charge any rank: tp 2 dp 2 (the default, tensor and data groups: 3) and the
    pipeline group (4); 1F1B's end ranks add one peer and the tie (6), its middle ranks two peers (6)."""
    v = 1 if schedule == "1f1b" else 2
    counts = [_count(True, tp=2, dp=2, pp=pp, v=v, schedule=schedule, rank=r) for r in range(pp)]
    assert _count(True, tp=2, dp=2, pp=pp, v=v, schedule=schedule, rank=None) == min(counts)
    if schedule == "1f1b":
        assert min(counts) == 6
