"""Pricing a pipeline schedule: the interface the estimate and the search call.

``price_pipeline`` takes per-virtual-stage times and activation sizes and
returns makespan, bubble fraction and per-rank in-flight microbatches and
activation peaks. This first version is analytic (closed forms for uniform
stages, Narayanan et al. SC21 Sec. 2.2); the schedule engine replaces its body
with the event simulator over the exact action list, keeping the signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodels.rank_grid import stage_to_rank


@dataclass(frozen=True)
class StageTimes:
    """Per virtual stage, per microbatch (index = virtual stage in pipeline order).

    ``p2p_s[j]`` is the time to move the boundary activation (or its gradient)
    from stage j to stage j+1; it has ``len(forward_s) - 1`` entries.
    ``activation_bytes[j]`` is held from a microbatch's F on stage j until its
    W (or its full backward when the schedule does not split B and W).
    """

    forward_s: tuple[float, ...]
    backward_input_s: tuple[float, ...]
    backward_weight_s: tuple[float, ...]
    activation_bytes: tuple[float, ...]
    p2p_s: tuple[float, ...]

    @property
    def num_stages(self) -> int:
        return len(self.forward_s)


@dataclass(frozen=True)
class PipelineResult:
    """Simulator outputs; ``per rank`` lists are indexed by pipeline rank (DESIGN.md)."""

    makespan_s: float
    bubble_fraction: float
    busy_s: tuple[float, ...]
    idle_s: tuple[float, ...]
    peak_inflight_microbatches: tuple[int, ...]
    peak_activation_bytes: tuple[float, ...]


def _analytic_inflight(schedule: str, rank: int, pp: int, v: int, num_microbatches: int) -> int:
    """Stage-microbatches whose activations rank ``rank`` holds at peak (closed forms).

    GPipe holds all M; 1F1B holds pp - rank (Narayanan et al. 2021, Sec. 2.2.1);
    Megatron's interleaved warm-up holds (pp - rank - 1) * 2 + (v - 1) * pp + 1
    stage-microbatches (megatron/core/pipeline_parallel/schedules.py).
    """
    m = num_microbatches
    if schedule == "gpipe" or pp == 1 and schedule != "1f1b":
        return m * v
    if v == 1:
        return min(pp - rank, m)
    return min((pp - rank - 1) * 2 + (v - 1) * pp + 1, m * v)


def price_pipeline(schedule: str, pp: int, v: int, num_microbatches: int, times: StageTimes) -> PipelineResult:
    """Analytic pricing: the slowest chunk sets the steady state, the sum of
    chunk times along the pipe sets fill and drain.

    For uniform stages with no p2p this is exactly (M + P - 1)(F + B) for
    1F1B/GPipe and (v M + P - 1)(f + b) for interleaved, bubble (P - 1)/(v M + P - 1).
    """
    m = num_microbatches
    stages = times.num_stages
    chunk = [times.forward_s[j] + times.backward_input_s[j] + times.backward_weight_s[j] for j in range(stages)]
    rank_work = [0.0] * pp
    for j in range(stages):
        rank_work[stage_to_rank(j, pp, v, schedule)] += chunk[j]
    slowest_rank = max(rank_work)
    p2p = 2 * sum(times.p2p_s)
    if v == 1:
        makespan = (m - 1) * slowest_rank + sum(chunk) + p2p
    else:
        makespan = m * slowest_rank + (pp - 1) * slowest_rank / v + p2p
    busy = tuple(m * w for w in rank_work)
    idle = tuple(max(0.0, makespan - b) for b in busy)
    bubble = sum((makespan - b) / makespan for b in busy) / pp
    inflight = []
    act_peak = []
    for r in range(pp):
        n = _analytic_inflight(schedule, r, pp, v, m)
        inflight.append(n)
        own = [times.activation_bytes[j] for j in range(stages) if stage_to_rank(j, pp, v, schedule) == r]
        act_peak.append(n * max(own))
    return PipelineResult(makespan, bubble, busy, idle, tuple(inflight), tuple(act_peak))
