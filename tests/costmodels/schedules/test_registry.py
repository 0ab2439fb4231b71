"""The schedule registry is the one table of schedule facts; everything else derives from it."""

from __future__ import annotations

import pytest

from costmodels.rank_grid import stage_to_rank
from costmodels.schedules.generate import generate_schedule
from costmodels.schedules.registry import (
    GENERATED_SCHEDULES,
    LOOPED_SCHEDULES,
    SCHEDULES,
    SIMULATED_ONLY_SCHEDULES,
    SPLIT_BACKWARD_SCHEDULES,
    V_SCHEDULES,
)
from profiles.loader import load_stack, preset_names
from profiles.schema import SCHEDULE_NAMES

torch_schedules = pytest.importorskip("torch.distributed.pipelining.schedules")


def test_one_entry_per_name_of_the_plan_schema() -> None:
    assert tuple(SCHEDULES) == SCHEDULE_NAMES


def test_derived_sets() -> None:
    assert SPLIT_BACKWARD_SCHEDULES == {"zb-h1", "zb-h2", "interleaved-zb", "zbv", "dualpipev"}
    assert V_SCHEDULES == {"zbv", "dualpipev"}
    assert LOOPED_SCHEDULES == {"interleaved-1f1b", "combined-1f1b", "looped-bfs", "interleaved-zb"}
    assert SIMULATED_ONLY_SCHEDULES == {"chimera"}
    assert set(GENERATED_SCHEDULES) == set(SCHEDULE_NAMES) - {"custom"}
    torch_run = {n for n, s in SCHEDULES.items() if s.torch_class or s.torch_csv}
    assert torch_run == set(SCHEDULE_NAMES) - {"chimera", "combined-1f1b"}
    assert {n for n, s in SCHEDULES.items() if s.megatron_only} == {"combined-1f1b"}


@pytest.mark.parametrize("name", [n for n, s in SCHEDULES.items() if s.torch_class])
def test_torch_classes_exist_and_torchtitan_names_follow_them(name: str) -> None:
    spec = SCHEDULES[name]
    assert hasattr(torch_schedules, spec.torch_class)
    assert spec.torchtitan_name == spec.torch_class.removeprefix("Schedule")


@pytest.mark.parametrize("stack_name", preset_names("stacks"))
def test_stacks_offer_only_schedules_their_pipeline_engine_runs(stack_name: str) -> None:
    stack = load_stack(stack_name)
    for name in stack.schedules:
        spec = SCHEDULES[name]
        assert not spec.simulated_only, name
        if stack.pipeline_runtime == "torch":
            assert spec.torch_class or spec.torch_csv, name
        elif stack.pipeline_runtime == "megatron":  # 1F1B, interleaved 1F1B and Megatron-Core's combined 1F1B only
            assert name in {"1f1b", "interleaved-1f1b", "combined-1f1b"}, name
        else:  # the zero-bubble fork: Megatron-LM's two and its ZB-1p/ZB-2p (as ZB-H1/ZB-H2) and ZB-V
            assert name in {"1f1b", "interleaved-1f1b", "zb-h1", "zb-h2", "zbv"}, name


def test_every_runnable_schedule_runs_one_way() -> None:
    for name, spec in SCHEDULES.items():
        if not spec.simulated_only and not spec.megatron_only:
            assert (spec.torch_class is None) == spec.torch_csv, name


@pytest.mark.parametrize("name", [n for n in GENERATED_SCHEDULES if n != "chimera"])
def test_generated_actions_sit_where_the_placement_says(name: str) -> None:
    pp, v = 4, {"one": 1, "looped": 2, "two": 2}[SCHEDULES[name].stages_per_rank]
    schedule = generate_schedule(name, pp, v, 8)
    for rank, actions in enumerate(schedule.ranks):
        assert {stage_to_rank(a.stage, pp, v, name) for a in actions} == {rank}
