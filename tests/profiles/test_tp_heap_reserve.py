"""``ClusterSpec.tp_heap_reserve_gib``: the heap a tensor-parallel rank keeps beyond its fragmentation share."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from costmodels.estimate import estimate
from profiles.errors import PlanError
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ParallelConfig, TrainSpec

GIB = 2**30


def _rank(tp: int, cluster: str = "cpu-local") -> dict[str, float]:
    model, stack = load_model("tiny-gpt"), load_stack("ppplan-torch")
    train = TrainSpec(global_batch=8, seq_len=128, precision="fp32")
    cfg = ParallelConfig(tp=tp, pp=1, dp=1, mbs=1, num_microbatches=8, schedule="1f1b", stage_layers=[8])
    return estimate(model, load_cluster(cluster), train, cfg, stack=stack).memory_breakdown_gib[0]


def test_a_tp_rank_carries_the_reserve_on_top_of_its_fragmentation_share() -> None:
    """cpu-local: 0.059 GiB on every rank with tp > 1, none at tp 1; the fragmentation row stays 25 % of the
    allocated bytes, and the peak is their sum with the reserve and the runtime's own."""
    cluster = load_cluster("cpu-local")
    assert cluster.tp_heap_reserve_gib == 0.059
    assert "tp_heap" not in _rank(1)
    for tp in (2, 4, 8):
        rank = _rank(tp)
        allocated = sum(v for k, v in rank.items() if k not in ("fragmentation", "tp_heap", "runtime_reserved"))
        assert rank["tp_heap"] == 0.059
        assert rank["fragmentation"] == pytest.approx(allocated * 0.25, abs=2e-4)
    assert "tp_heap" not in _rank(2, "dgx-a100-80g")  # GPUs: none


def test_a_bad_reserve_is_refused_with_one_line(tmp_path: Path) -> None:
    data = load_cluster("cpu-local").model_dump(mode="json")
    for bad in (-0.1, float("nan"), "lots"):
        data["tp_heap_reserve_gib"] = bad
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(PlanError, match="tp_heap_reserve_gib"):
            load_cluster(str(path))
