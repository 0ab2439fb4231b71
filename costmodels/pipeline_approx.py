"""Closed-form pipeline pricing used to screen candidates before simulation.

The search prices thousands of candidates; building and simulating each
schedule's action list is exact but costs milliseconds to a second per new
shape. These closed forms (exact for uniform stages and no p2p on GPipe/1F1B
and on interleaved 1F1B with M % P == 0, Narayanan et al. SC21 Sec. 2.2; the
zero-bubble paper's (3M + P − 1)·T for ZB-H1, Qi et al. ICLR 2024 Sec. 3)
rank candidates; the top ones are then priced by the event simulator over the
exact action list, which alone decides the result.
"""

from __future__ import annotations

from costmodels.pipeline import PipelineResult
from costmodels.rank_grid import stage_to_rank
from costmodels.schedules.registry import SPLIT_BACKWARD_SCHEDULES
from costmodels.simulator import StageTimes


def fill_fraction(schedule: str, pp: int, v: int, num_microbatches: int) -> float:
    """Lower-bound bubble factor f in makespan >= M·W/P·(1 + f) for balanced stages."""
    if schedule in SPLIT_BACKWARD_SCHEDULES or pp == 1:
        return 0.0
    return (pp - 1) / (v * num_microbatches)


def approximate_makespan_s(schedule: str, pp: int, v: int, num_microbatches: int, times: StageTimes) -> float:
    """Steady state set by the busiest rank, fill and drain by the schedule's closed form."""
    m = num_microbatches
    n = times.num_stages
    chunk = [times.forward_s[j] + times.backward_input_s[j] + times.backward_weight_s[j] for j in range(n)]
    rank_work = [0.0] * pp
    for j in range(n):
        rank_work[stage_to_rank(j, pp, v, schedule)] += chunk[j]
    slowest = max(rank_work)
    p2p = 2 * sum(times.p2p_s)
    if pp == 1:
        return m * slowest
    if schedule in {"gpipe", "1f1b"}:
        return (m - 1) * max(chunk) + sum(chunk) + p2p
    split_idle = max(times.forward_s[j] + times.backward_input_s[j] - times.backward_weight_s[j] for j in range(n))
    if schedule in {"zb-h1", "zbv", "dualpipev", "interleaved-zb"}:
        return m * slowest + (pp - 1) * max(0.0, split_idle) / (1 if schedule == "zb-h1" else 2) + p2p
    if schedule == "zb-h2":
        return m * slowest + p2p
    rounds_penalty = max(1.0, pp / m)  # fewer microbatches than ranks cannot hide the fill
    return m * slowest + (pp - 1) * slowest / v * rounds_penalty + p2p


def approximate_inflight(schedule: str, rank: int, pp: int, v: int, num_microbatches: int) -> float:
    """Stage-microbatches alive at a rank's peak (upper-leaning closed forms; the simulator
    gives the exact count for the plans that are kept)."""
    m = num_microbatches
    if pp == 1:
        return 1.0 if schedule == "1f1b" else float(m)
    if schedule in {"gpipe", "looped-bfs"}:
        return float(m * v)
    if schedule in {"1f1b", "zb-h1"}:
        return float(min(pp - rank, m) if schedule == "1f1b" else min(pp, m))
    if schedule == "zb-h2":
        return float(min(2 * pp - 1, m))
    if schedule in {"zbv", "dualpipev"}:
        return float(min(2 * pp, 2 * m) + (2 if schedule == "dualpipev" else 0))
    warmup = (pp - rank - 1) * 2 + (v - 1) * pp + 1  # Megatron's interleaved warm-up
    extra = pp if schedule == "interleaved-zb" else 0
    return float(min(warmup + extra, m * v))


def approximate_pipeline(schedule: str, pp: int, v: int, num_microbatches: int, times: StageTimes) -> PipelineResult:
    """A ``PipelineResult`` from the closed forms (same interface as ``price_pipeline``)."""
    m = num_microbatches
    makespan = approximate_makespan_s(schedule, pp, v, m, times)
    busy = [0.0] * pp
    peak = [0.0] * pp
    for j in range(times.num_stages):
        r = stage_to_rank(j, pp, v, schedule)
        busy[r] += m * (times.forward_s[j] + times.backward_input_s[j] + times.backward_weight_s[j])
        peak[r] = max(peak[r], times.activation_bytes[j])
    inflight = [approximate_inflight(schedule, r, pp, v, m) for r in range(pp)]
    return PipelineResult(
        makespan_s=makespan,
        bubble_fraction=sum((makespan - b) / makespan for b in busy) / pp,
        busy_s=tuple(busy),
        idle_s=tuple(max(0.0, makespan - b) for b in busy),
        peak_inflight_microbatches=tuple(int(x) for x in inflight),
        peak_activation_bytes=tuple(n * a for n, a in zip(inflight, peak)),
    )
