"""Lower bounds on a pipeline's simulated makespan: what the search may prune with.

The search returns the k best plans under the exact price (the event simulator
over the schedule's action list, ``costmodels.simulator``); it may skip a
candidate only when a true lower bound of that price cannot beat the k-th best
exact price found so far (DESIGN.md, Search). The bounds here hold for every
action list the simulator accepts, by its model alone: a rank runs its list in
order, one action at a time; an F on stage s starts after the F of the same
microbatch on stage s - 1 plus that boundary's p2p time (none between two stages
of one rank); a B or full backward on stage s starts after the B/BW of stage
s + 1 plus p2p (on the last stage, after its own F); a W follows its own B on
the same rank. Every F of a rank precedes its own B/BW on that rank.

Each bound is a sum of stage times with non-negative coefficients, hence monotone:
evaluated on times no larger than the estimate's (layers only, no p2p, no ZeRO
gathers) it still bounds the estimate's makespan, and the step time, which adds
non-negative terms to the makespan (``costmodels.estimate``), from below. Where the
stack overlaps consecutive steps (a post-validated optimizer step) the step is a
period that may be shorter than one step's makespan (``costmodels.steady_state``):
with ``steps_overlap`` both bounds return the busiest rank's work alone, which every
period still holds.

- ``makespan_lower_bound_s``: for given stage times. Per rank r, whose lowest stage
  is k: it cannot start before microbatch 0's forward reaches stage k (``head``),
  then works ``busy_r``; without a split backward, its last full backward still
  has to travel back to stage 0 (``tail``). With split backward, its last B comes
  after all its F and B passes and then travels to stage 0, where that
  microbatch's W still runs. And one microbatch's whole forward-backward chain
  follows the other M - 1 forwards of any one stage (on its rank, one at a time):
  of the stage with the slowest forward. For 1F1B with uniform stages and
  no p2p this is exactly (M + P - 1)(F + B + W) (Narayanan et al. 2019), for
  interleaved 1F1B with M % P == 0 exactly (M + (P - 1)/v)·v(F + B + W) (Narayanan
  et al. SC21, Sec. 2.2), for ZB-H1 with F = B = W = T exactly (3M + P - 1)·T
  (Qi et al. ICLR 2024, Sec. 3).
- ``any_cut_makespan_lower_bound_s``: for every cut of L identical layers into
  pp·v stages of at least one layer each, except the end stages, which may hold the
  embedding or the head alone (Megatron-LM's account-for-embedding/loss split): the
  busiest rank's work, the mean over ranks of the per-rank bound (each stage between
  the first and rank r holds at least one layer), and the critical path (after the
  M - 1 other forwards of stage 0, or of stage 1 where stage 0 holds no layer).
- ``bound_pipeline``: a ``PipelineResult`` whose makespan is the bound and whose
  activation peaks are the closed-form in-flight counts (``peak_inflight``) times
  the rank's smallest stage; passed to ``estimate`` as its pricer it gives a lower
  bound of the step time and of each rank's memory, composed by the estimate itself.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from costmodels.layer_costs import PassTimes
from costmodels.pipeline import PipelineResult
from costmodels.rank_grid import stage_to_rank
from costmodels.schedules.generate import generate_schedule
from costmodels.schedules.registry import schedule_spec
from costmodels.simulator import StageTimes, peak_with_held, schedule_graph


@lru_cache(maxsize=4096)
def stages_by_rank(schedule: str, pp: int, v: int) -> tuple[tuple[int, ...], ...]:
    """The virtual stages each pipeline rank holds, ascending (the schedule's placement)."""
    ranks: list[list[int]] = [[] for _ in range(pp)]
    for stage in range(pp * v):
        ranks[stage_to_rank(stage, pp, v, schedule)].append(stage)
    return tuple(tuple(r) for r in ranks)


@lru_cache(maxsize=65536)
def peak_inflight(schedule: str, pp: int, v: int, num_microbatches: int) -> tuple[int, ...]:
    """Microbatch-stages each rank holds at its peak: the registry's closed form (equal to the
    simulator's count on the generated lists, tested over a grid), else counted on the lists."""
    closed_form = schedule_spec(schedule).peak_inflight
    if closed_form is not None:
        return tuple(closed_form(r, pp, v, num_microbatches) for r in range(pp))
    return schedule_graph(generate_schedule(schedule, pp, v, num_microbatches)).peak_inflight


def _prefix(values: list[float]) -> list[float]:
    """``out[k]`` = sum of ``values[:k]``."""
    out = [0.0]
    for x in values:
        out.append(out[-1] + x)
    return out


def rank_busy_s(times: StageTimes, by_rank: tuple[tuple[int, ...], ...], num_microbatches: int) -> tuple[float, ...]:
    """Each rank's compute over the step: its stages' F + B + W for every microbatch (exact: the simulator's busy time)."""
    f, b, w = times.forward_s, times.backward_input_s, times.backward_weight_s
    return tuple(num_microbatches * sum(f[s] + b[s] + w[s] for s in own) for own in by_rank)


def makespan_lower_bound_s(
    schedule: str, pp: int, v: int, num_microbatches: int, times: StageTimes, steps_overlap: bool = False,
) -> float:
    """A lower bound of ``simulate(generate_schedule(schedule, pp, v, M), times).makespan_s`` (module docstring).
    ``steps_overlap``: of the period of overlapped steps instead (``costmodels.steady_state``), which only the
    busiest rank's work bounds."""
    m, stages = num_microbatches, times.num_stages
    f, b, w = times.forward_s, times.backward_input_s, times.backward_weight_s
    by_rank = stages_by_rank(schedule, pp, v)
    busy_s = rank_busy_s(times, by_rank, m)
    if steps_overlap:
        return max(busy_s)
    owner = [0] * stages
    for rank, own in enumerate(by_rank):
        for s in own:
            owner[s] = rank
    hop = [times.p2p_s[j] if owner[j] != owner[j + 1] else 0.0 for j in range(stages - 1)]
    head = _prefix([f[j] + hop[j] for j in range(stages - 1)])  # head[k]: microbatch 0 reaches stage k
    grad = _prefix([b[j] + hop[j] for j in range(stages - 1)])  # B chain from stage k down to stage 0
    full = _prefix([b[j] + w[j] + hop[j] for j in range(stages - 1)])  # BW chain from stage k down
    split = schedule_spec(schedule).split_backward
    last = stages - 1
    chain = head[last] + f[last] + b[last] + (grad[last] + w[0] if split else w[last] + full[last])
    best = (m - 1) * max(f) + chain  # the last F of the stage with the slowest forward, then its microbatch's chain
    for own, busy in zip(by_rank, busy_s):
        k = own[0]
        if not split:
            best = max(best, head[k] + busy + full[k])
            continue
        forward_and_input = m * sum(f[s] + b[s] for s in own)
        drain = grad[k] + w[0] if k > 0 else 0.0
        best = max(best, head[k] + busy, head[k] + forward_and_input + drain)
    return best


def any_cut_makespan_lower_bound_s(
    schedule: str, pp: int, v: int, num_microbatches: int, layer: PassTimes, embedding: PassTimes, head: PassTimes,
    num_layers: int, all_layers: PassTimes | None = None, steps_overlap: bool = False,
) -> float:
    """A lower bound of the makespan for every split of ``num_layers`` identical layers (``layer``
    per microbatch each) into pp·v stages, the embedding on the first stage and ``head`` on the last,
    every stage holding at least one layer except the two end stages, which may hold the embedding
    or the head alone (``costmodels.layout.end_stage_floors``; module docstring). Layers of different
    kinds (a model's leading dense layers before its mixture-of-experts ones): ``layer`` no slower
    than any of them in F, B and W, and ``all_layers`` the sum over every layer; each term below then
    still bounds. ``steps_overlap``: a bound of the period of overlapped steps (``costmodels.steady_state``),
    the busiest rank's work alone."""
    m, layers = num_microbatches, num_layers
    c, e, h = layer.total_s, embedding.total_s, head.total_s
    spec = schedule_spec(schedule)
    stages = pp * v
    end = 0 if stages > 1 else 1  # layers an end stage holds at least
    total = (all_layers.total_s if all_layers else layers * c) + e + h
    if spec.placement == "v" and pp > 1:  # rank 0 holds both ends, every other rank two middle stages
        end_ranks = max(e + h + 2 * end * c, 2 * c)
    else:  # rank 0's stages: the first and v - 1 middle ones; the last rank's: the last and v - 1 middle ones
        end_ranks = max(e + (v - 1 + end) * c, h + (v - 1 + end) * c)
    busiest = max(math.ceil(layers / pp) * c, total / pp, end_ranks)
    if steps_overlap:  # the period of overlapped steps: only the busiest rank's work bounds it
        return m * busiest
    # rank r's first forward waits for stages 0..r-1 (stage 0 perhaps the embedding alone), its last backward to get back
    if spec.split_backward:
        waits = [embedding.forward_s + (r - 1 + end) * layer.forward_s for r in range(1, pp)]
    else:
        waits = [e + (r - 1 + end) * c for r in range(1, pp)]
    mean_rank = (m * total + sum(waits)) / pp
    if all_layers:
        forward_backward = all_layers.forward_s + all_layers.backward_input_s + embedding.forward_s + embedding.backward_input_s
        layers_weight = all_layers.backward_weight_s
    else:
        forward_backward = layers * (layer.forward_s + layer.backward_input_s) + embedding.forward_s + embedding.backward_input_s
        layers_weight = layers * layer.backward_weight_s
    forward_backward += head.forward_s + head.backward_input_s
    split = spec.split_backward and pp > 1

    def critical(first_stage_layers: int) -> float:
        """One microbatch's whole chain after the other M - 1 forwards of stage 0 (with at least
        ``first_stage_layers``) or, where stage 0 holds the embedding alone, of stage 1 (at least a layer);
        then, with split backward, stage 0's W."""
        first_forward = embedding.forward_s + first_stage_layers * layer.forward_s
        repeated = first_forward if first_stage_layers else max(first_forward, layer.forward_s)
        weights = (embedding.backward_weight_s + first_stage_layers * layer.backward_weight_s if split
                   else layers_weight + embedding.backward_weight_s + head.backward_weight_s)
        return (m - 1) * repeated + forward_backward + weights

    return max(m * busiest, mean_rank, critical(1) if end else min(critical(0), critical(1)))


def held_alive_at_peak(schedule: str, pp: int, v: int, num_microbatches: int) -> bool:
    """Whether all of a rank's held bytes (``StageTimes.held_bytes``) are alive at a moment its in-flight count is
    at its peak, on every rank: one stage per rank, or ``ScheduleSpec.held_overlap_rounds`` rounds of microbatches."""
    rounds = schedule_spec(schedule).held_overlap_rounds
    return v == 1 or (rounds > 0 and num_microbatches >= rounds * pp)


def held_lower_bound(held_bytes: list[float], smallest_activation_bytes: float) -> float:
    """What a rank of several stages holds at its peak beyond its closed-form activation bound (in-flight count
    ``n`` times its smallest stage ``a``), of the held bytes of its stages (``StageTimes.held_bytes``), without
    its action order: when its first W or full backward starts, nothing has been freed yet, at least ``n - 1``
    stage-microbatches are in flight (``n`` in every schedule of the registry but dualpipev, whose last warm-up
    forward comes after its first W: ``tests/costmodels/test_pipeline_bound.py``) and that stage's held bytes
    are allocated, so the peak is at least ``(n - 1) a + min(held)``: ``max(0, min(held) - a)`` above ``n a``."""
    return max(0.0, min(held_bytes) - smallest_activation_bytes)


def bound_pipeline(schedule: str, pp: int, v: int, num_microbatches: int, times: StageTimes) -> PipelineResult:
    """A pricer for ``estimate`` that simulates nothing: the makespan is ``makespan_lower_bound_s``,
    busy time is exact, and each rank's activation peak is its closed-form in-flight count times
    its smallest stage (exact with one stage per rank but for a split backward's retained bytes, which it
    leaves out; a lower bound otherwise). Held state
    (``StageTimes.held_bytes``, alive from a stage's first W or full backward to its last): all of the rank's
    where they are all alive while its in-flight count peaks (``held_alive_at_peak``: one stage per rank, no
    activation being freed before that first W or full backward; or enough microbatches); otherwise, from the
    rank's action order (short there: fewer than a few rounds of microbatches), the held bytes at the peak of its
    exact running sum (``costmodels.simulator.peak_with_held``) less what that peak's activations fall short of
    the closed-form bound, never below 0. Either way the sum stays at most the exact peak (chimera aside, which
    the search never prices: ``stages_by_rank`` leaves out its second direction's stages)."""
    m = num_microbatches
    by_rank = stages_by_rank(schedule, pp, v)
    makespan = makespan_lower_bound_s(schedule, pp, v, m, times)
    busy = rank_busy_s(times, by_rank, m)
    counts = peak_inflight(schedule, pp, v, m)
    smallest = [min(times.activation_bytes[s] for s in own) for own in by_rank]
    peaks = tuple(n * a for n, a in zip(counts, smallest))
    held = ()
    if times.held_bytes and held_alive_at_peak(schedule, pp, v, m):
        held = tuple(sum(times.held_bytes[s] for s in own) for own in by_rank)
    elif times.held_bytes:
        exact_act, exact_held = peak_with_held(generate_schedule(schedule, pp, v, m),
                                               np.asarray(times.activation_bytes, dtype=float), times.retained(), *times.held())
        held = tuple(max(0.0, a + h - peak) for a, h, peak in zip(exact_act, exact_held, peaks))
    return PipelineResult(
        makespan_s=makespan,
        bubble_fraction=sum((makespan - x) / makespan for x in busy) / pp if makespan > 0 else 0.0,
        busy_s=busy,
        idle_s=tuple(max(0.0, makespan - x) for x in busy),
        peak_inflight_microbatches=counts,
        peak_activation_bytes=peaks,
        peak_held_bytes=held,
    )
