"""The all-gathers FSDP2 issues under torch's pipelining are the ones the estimate counts
(``costmodels.schedules.fsdp_lowering``): counted on ppplan's runtime (gloo, 4 ranks: pp 2 x dp 2), in one step
after a warm-up step (``gather_worker``), against the replay of the same action list.

- interleaved 1F1B at v 4, ZeRO 1: the runtime keeps at most three stages of a rank unsharded (counted too: the
  estimate's weights rest on it) and gathers an evicted stage again (``unshards_per_stage``);
- 1F1B at ZeRO 3: a forward reshards after it, a backward keeps its stage unsharded for the forward after it
  (``zero3_gathers_per_stage``: 2 forwards and 7 backwards of stage 0 gather, 1 and 8 of stage 1, at M 8, not
  every pass): the split between forwards and backwards too, which the pricing charges to each.
Every FSDP unit of a stage (its layers and its root) is gathered as often as the stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from costmodels.layer_costs import bytes_per_element
from costmodels.layout import layouts_of
from costmodels.memory import stage_param_split, unsharded_weights_share
from costmodels.schedules.fsdp_lowering import unshards_per_stage, zero3_gathers_per_stage
from costmodels.schedules.generate import generate_schedule
from tests.launch.runtime.runtime_plans import make_plan, write_plan

pytestmark = pytest.mark.dist

PLANS = {
    "interleaved v4 zero 1": make_plan("tiny-llama", pp=2, dp=2, v=4, schedule="interleaved-1f1b", zero=1, global_batch=16),
    "1f1b zero 3": make_plan("tiny-llama", pp=2, dp=2, zero=3, global_batch=16),
}


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[int, list[dict[str, int]]]]:
    """Per plan, per virtual stage, the second step's all-gathers of each of its FSDP units by the kind of action
    that waited for them (data rank 0's)."""
    tmp = tmp_path_factory.mktemp("gathers")
    args, outs = [], {}
    for i, (name, plan) in enumerate(PLANS.items()):
        outs[name] = tmp / f"out{i}"
        args += ["--plan", str(write_plan(plan, tmp / f"plan{i}.json")), "--out", str(outs[name])]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "4",
            "--max-restarts", "0", "-m", "tests.launch.runtime.gather_worker", *args]  # fmt: skip
    done = subprocess.run(argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = {}
    for name, out in outs.items():
        stages: dict[int, list[dict[str, int]]] = {}
        unsharded = []
        for path in sorted(Path(out).glob("rank*.json")):
            counts = json.loads(path.read_text())
            unsharded.append((counts.pop("unsharded_stages"), counts.pop("unsharded_bytes")))
            SHARDED_BYTES.setdefault(name, []).append(counts.pop("sharded_bytes"))
            for stage, units in counts.items():
                stages.setdefault(int(stage), units)
        result[name] = stages
        UNSHARDED_STAGES[name] = unsharded
    return result


UNSHARDED_STAGES: dict[str, list[tuple[int, int]]] = {}  # per plan, per rank: the most stages and bytes unsharded at once
SHARDED_BYTES: dict[str, list[int]] = {}  # per plan, per rank: its FSDP shards' bytes


def _per_stage(units_by_stage: dict[int, list[dict[str, int]]]) -> tuple[dict[str, int], ...]:
    """One count by action kind per stage, every unit of the stage having been gathered alike."""
    counts = []
    for stage in sorted(units_by_stage):
        units = units_by_stage[stage]
        assert units and all(u == units[0] for u in units), f"stage {stage}: its units were gathered {units}"
        counts.append(units[0])
    return tuple(counts)


def test_an_interleaved_rank_of_four_stages_gathers_evicted_stages_again(counted) -> None:
    plan = PLANS["interleaved v4 zero 1"].config
    expected = unshards_per_stage(generate_schedule(plan.schedule, plan.pp, plan.v, plan.num_microbatches))
    assert any(c > 1 for c in expected)
    assert tuple(sum(kinds.values()) for kinds in _per_stage(counted["interleaved v4 zero 1"])) == expected


def test_an_interleaved_rank_of_four_stages_holds_three_unsharded_at_most(counted) -> None:
    """The premise of the estimate's weights at v > 3 (``costmodels.memory.evicts_unsharded_stages``): each of the four
    ranks holds unsharded parameters of three of its four stages at some wait of the step, never of all four, and
    at most the bytes of its three largest stages (``unsharded_weights_share``): 9,902,080 and 9,903,104 B on the
    two pipeline ranks (fp32: the embedding's stage and two layers', the head's and two layers'), where all four
    stages would be 12,853,248 and 12,854,272; and beside them the fp32 shards of all four, half of those at dp 2
    (``costmodels.memory.fp32_shard_bytes``). 1F1B (one stage a rank) holds its whole stage."""
    plan = PLANS["interleaved v4 zero 1"]
    cfg, model = plan.config, plan.model
    width = bytes_per_element(plan.train.precision)
    held, shards = [], []
    for rank in range(cfg.pp):
        params = [stage_param_split(model, sum(cfg.stage_layers[:st.stage]), st.num_layers, st.has_embedding, st.has_head,
                                    cfg.tp).total
                  for st in layouts_of(cfg.stage_layers, cfg.pp, cfg.v, cfg.schedule) if st.pipeline_rank == rank]
        held += [width * unsharded_weights_share(params) * sum(params)] * cfg.dp
        shards += [width * sum(params) / cfg.dp] * cfg.dp
    measured = UNSHARDED_STAGES["interleaved v4 zero 1"]
    assert [stages for stages, _ in measured] == [3] * cfg.pp * cfg.dp
    assert sorted(b for _, b in measured) == pytest.approx(sorted(held), rel=1e-6)
    assert sorted(held) == pytest.approx([9_902_080] * 2 + [9_903_104] * 2)
    # beside them each rank keeps its fp32 shards, half of all four stages at dp 2 (costmodels.memory.fp32_shard_bytes)
    assert sorted(SHARDED_BYTES["interleaved v4 zero 1"]) == pytest.approx(sorted(shards), rel=1e-6)
    assert [stages for stages, _ in UNSHARDED_STAGES["1f1b zero 3"]] == [1] * 4


def test_zero3_under_1f1b_gathers_once_a_microbatch_and_once_more(counted) -> None:
    plan = PLANS["1f1b zero 3"].config
    expected = zero3_gathers_per_stage(generate_schedule(plan.schedule, plan.pp, plan.v, plan.num_microbatches))
    assert expected == ((2, 7), (1, 8))
    assert _per_stage(counted["1f1b zero 3"]) == tuple({"F": f, "B": b} for f, b in expected)
