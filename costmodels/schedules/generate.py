"""Pipeline schedules as data: generators emit per-rank action lists (``Schedule``).

``generate_schedule(name, pp, v, num_microbatches)`` is the entry point; it
checks the schedule's shape rules (``costmodels.schedules.registry``) first (the runtime's own
requirements, e.g. torch's interleaved ``M % max(1, M // pp) == 0``) and builds
each rank's order. Results are cached: the search prices the same (name, pp, v,
M) many times. The generators' structure (every pass once, F before B before W,
each stage on one rank) is checked by ``check_structure`` in the tests over a
grid of shapes rather than on every call, which would triple the cold cost.
"""

from __future__ import annotations

from functools import lru_cache

from costmodels.schedules.actions import Schedule
from costmodels.schedules.registry import GENERATED_SCHEDULES, SCHEDULES, shape_violations
from costmodels.schedules.torch_csv import parse_torch_csv
from profiles.errors import PlanError


@lru_cache(maxsize=512)
def generate_schedule(name: str, pp: int, v: int, num_microbatches: int) -> Schedule:
    """The per-rank action lists of schedule ``name`` for ``pp`` ranks, ``v`` stages per
    rank and ``num_microbatches`` microbatches. Raises ``PlanError`` (message says how to
    fix the input) when the runtime's rules reject the shape or the name is unknown."""
    if name == "custom":
        raise PlanError(
            "schedule 'custom' is not generated from a name: search one with planner.search.custom_schedule "
            "or load its CSV with costmodels.schedules.torch_csv.parse_torch_csv"
        )
    if name not in GENERATED_SCHEDULES:
        raise PlanError(f"unknown schedule '{name}': use one of {', '.join(GENERATED_SCHEDULES)}")
    if pp < 1 or v < 1 or num_microbatches < 1:
        raise PlanError(f"pp, v and num_microbatches must be >= 1 (got pp={pp}, v={v}, M={num_microbatches})")
    problems = shape_violations(name, pp, v, num_microbatches)
    if problems:
        raise PlanError(problems[0])
    ranks = SCHEDULES[name].generator(pp, v, num_microbatches)
    return Schedule(name, pp, v, num_microbatches, tuple(tuple(r) for r in ranks))


def schedule_of(name: str, pp: int, v: int, num_microbatches: int, schedule_csv: str | None = None) -> Schedule:
    """The action list a configuration runs: generated from its name, or, for ``custom``,
    parsed from the CSV the plan carries (checked against pp, v and M)."""
    if name != "custom":
        return generate_schedule(name, pp, v, num_microbatches)
    if schedule_csv is None:
        raise PlanError("schedule 'custom' needs its action list (config.schedule_csv): make one with `ppplan simulate plan.json --custom-out custom.json`")
    schedule = parse_torch_csv(schedule_csv)
    if (schedule.pp, schedule.v, schedule.num_microbatches) != (pp, v, num_microbatches):
        raise PlanError(
            f"the custom action list has pp={schedule.pp} v={schedule.v} M={schedule.num_microbatches} "
            f"but the configuration has pp={pp} v={v} M={num_microbatches}"
        )
    return schedule
