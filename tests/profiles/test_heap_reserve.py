"""``ClusterSpec.heap_reserve``: the heap a rank that exchanges tensors with other ranks keeps beyond its
fragmentation share (cpu-local's values come from bench/cpu_heap.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from costmodels.estimate import estimate
from costmodels.rank_memory import heap_reserve_kinds
from profiles.errors import PlanError
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ClusterSpec, ParallelConfig, TrainSpec

NOT_ALLOCATED = ("fragmentation", "heap_reserve", "runtime_reserved")
CPU_TP_GIB, CPU_PP_GIB, CPU_ZERO3_PER_MB = 0.0508, 0.0156, 0.2


def _ranks(tp: int = 1, pp: int = 1, dp: int = 1, zero: int = 0, cluster: str = "cpu-local") -> list[dict[str, float]]:
    model, stack = load_model("tiny-gpt"), load_stack("ppplan-torch")
    train = TrainSpec(global_batch=16, seq_len=128, precision="fp32")
    cfg = ParallelConfig(tp=tp, pp=pp, dp=dp, mbs=1, num_microbatches=16 // dp, schedule="1f1b", zero=zero,
                         stage_layers=[8 // pp] * pp)
    return estimate(model, load_cluster(cluster), train, cfg, stack=stack).memory_breakdown_gib


def _allocated(rank: dict[str, float]) -> float:
    return sum(v for k, v in rank.items() if k not in NOT_ALLOCATED)


def test_each_kind_of_communicating_rank_carries_its_reserve_on_top_of_its_fragmentation_share() -> None:
    """cpu-local: tp > 1 ranks carry 0.0508 GiB, every pipeline rank 0.0156 GiB, ZeRO-3 ranks with more than
    one data rank a share of their allocated bytes per microbatch (16 sequences over dp ranks at mbs 1); the
    fragmentation row stays 25 % of the allocated bytes."""
    reserve = load_cluster("cpu-local").heap_reserve
    assert (reserve.tp_gib, reserve.pp_gib, reserve.zero3_share_per_microbatch) == (CPU_TP_GIB, CPU_PP_GIB, CPU_ZERO3_PER_MB)
    for tp, pp, dp, zero in ((2, 1, 1, 0), (8, 1, 1, 0), (1, 4, 1, 0), (1, 8, 1, 0), (1, 1, 2, 3), (1, 1, 4, 3)):
        for rank in _ranks(tp, pp, dp, zero):
            zero3 = CPU_ZERO3_PER_MB * (16 // dp) * _allocated(rank)
            want = zero3 if zero == 3 else CPU_TP_GIB if tp > 1 else CPU_PP_GIB
            assert rank["heap_reserve"] == pytest.approx(want, abs=1e-4), (tp, pp, dp, zero)
            assert rank["fragmentation"] == pytest.approx(_allocated(rank) * 0.25, abs=2e-4)


def test_a_rank_of_several_kinds_takes_the_largest_and_quiet_ranks_none() -> None:
    assert heap_reserve_kinds(tp=2, pp=2, data_ranks=2, zero=3) == ("tp", "pp", "zero3")
    assert heap_reserve_kinds(tp=1, pp=1, data_ranks=1, zero=3) == ()
    assert [r["heap_reserve"] for r in _ranks(tp=2, pp=2)] == [max(CPU_TP_GIB, CPU_PP_GIB)] * 2
    for rank in _ranks(pp=2, dp=2, zero=3):  # ZeRO 3's share over 8 microbatches outweighs the pipeline's 16 MiB
        # the breakdown's rows are rounded to 1e-4 GiB: their sum times the share (1.6) carries up to ~4e-4
        assert rank["heap_reserve"] == pytest.approx(CPU_ZERO3_PER_MB * 8 * _allocated(rank), abs=5e-4)
        assert rank["heap_reserve"] > CPU_PP_GIB
    for quiet in (_ranks(), _ranks(dp=2), _ranks(dp=2, zero=1), _ranks(tp=2, cluster="dgx-a100-80g")):
        assert all("heap_reserve" not in rank for rank in quiet)  # one process; plain data parallel; GPUs


def test_a_file_that_states_the_tp_reserve_alone_still_loads(tmp_path: Path) -> None:
    """Cluster files and plans written before the reserve had kinds state ``tp_heap_reserve_gib``."""
    data = load_cluster("cpu-local").model_dump(mode="json")
    del data["heap_reserve"]
    data["tp_heap_reserve_gib"] = 0.05
    want = {"tp_gib": 0.05, "pp_gib": 0.0, "zero3_share_per_microbatch": 0.0}
    assert ClusterSpec.model_validate(data).heap_reserve.model_dump() == want
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump({**data, "heap_reserve": {"tp_gib": 0.05}}))
    with pytest.raises(PlanError, match="tp_heap_reserve_gib"):
        load_cluster(str(path))


def test_a_bad_reserve_is_refused_with_one_line(tmp_path: Path) -> None:
    data = load_cluster("cpu-local").model_dump(mode="json")
    for bad in ({"pp_gib": -0.1}, {"tp_gib": float("nan")}, {"tp_gib": "lots"}, {"zero3_share_per_microbatch": 1.5},
                {"ep_gib": 0.1}, 0.059):
        data["heap_reserve"] = bad
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(PlanError, match="heap_reserve") as err:
            load_cluster(str(path))
        assert "\n" not in str(err.value)
