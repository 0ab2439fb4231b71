"""Pricing a pipeline schedule: the interface the estimate and the search call.

``price_pipeline`` takes per-virtual-stage times and activation sizes and
returns makespan, bubble fraction and per-rank in-flight microbatches and
activation peaks, by running the event simulator (``costmodels.simulator``)
over the schedule's exact action lists (``costmodels.schedules``): uneven
stages, first/last-stage extras and p2p time are all priced there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from costmodels.schedules.actions import BACKWARD_WEIGHT, FORWARD, FULL_BACKWARD, Schedule
from costmodels.schedules.generate import generate_schedule
from costmodels.simulator import KIND_CODE, SimulationResult, StageTimes, action_order, simulate


@dataclass(frozen=True)
class PipelineResult:
    """Simulator outputs; ``per rank`` lists are indexed by pipeline rank (DESIGN.md).
    ``rank_start_s``/``rank_end_s``: when each rank's first action starts and its last ends;
    ``stage_first_forward_s``/``stage_last_backward_s``, per virtual stage, when its first
    forward starts and its last W (or full backward) ends: its parameters are needed from
    the one and its gradients final at the other. Empty from a pricer that does not know
    (read as 0 and the makespan: ``rank_span_s``, ``stage_span_s``). ``peak_held_bytes``, per rank:
    the held state (``StageTimes.held_bytes``) alive at the peak whose activations are
    ``peak_activation_bytes``; empty where the stage times hold none."""

    makespan_s: float
    bubble_fraction: float
    busy_s: tuple[float, ...]
    idle_s: tuple[float, ...]
    peak_inflight_microbatches: tuple[int, ...]
    peak_activation_bytes: tuple[float, ...]
    rank_start_s: tuple[float, ...] = ()
    rank_end_s: tuple[float, ...] = ()
    stage_first_forward_s: tuple[float, ...] = ()
    stage_last_backward_s: tuple[float, ...] = ()
    peak_held_bytes: tuple[float, ...] = ()

    def rank_span_s(self, rank: int) -> tuple[float, float]:
        """(first start, last end) of ``rank``."""
        if not self.rank_end_s:
            return 0.0, self.makespan_s
        return self.rank_start_s[rank], self.rank_end_s[rank]

    def stage_span_s(self, stage: int, rank: int) -> tuple[float, float]:
        """(first forward start, last backward end) of virtual ``stage`` held by ``rank``."""
        if not self.stage_last_backward_s:
            return self.rank_span_s(rank)
        return self.stage_first_forward_s[stage], self.stage_last_backward_s[stage]


def price_pipeline(schedule: str, pp: int, v: int, num_microbatches: int, times: StageTimes) -> PipelineResult:
    """Simulate schedule ``schedule``'s exact per-rank action lists with ``times``.

    The action lists come from ``costmodels.schedules.generate_schedule`` (cached
    per (schedule, pp, v, M)); schedules without a B/W split (gpipe, 1f1b,
    interleaved-1f1b, looped-bfs) run one full backward of B + W. Uniform stages
    and no p2p give 1F1B's (M + P - 1)(F + B + W) makespan and (P - 1)/(M + P - 1)
    bubble, interleaved's (P - 1)/(v M + P - 1) when M % P == 0 (Narayanan et al.
    SC21, Sec. 2.2). Raises ``PlanError`` when the shape breaks the schedule's rules.
    """
    result = simulate(generate_schedule(schedule, pp, v, num_microbatches), times)
    return to_pipeline_result(result)


def price_actions(schedule: Schedule, times: StageTimes) -> PipelineResult:
    """Simulate an explicit action list (a ``custom`` schedule carried by the plan)."""
    return to_pipeline_result(simulate(schedule, times))


def to_pipeline_result(result: SimulationResult) -> PipelineResult:
    """The cost model's view of a simulation."""
    order = action_order(result.schedule)
    stage, first = order.stage, order.rank_starts
    forward = order.kind == KIND_CODE[FORWARD]
    releasing = (order.kind == KIND_CODE[BACKWARD_WEIGHT]) | (order.kind == KIND_CODE[FULL_BACKWARD])
    lengths = [len(r) for r in result.schedule.ranks]
    starts = [float(result.start_s[i]) if n else 0.0 for i, n in zip(first, lengths)]
    ends = [float(result.end_s[i + n - 1]) if n else 0.0 for i, n in zip(first, lengths)]
    stages = result.schedule.num_stages
    first_forward = np.full(stages, np.inf)
    np.minimum.at(first_forward, stage[forward], result.start_s[forward])
    last_backward = np.zeros(stages)
    np.maximum.at(last_backward, stage[releasing], result.end_s[releasing])
    return PipelineResult(
        makespan_s=result.makespan_s,
        bubble_fraction=result.bubble_fraction,
        busy_s=result.busy_s,
        idle_s=result.idle_s,
        peak_inflight_microbatches=result.peak_inflight_microbatches,
        peak_activation_bytes=result.peak_activation_bytes,
        rank_start_s=tuple(starts),
        rank_end_s=tuple(ends),
        stage_first_forward_s=tuple(float(x) for x in first_forward),
        stage_last_backward_s=tuple(float(x) for x in last_backward),
        peak_held_bytes=result.peak_held_bytes,
    )
