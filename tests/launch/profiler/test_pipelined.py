"""``launch/profiler/pipelined.py``: what a real two-rank pipeline adds, from each rank's rounds
(thread CPU seconds: the same F and B called directly alone, inside the schedule's actions, and
the whole step). Expected values are hand-derived."""

import pytest

from launch.profiler.pipelined import (
    MICROBATCHES,
    VIRTUAL_STAGES,
    PipelinedRound,
    crowded_shape,
    measurement_config,
    summarize,
)

ACTIONS = 2 * MICROBATCHES * VIRTUAL_STAGES  # 16: F and the whole B of 4 microbatches on 2 stages


def test_the_factor_is_the_actions_over_the_direct_calls_and_the_host_time_what_the_step_adds_per_action() -> None:
    # rank 0: actions 110 of direct 100 (1.10), step 118 -> (118 - 110) / 16 = 0.5 per action
    # rank 1: 0.120 of 0.100 (1.20) and 0.1232 -> 0.2 ms; rank 0 again: 1.05 and 0.3 ms
    rounds = [PipelinedRound(0.100, 0.110, 0.118, ACTIONS), PipelinedRound(0.100, 0.120, 0.1232, ACTIONS),
              PipelinedRound(0.100, 0.105, 0.1098, ACTIONS)]  # fmt: skip
    costs = summarize(rounds)
    assert costs.compute_factor == pytest.approx(1.10)  # the median of 1.10, 1.20, 1.05
    assert costs.host_per_action_s == pytest.approx(0.0003)  # the median of 0.5, 0.2, 0.3 ms
    # a faster pipeline than the direct calls (noise) is no speed-up: the factor stays 1
    assert summarize([PipelinedRound(0.100, 0.095, 0.100, ACTIONS)]).compute_factor == 1.0


def test_a_round_that_missed_actions_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"timed \[8\] actions per step where its schedule runs 16"):
        summarize([PipelinedRound(0.1, 0.1, 0.1, ACTIONS), PipelinedRound(0.1, 0.1, 0.1, 8)])


def test_the_timed_plan_is_the_runtime_interleaved_pipeline_of_one_layer_stages() -> None:
    cfg = measurement_config(mbs=2)
    assert (cfg.pp, cfg.v, cfg.num_microbatches, cfg.schedule, cfg.stage_layers) == (2, 2, 4, "interleaved-1f1b", [1, 1, 1, 1])


def test_a_crowded_pipeline_has_k_ranks_per_core_and_never_more_actions_at_once_than_cores() -> None:
    """Two cores, four ranks per core: eight one-layer stages, GPipe over two microbatches (a GPipe wave
    holds one stage per microbatch: at most two compute at once), 2 x 2 x 1 = 4 actions per rank, by the wall clock."""
    shape = crowded_shape(cores=2, ranks_per_core=4)
    assert (shape.ranks, shape.virtual_stages, shape.microbatches, shape.schedule, shape.wall, shape.actions) == (8, 1, 2, "gpipe", True, 4)
    cfg = measurement_config(mbs=4, shape=shape)
    assert (cfg.pp, cfg.v, cfg.num_microbatches, cfg.schedule, cfg.stage_layers) == (8, 1, 2, "gpipe", [1] * 8)
    assert crowded_shape(cores=1, ranks_per_core=2).microbatches == 1  # one core: one action at a time
    # the crowded rounds are checked against their own schedule's action count
    assert summarize([PipelinedRound(0.1, 0.12, 0.13, 4)], shape).compute_factor == pytest.approx(1.2)
    with pytest.raises(RuntimeError, match=r"8-rank pipeline timed \[16\] actions per step where its schedule runs 4"):
        summarize([PipelinedRound(0.1, 0.1, 0.1, 16)], shape)
