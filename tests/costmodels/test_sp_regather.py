"""A plan that keeps its sequence-parallel blocks' inputs as shards (``ParallelConfig.sp_regather``): hand-derived
memory and backward time against the same plan keeping them gathered (ppplan-torch, llama3-8b on 8 H100, tp 4 SP, pp 2,
bf16, mbs 1, seq 8192: s·b·h = 8192 x 4096 values per block input)."""

from __future__ import annotations

import pytest

from costmodels.comm import network_for, sequence_parallel_gather_s
from costmodels.estimate import estimate, stage_times
from costmodels.rules import config_violations
from planner.search.space import enumerate_candidates
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ParallelConfig, TrainSpec

MODEL, CLUSTER, STACK = load_model("llama3-8b"), load_cluster("dgx-h100"), load_stack("ppplan-torch")
TRAIN = TrainSpec(global_batch=16, seq_len=8192)
SBH = 8192 * 1 * MODEL.hidden_size


def _config(schedule: str = "1f1b", recompute: str = "none", sp_regather: bool = True, pp: int = 2) -> ParallelConfig:
    return ParallelConfig(tp=4, pp=pp, dp=8 // (4 * pp) or 1, mbs=1, num_microbatches=16 // max(1, 8 // (4 * pp)),
                          schedule=schedule, recompute=recompute, sequence_parallel=True, sp_regather=sp_regather,
                          stage_layers=[MODEL.num_layers // pp] * pp)


def _stages(cfg: ParallelConfig):
    return stage_times(MODEL, CLUSTER, TRAIN, cfg, stack=STACK)


def test_each_layer_keeps_its_two_block_inputs_as_shards() -> None:
    """Per layer and microbatch: 2 inputs x 2 bytes x (1 - 1/4) x s·b·h less."""
    kept, shards = _stages(_config(sp_regather=False)), _stages(_config())
    per_stage = MODEL.num_layers // 2
    for a, b in zip(kept.activation_bytes, shards.activation_bytes):
        assert a - b == pytest.approx(per_stage * 2 * 2 * (1 - 1 / 4) * SBH, rel=1e-12)


def test_the_backward_gathers_each_block_input_again_once_per_autograd_call() -> None:
    """B gains two all-gathers of s·b·h per layer; W too where the schedule splits the backward (ZB-H1), but not on
    the first stage, whose whole backward torch runs as one call (W); 1F1B's W gains none."""
    gather = 2 * sequence_parallel_gather_s(8192, MODEL.hidden_size, 2, 4, network_for(CLUSTER))
    per_stage = MODEL.num_layers // 2 * gather
    kept, shards = _stages(_config(sp_regather=False)), _stages(_config())
    assert [b - a for a, b in zip(kept.backward_input_s, shards.backward_input_s)] == pytest.approx([per_stage] * 2)
    assert shards.backward_weight_s == pytest.approx(kept.backward_weight_s)
    assert shards.forward_s == pytest.approx(kept.forward_s)
    kept, shards = _stages(_config("zb-h1", sp_regather=False)), _stages(_config("zb-h1"))
    # stage 0: B is empty and W the whole backward, gathered once
    assert shards.backward_weight_s[0] - kept.backward_weight_s[0] == pytest.approx(per_stage)
    assert shards.backward_input_s[1] - kept.backward_input_s[1] == pytest.approx(per_stage)
    assert shards.backward_weight_s[1] - kept.backward_weight_s[1] == pytest.approx(per_stage)


def test_full_recompute_is_the_same_plan_either_way() -> None:
    """The layer keeps its input only, and its re-run forward keeps the gathered inputs (no gather again)."""
    kept = estimate(MODEL, CLUSTER, TRAIN, _config(recompute="full", sp_regather=False), stack=STACK)
    shards = estimate(MODEL, CLUSTER, TRAIN, _config(recompute="full"), stack=STACK)
    assert shards.step_time_s == kept.step_time_s and shards.peak_memory_gib == kept.peak_memory_gib


def test_only_a_stack_that_runs_both_takes_it() -> None:
    cfg = _config()
    assert config_violations(MODEL, TRAIN, 8, cfg, STACK) == []
    no_sp = cfg.model_copy(update={"sequence_parallel": False})
    assert any("add --sequence-parallel or drop --sp-regather" in p for p in config_violations(MODEL, TRAIN, 8, no_sp, STACK))
    for name, says in (("torchtitan", "keeps the gathered sequence-parallel inputs always"),
                       ("megatron-core", "keeps the sequence-parallel inputs as shards always")):
        stack = load_stack(name)
        problems = config_violations(MODEL, TRAIN, 8, cfg.model_copy(update={"stack": name}), stack)
        assert any(says in p and "drop --sp-regather" in p for p in problems), problems


def test_the_search_weighs_both_where_the_inputs_are_kept() -> None:
    """Sequence-parallel candidates come with the inputs kept and as shards, but under full recompute (the same
    plan) and on stacks that run one of the two."""
    def options(stack_name: str) -> set[tuple[bool, str, bool]]:
        cands = enumerate_candidates(MODEL, TRAIN, 8, 8, ("1f1b",), False, load_stack(stack_name))
        return {(c.sequence_parallel, c.recompute, c.sp_regather) for c in cands if c.tp > 1}

    assert (True, "none", True) in options("ppplan-torch") and (True, "selective", True) in options("ppplan-torch")
    assert (True, "full", True) not in options("ppplan-torch")
    assert not any(regather for *_, regather in options("torchtitan"))
