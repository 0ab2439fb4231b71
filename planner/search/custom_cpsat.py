"""CP-SAT refinement of a one-stage-per-rank F/B/W order (used by ``planner.search.custom_schedule``).

Model (times in integer units, the shortest pass = ``QUANTUM`` units):
an interval per F, B and W of every (microbatch, rank); no overlap per rank;
F(m, r) after F(m, r-1) plus the p2p time, B(m, r) after B(m, r+1) plus the
p2p time (after F(m, r) on the last rank), W(m, r) after B(m, r); passes of
one kind run in microbatch order on a rank (identical microbatches: no loss
of generality, as in the zero-bubble paper's graph); a reservoir per rank keeps
the in-flight count (+1 at F start, -1 at W end) within the cap; minimise the
makespan. Hinted with the greedy order; one worker, fixed seed and a
deterministic time limit, so the answer is reproducible.
"""

from __future__ import annotations

from ortools.sat.python import cp_model

from costmodels.schedules.actions import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, Action, Schedule, check_structure
from costmodels.simulator import StageTimes, simulate

QUANTUM = 200
KIND_ORDER = {FORWARD: 0, BACKWARD_INPUT: 1, BACKWARD_WEIGHT: 2}


def _units(times: StageTimes) -> tuple[float, dict[str, list[int]], list[int]]:
    """Seconds per unit, integer durations per kind and rank, integer p2p per boundary."""
    passes = [x for x in (*times.forward_s, *times.backward_input_s, *times.backward_weight_s) if x > 0]
    unit_s = min(passes) / QUANTUM
    durations = {
        FORWARD: [round(x / unit_s) for x in times.forward_s],
        BACKWARD_INPUT: [round(x / unit_s) for x in times.backward_input_s],
        BACKWARD_WEIGHT: [round(x / unit_s) for x in times.backward_weight_s],
    }
    return unit_s, durations, [round(x / unit_s) for x in times.p2p_s]


def _build(model: cp_model.CpModel, pp: int, m: int, dur: dict[str, list[int]], p2p: list[int], caps, horizon: int):
    start, end = {}, {}
    for r in range(pp):
        intervals = []
        for kind in (FORWARD, BACKWARD_INPUT, BACKWARD_WEIGHT):
            for mb in range(m):
                s = model.NewIntVar(0, horizon, f"s_{kind}{mb}_{r}")
                e = model.NewIntVar(0, horizon, f"e_{kind}{mb}_{r}")
                intervals.append(model.NewIntervalVar(s, dur[kind][r], e, f"i_{kind}{mb}_{r}"))
                start[kind, mb, r], end[kind, mb, r] = s, e
                if mb:
                    model.Add(s >= end[kind, mb - 1, r])
        model.AddNoOverlap(intervals)
        model.AddReservoirConstraint(
            [start[FORWARD, mb, r] for mb in range(m)] + [end[BACKWARD_WEIGHT, mb, r] for mb in range(m)],
            [1] * m + [-1] * m, 0, caps[r],
        )
    for r in range(pp):
        for mb in range(m):
            if r:
                model.Add(start[FORWARD, mb, r] >= end[FORWARD, mb, r - 1] + p2p[r - 1])
            upstream = end[FORWARD, mb, r] if r == pp - 1 else end[BACKWARD_INPUT, mb, r + 1] + p2p[r]
            model.Add(start[BACKWARD_INPUT, mb, r] >= upstream)
            model.Add(start[BACKWARD_WEIGHT, mb, r] >= end[BACKWARD_INPUT, mb, r])
    return start, end


def refine_with_cp_sat(
    times: StageTimes, greedy: Schedule, caps: tuple[int, ...], seed: int, deterministic_time_s: float
) -> Schedule | None:
    """A better order than ``greedy`` if CP-SAT finds one within the deterministic limit, else None."""
    pp, m = greedy.pp, greedy.num_microbatches
    unit_s, dur, p2p = _units(times)
    hint = simulate(greedy, times)
    horizon = int(hint.makespan_s / unit_s * 1.05) + 4 * pp * m + sum(p2p) * 2 * m + 10
    model = cp_model.CpModel()
    start, end = _build(model, pp, m, dur, p2p, caps, horizon)
    makespan = model.NewIntVar(0, horizon, "makespan")
    for r in range(pp):
        model.Add(makespan >= end[BACKWARD_WEIGHT, m - 1, r])
    model.Minimize(makespan)
    for rank in range(pp):
        for action, s, _ in hint.rank_timeline(rank):
            model.AddHint(start[action.kind, action.microbatch, rank], round(s / unit_s))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.max_deterministic_time = deterministic_time_s
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    orders = []
    for r in range(pp):
        keyed = [(solver.Value(start[k, mb, r]), KIND_ORDER[k], mb, k) for k in KIND_ORDER for mb in range(m)]
        orders.append(tuple(Action(k, mb, r) for _, _, mb, k in sorted(keyed)))
    schedule = Schedule("custom", pp, 1, m, tuple(orders))
    check_structure(schedule)
    return schedule
