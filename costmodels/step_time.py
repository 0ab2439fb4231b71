"""The step time, composed explicitly from its exposed parts (DESIGN.md, ``Estimate.breakdown``).

A step runs the pipeline (the event simulator over the exact action list: every rank's F, B
and W with what they contain), then each rank's exposed gradient reduce from the end of its
own last action, then the optimizer step, which every rank takes after all reduces are done
(gradient clipping's global norm synchronises them: Megatron-LM ``clip_grad`` 1.0 by default,
torchtitan ``max_norm`` 1.0), plus the exposed part of the parameter gather that opens the next
step and a fixed per-step overhead:

    step = max_r(end_r + reduce_exposed_r) + max_r(optimizer_r) + gather_delay + step_overhead

Where the stack post-validates its optimizer step (``StackSpec.optimizer_post_validation``: no
pipeline-wide synchronisation) consecutive steps overlap and the step is their steady-state period
(``costmodels.steady_state``), each rank's gap (exposed reduce, optimizer, exposed gather and the
per-step overhead: ``step_gap_s``) inside it; a bounding pricer gets the work bound max_r(busy_r + gap_r).

``gather_delay`` = max_r(gather_exposed_r): how long the step's start waits for parameters
(``costmodels.data_parallel``: a stage's first forward that starts late leaves its gather
time). Where ranks time-share a node's cores the work bound
(``costmodels.processor_sharing.timeshared_step_s``: the same action lists under processor sharing) may exceed the pipeline's: the step is the larger.

A pricer that bounds the pipeline rather than simulating it (no per-rank times:
``costmodels.pipeline_bound``) gets a lower bound of the step: the makespan bound plus the
smallest exposed reduce of any rank and the lower bounds of the exposed traffic
(``costmodels.data_parallel.rank_sync``), never more than the simulated step.

The breakdown is the critical rank's (the one whose reduce finishes last; where steps overlap, the one
with the most work and gap, whose bubble is what the period leaves it idle):
compute + recompute + tp_comm + cp_comm + ep_comm + pp_comm + dp_comm + bubble + optimizer + overhead
= step exactly, where compute is the rank's busy time less what its actions spend on recompute, TP
communication, the context-parallel ring's transfers beyond its blocks, the expert all-to-alls,
ZeRO-3 gathers, blocking p2p and per-action overhead (plus any time-sharing surplus), and bubble
is its idle time up to its last action's end (where steps overlap: within the period). Ranks that
time-share a node's cores (CPU clusters) compare their one-step work bound with the period as with the
makespan. Time hidden behind compute
is reported apart in ``overlapped`` (seconds per step, only the terms that hide something):
``dp_comm_s`` (gradient reduce), ``param_gather_s`` (ZeRO-1/2 gather), ``zero3_gather_s``
(ZeRO-3 per-microbatch gathers), ``tp_comm_s`` (TP collectives under the GEMMs), ``cp_comm_s``
(ring transfers under the ring's blocks), ``pp_comm_s`` (non-blocking p2p sends: their delays on
the receivers are in the bubble). Hidden traffic still slows the compute beside it
(``costmodels.overlap.contention_s``): that part counts as exposed (``dp_comm_s``, and for hidden TP
collectives, ring transfers and all-to-alls ``tp_comm_s``, ``cp_comm_s``, ``ep_comm_s``) and is not
in ``overlapped``.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodels.data_parallel import RankSync
from costmodels.layer_costs import PassTimes
from costmodels.pipeline import PipelineResult
from profiles.schema import Breakdown


@dataclass(frozen=True)
class RankWork:
    """One pipeline rank's share of a step: its stages' passes summed per microbatch (with the
    labelled parts), the time its actions hide per microbatch by term (``hidden``), its
    once-per-step DP traffic and its optimizer step."""

    passes: PassTimes
    hidden: dict[str, float]
    sync: RankSync
    optimizer_s: float


@dataclass(frozen=True)
class StepTime:
    step_s: float
    critical_rank: int
    breakdown: Breakdown


def step_gap_s(work: RankWork, step_overhead_s: float) -> float:
    """What a rank does between its last action and its next step's first where steps overlap
    (``costmodels.steady_state``): its exposed reduce, its optimizer step, its exposed parameter
    gather and the per-step overhead."""
    return work.sync.grad_reduce_exposed_s + work.optimizer_s + work.sync.param_gather_exposed_s + step_overhead_s


def compose_step(
    result: PipelineResult, ranks: list[RankWork], num_microbatches: int, step_overhead_s: float,
    timeshared_s: float = 0.0, period_s: float | None = None,
) -> StepTime:
    """The step time and its breakdown (module docstring). ``period_s``: the step where consecutive
    steps overlap (``costmodels.steady_state``, gaps from ``step_gap_s``); the critical rank is then
    the one with the most work and gap, and its bubble what the period leaves it idle."""
    spans = [result.rank_span_s(r) for r in range(len(ranks))]
    if period_s is not None:
        critical = max(range(len(ranks)), key=lambda r: (result.busy_s[r] + step_gap_s(ranks[r], 0.0), -r))
        gather_delay = ranks[critical].sync.param_gather_exposed_s
        optimizer_s = ranks[critical].optimizer_s
        work_s = result.busy_s[critical] + step_gap_s(ranks[critical], 0.0)
        idle_s = max(0.0, period_s - step_overhead_s - work_s)  # >= 0 but for rounding: the period is >= the work bound
        core_s = work_s + idle_s
        gathers = ranks[critical].sync.param_gather_s
    else:
        if result.rank_end_s:
            ready = [end + work.sync.grad_reduce_exposed_s for (_, end), work in zip(spans, ranks)]
            critical = max(range(len(ranks)), key=lambda r: (ready[r], -r))
        else:
            # a bounding pricer: every rank is taken to end with the makespan (bound), and only the
            # smallest exposed reduce counts: the rank that really ends last exposes at least that
            critical = min(range(len(ranks)), key=lambda r: (ranks[r].sync.grad_reduce_exposed_s, r))
            ready = [result.makespan_s + ranks[critical].sync.grad_reduce_exposed_s] * len(ranks)
        gather_delay = max(work.sync.param_gather_exposed_s for work in ranks)
        optimizer_s = max(work.optimizer_s for work in ranks)
        core_s = ready[critical] + optimizer_s + gather_delay
        idle_s = spans[critical][1] - result.busy_s[critical]
        gathers = max(w.sync.param_gather_s for w in ranks)
    surplus = max(0.0, timeshared_s - core_s)
    mine = ranks[critical].passes.scaled(num_microbatches)
    busy = result.busy_s[critical]
    labelled = (mine.tp_comm_s + mine.recompute_s + mine.dp_comm_s + mine.pp_comm_s + mine.overhead_s + mine.cp_comm_s
                + mine.ep_comm_s + mine.offload_s)
    sync = ranks[critical].sync
    overlapped = {k: num_microbatches * v for k, v in ranks[critical].hidden.items()}
    overlapped["tp_comm_s"] = overlapped.get("tp_comm_s", 0.0) + mine.overlapped_tp_comm_s
    overlapped["cp_comm_s"] = mine.overlapped_cp_comm_s
    overlapped["ep_comm_s"] = mine.overlapped_ep_comm_s
    overlapped["dp_comm_s"] = sync.grad_reduce_s - sync.grad_reduce_exposed_s
    overlapped["param_gather_s"] = max(0.0, gathers - gather_delay)
    breakdown = Breakdown(
        compute_s=busy - labelled + surplus,
        recompute_s=mine.recompute_s,
        tp_comm_s=mine.tp_comm_s,
        pp_comm_s=mine.pp_comm_s,
        dp_comm_s=mine.dp_comm_s + sync.grad_reduce_exposed_s + gather_delay,
        bubble_s=idle_s,
        optimizer_s=optimizer_s,
        overhead_s=mine.overhead_s + step_overhead_s,
        cp_comm_s=mine.cp_comm_s,
        ep_comm_s=mine.ep_comm_s,
        offload_s=mine.offload_s,
        overlapped={k: v for k, v in sorted(overlapped.items()) if v > 0},
    )
    return StepTime(step_s=core_s + surplus + step_overhead_s, critical_rank=critical, breakdown=breakdown)


def exposed_sum_s(breakdown: Breakdown) -> float:
    """The exposed parts of a breakdown, which add up to the step time."""
    b = breakdown
    return (b.compute_s + b.recompute_s + b.tp_comm_s + b.pp_comm_s + b.dp_comm_s + b.bubble_s + b.optimizer_s
            + b.overhead_s + b.cp_comm_s + b.ep_comm_s + b.offload_s)
