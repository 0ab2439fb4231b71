"""A schedule nobody ships: search an action order for the plan's own stage times.

For one stage per rank (v = 1) and a per-rank cap on in-flight microbatches
(default ``pp``, 1F1B's peak, the zero-bubble paper's "1p" memory), two steps:

1. Greedy list scheduling, the zero-bubble authors' heuristic (Qi et al. ICLR
   2024, Sec. 3.2 and their ``zb.py``): walk time forward, always start the
   action that can start earliest; a rank prefers a ready B (critical path),
   then a W lagging too far, then a ready F within its warm-up window and
   memory cap, then fills idle time with W. A grid of warm-up windows, fill
   rules and W lags is tried, together with the shipped orders that fit the
   cap; the simulator prices each and the best is kept (never worse than shipped).
2. CP-SAT over the order (optional): interval per action, no overlap per rank,
   p2p-delayed precedences, a reservoir constraint per rank for the in-flight
   cap (+1 at F start, -1 at W end), minimise the makespan, hinted with the
   greedy order. Deterministic: one worker, fixed seed, a deterministic time
   limit (never wall time).

The result is exported with ``costmodels.schedules.torch_csv.format_torch_csv`` and
run by torch's pipeline CSV runtime (schedule name ``custom``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from costmodels.schedules.actions import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, Action, Schedule
from costmodels.schedules.generate import generate_schedule
from costmodels.schedules.registry import SCHEDULES
from costmodels.simulator import StageTimes, simulate
from profiles.errors import PlanError

# the runnable one-stage-per-rank schedules, in registry order: what a custom order must beat
SHIPPED_SINGLE_STAGE = tuple(
    n for n, s in SCHEDULES.items() if s.stages_per_rank == "one" and not s.simulated_only and s.generator is not None
)
CP_SAT_SEED = 20240101
CP_SAT_DETERMINISTIC_S = 10.0
CP_SAT_MAX_ACTIONS = 1500


@dataclass(frozen=True)
class CustomScheduleResult:
    """The searched order, its simulated makespan, and the best shipped schedule under the same cap."""

    schedule: Schedule
    makespan_s: float
    method: str
    baseline_name: str
    baseline_makespan_s: float

    @property
    def gain(self) -> float:
        """Relative step-time gain over the best shipped schedule (0.05 = 5 % shorter)."""
        return 1.0 - self.makespan_s / self.baseline_makespan_s


@dataclass(frozen=True)
class GreedyPolicy:
    """One point of the greedy grid. Rank ``r`` runs a forward only while it holds fewer than
    ``memory_caps[r]`` microbatches (forward done, W not done) and fewer than ``windows[r]``
    forwards are ahead of its backwards (the warm-up depth: 1F1B's ``pp - r``, ZB-H2's
    ``2 (pp - r) - 1``); ``fill`` and ``w_lag`` say when it runs a pending W."""

    memory_caps: tuple[int, ...]
    windows: tuple[int, ...]
    fill: str  # "eager": W whenever B/F are not ready now; "fit": only if it ends before them; "lazy": only when nothing else is known
    w_lag: tuple[int, ...] = ()  # W only while more than w_lag[r] are pending (ZB-H1: r), unless memory-bound


class _GreedyState:
    """Per-rank counters and known finish times of the greedy list scheduler."""

    def __init__(self, times: StageTimes, pp: int, m: int) -> None:
        self.times, self.pp, self.m = times, pp, m
        self.free_at = [0.0] * pp
        self.next_f, self.next_b = [0] * pp, [0] * pp
        self.pending_w: list[list[int]] = [[] for _ in range(pp)]
        self.held = [0] * pp
        self.f_end: list[dict[int, float]] = [{} for _ in range(pp)]
        self.b_end: list[dict[int, float]] = [{} for _ in range(pp)]
        self.orders: list[list[Action]] = [[] for _ in range(pp)]

    def f_ready(self, r: int) -> float | None:
        mb = self.next_f[r]
        if mb >= self.m:
            return None
        if r == 0:
            return 0.0
        end = self.f_end[r - 1].get(mb)
        return None if end is None else end + self.times.p2p_s[r - 1]

    def b_ready(self, r: int) -> float | None:
        mb = self.next_b[r]
        if mb >= self.next_f[r]:
            return None
        if r == self.pp - 1:
            return self.f_end[r][mb]
        end = self.b_end[r + 1].get(mb)
        return None if end is None else end + self.times.p2p_s[r]

    def run(self, r: int, kind: str, start: float) -> None:
        t = self.times
        if kind == FORWARD:
            mb, end = self.next_f[r], start + t.forward_s[r]
            self.next_f[r] += 1
            self.held[r] += 1
            self.f_end[r][mb] = end
        elif kind == BACKWARD_INPUT:
            mb, end = self.next_b[r], start + t.backward_input_s[r]
            self.next_b[r] += 1
            self.pending_w[r].append(mb)
            self.b_end[r][mb] = end
        else:
            mb, end = self.pending_w[r].pop(0), start + t.backward_weight_s[r]
            self.held[r] -= 1
        self.orders[r].append(Action(kind, mb, r))
        self.free_at[r] = end


def _choice(state: _GreedyState, r: int, policy: GreedyPolicy) -> tuple[float, str] | None:
    """Rank ``r``'s next (start time, kind), or None while none of its inputs is known.

    Priority at the rank's free time: a ready B (critical path); a W that lags more than
    ``w_lag[r]`` behind its B; a ready F under the cap; a W filling idle time per ``fill``
    (always when the cap blocks forwards); else wait for the earliest known input."""
    now, cap = state.free_at[r], policy.memory_caps[r]
    may_forward = state.held[r] < cap and state.next_f[r] - state.next_b[r] < policy.windows[r]
    f_t = state.f_ready(r) if may_forward else None
    b_t = state.b_ready(r)
    pending = len(state.pending_w[r])
    if b_t is not None and b_t <= now:
        return now, BACKWARD_INPUT
    if pending and policy.w_lag and pending > policy.w_lag[r]:
        return now, BACKWARD_WEIGHT
    if f_t is not None and f_t <= now:
        return now, FORWARD
    known = [t for t in (b_t, f_t) if t is not None]
    if pending:
        next_t = min(known, default=float("inf"))
        fits = now + state.times.backward_weight_s[r] <= next_t
        if {"eager": True, "fit": fits, "lazy": not known}[policy.fill] or state.held[r] >= cap:
            return now, BACKWARD_WEIGHT
    if known:
        start = min(known)
        return start, BACKWARD_INPUT if b_t == start else FORWARD
    return None


def greedy_order(times: StageTimes, pp: int, num_microbatches: int, policy: GreedyPolicy) -> Schedule:
    """List-schedule every F, B and W; the rank whose next action can start earliest goes first
    (ties: lower rank). Running an action on rank r only changes the choices of r - 1, r, r + 1."""
    state = _GreedyState(times, pp, num_microbatches)
    choices = [_choice(state, r, policy) for r in range(pp)]
    for _ in range(3 * pp * num_microbatches):
        known = [(c[0], r, c[1]) for r, c in enumerate(choices) if c is not None]
        if not known:
            raise PlanError(f"greedy schedule search is stuck with in-flight caps {policy.memory_caps}: raise the memory cap")
        start, r, kind = min(known)
        state.run(r, kind, start)
        for q in (r - 1, r, r + 1):
            if 0 <= q < pp:
                choices[q] = _choice(state, q, policy)
    return Schedule("custom", pp, 1, num_microbatches, tuple(tuple(o) for o in state.orders))


def policy_grid(pp: int, caps: Sequence[int]) -> list[GreedyPolicy]:
    """Warm-up windows like 1F1B (pp - r), ZB-H2 (2 (pp - r) - 1) or none, each with every
    W-filling rule and W lags of none, ZB-H1's ``r`` and ZB-H2's ``2 r``."""
    caps = tuple(caps)
    windows = (
        tuple(max(1, pp - r) for r in range(pp)),
        tuple(max(1, 2 * (pp - r) - 1) for r in range(pp)),
        caps,
    )
    lags = ((), tuple(range(pp)), tuple(2 * r for r in range(pp)))
    return [
        GreedyPolicy(caps, window, fill, lag)
        for window in dict.fromkeys(windows) for fill in ("fit", "eager", "lazy") for lag in lags
    ]


def _rank_caps(pp: int, max_inflight: int | Sequence[int] | None) -> tuple[int, ...]:
    if max_inflight is None:
        return tuple(pp for _ in range(pp))
    caps = (max_inflight,) * pp if isinstance(max_inflight, int) else tuple(max_inflight)
    if len(caps) != pp or any(c < 1 for c in caps):
        raise PlanError(f"in-flight cap must be one positive integer or one per rank ({pp}), got {max_inflight}")
    return caps


def best_shipped(times: StageTimes, pp: int, num_microbatches: int, caps: Sequence[int]) -> tuple[str, float]:
    """The fastest shipped one-stage-per-rank schedule whose in-flight peak fits ``caps``."""
    best: tuple[str, float] | None = None
    for name in SHIPPED_SINGLE_STAGE:
        try:
            result = simulate(generate_schedule(name, pp, 1, num_microbatches), times)
        except PlanError:
            continue
        fits = all(peak <= cap for peak, cap in zip(result.peak_inflight_microbatches, caps))
        if fits and (best is None or result.makespan_s < best[1]):
            best = (name, result.makespan_s)
    if best is None:
        raise PlanError(f"no shipped schedule fits an in-flight cap of {min(caps)} microbatches: raise the memory cap")
    return best


def best_greedy(times: StageTimes, pp: int, num_microbatches: int, caps: Sequence[int]) -> tuple[Schedule, float]:
    """The best order over ``policy_grid`` and the shipped orders that fit ``caps`` (priced by
    the simulator; the first of equals wins), so the search never returns worse than shipped."""
    candidates = []
    for policy in policy_grid(pp, caps):
        candidates.append(greedy_order(times, pp, num_microbatches, policy))
    for name in SHIPPED_SINGLE_STAGE:
        try:
            shipped = generate_schedule(name, pp, 1, num_microbatches)
        except PlanError:
            continue
        candidates.append(Schedule("custom", pp, 1, num_microbatches, shipped.ranks))
    best: tuple[Schedule, float] | None = None
    for schedule in candidates:
        result = simulate(schedule, times)
        fits = all(peak <= cap for peak, cap in zip(result.peak_inflight_microbatches, caps))
        if fits and (best is None or result.makespan_s < best[1] - 1e-12):
            best = (schedule, result.makespan_s)
    return best


def search_custom_schedule(
    times: StageTimes,
    pp: int,
    num_microbatches: int,
    max_inflight: int | Sequence[int] | None = None,
    use_cp_sat: bool = True,
    deterministic_time_s: float = CP_SAT_DETERMINISTIC_S,
) -> CustomScheduleResult:
    """Search an F/B/W order for one stage per rank under a per-rank in-flight cap (default
    ``pp``); returns it with the best shipped schedule that fits the same cap."""
    if times.num_stages != pp:
        raise PlanError(f"custom schedules are searched for one stage per rank: got {times.num_stages} stages for pp={pp}")
    if num_microbatches < 1:
        raise PlanError("num_microbatches must be >= 1")
    caps = _rank_caps(pp, max_inflight)
    baseline_name, baseline_s = best_shipped(times, pp, num_microbatches, caps)
    schedule, makespan = best_greedy(times, pp, num_microbatches, caps)
    method = "greedy"
    if use_cp_sat and 3 * pp * num_microbatches <= CP_SAT_MAX_ACTIONS:
        from planner.search.custom_cpsat import refine_with_cp_sat

        refined = refine_with_cp_sat(times, schedule, caps, CP_SAT_SEED, deterministic_time_s)
        if refined is not None:
            refined_s = simulate(refined, times).makespan_s
            if refined_s < makespan - 1e-12:
                schedule, makespan, method = refined, refined_s, "greedy+cp-sat"
    return CustomScheduleResult(schedule, makespan, method, baseline_name, baseline_s)
