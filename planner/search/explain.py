"""Why a plan wins: what binds it (memory, bubble, communication) and the nearest
rejected alternatives, each with the reason it lost or failed.

Neighbours are the configurations one step away along one axis (tp, pp, mbs,
v, schedule, recompute, sequence parallelism, ZeRO), each with its own optimal
cut points, so the comparison is between plans the search could have chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from costmodels.rules import recompute_violations, schedule_violations, tp_violations, zero_violations
from planner.search.branch_and_bound import Candidate, Scored, Searcher
from planner.search.space import RECOMPUTE_KINDS, SEARCHED_ZERO
from profiles.schema import Estimate, ModelSpec, ParallelConfig
from profiles.stack_schema import StackSpec


@dataclass(frozen=True)
class Alternative:
    label: str
    step_time_s: float | None
    reason: str


def candidate_of(cfg: ParallelConfig) -> Candidate:
    return Candidate(cfg.tp, cfg.pp, cfg.dp, cfg.mbs, cfg.v, cfg.schedule, cfg.recompute_label,
                     cfg.sequence_parallel, cfg.zero, cfg.num_microbatches)


def binding_constraints(est: Estimate) -> list[str]:
    """Plain statements of what limits this plan."""
    lines = []
    worst = max(est.peak_memory_gib)
    rank = est.peak_memory_gib.index(worst)
    headroom = 1 - worst / est.memory_limit_gib
    if headroom < 0:
        lines.append(f"memory: does not fit, rank {rank} needs {worst:.1f} GiB > {est.memory_limit_gib:.1f} GiB")
    elif headroom < 0.10:
        lines.append(f"memory binds: rank {rank} uses {worst:.1f} of {est.memory_limit_gib:.1f} GiB ({100 * headroom:.0f}% free)")
    b = est.breakdown
    step = est.step_time_s
    shares = {
        "pipeline bubble": b.bubble_s,
        "tensor-parallel communication": b.tp_comm_s,
        "exposed data-parallel communication": b.dp_comm_s,
        "recomputation": b.recompute_s,
        "pipeline p2p": b.pp_comm_s,
    }
    for name, seconds in sorted(shares.items(), key=lambda kv: -kv[1]):
        if seconds / step >= 0.05:
            lines.append(f"{name}: {seconds:.3f} s ({100 * seconds / step:.0f}% of the step)")
    if not lines:
        lines.append("compute binds: no overhead above 5% of the step")
    return lines


def _neighbours(c: Candidate, gpus: int, global_batch: int, model: ModelSpec, stack: StackSpec) -> list[Candidate]:
    out: list[Candidate] = []

    def with_degrees(tp: int, pp: int) -> None:
        if gpus % (tp * pp) or tp_violations(model, tp):
            return
        dp = gpus // (tp * pp)
        if global_batch % (dp * c.mbs):
            return
        out.append(replace(c, tp=tp, pp=pp, dp=dp, num_microbatches=global_batch // (dp * c.mbs),
                           sequence_parallel=c.sequence_parallel and tp > 1, zero=c.zero if dp > 1 else 0))

    for tp in (c.tp // 2, c.tp * 2):
        if tp >= 1:
            with_degrees(tp, c.pp)
    for pp in (c.pp // 2, c.pp * 2):
        if pp >= 1:
            with_degrees(c.tp, pp)
    for mbs in (c.mbs // 2, c.mbs * 2):
        if mbs >= 1 and global_batch % (c.dp * mbs) == 0:
            out.append(replace(c, mbs=mbs, num_microbatches=global_batch // (c.dp * mbs)))
    for kind in RECOMPUTE_KINDS:
        if kind != c.recompute:
            out.append(replace(c, recompute=kind))
    if c.tp > 1:
        out.append(replace(c, sequence_parallel=not c.sequence_parallel))
    if c.dp > 1:
        out += [replace(c, zero=z) for z in SEARCHED_ZERO if z != c.zero]
    if c.pp > 1:
        if c.v > 1:
            out.append(replace(c, schedule="1f1b", v=1))
            out += [replace(c, v=v) for v in (c.v - 1, c.v + 1) if v >= 2]
        else:
            out.append(replace(c, schedule="interleaved-1f1b", v=2))
            out.append(replace(c, schedule="gpipe" if c.schedule != "gpipe" else "1f1b"))
    return [
        n for n in out
        if (n.pp == 1 or not schedule_violations(n.schedule, n.pp, n.v, n.num_microbatches, stack))
        and not zero_violations(n.zero, n.pp, n.schedule, stack) and not recompute_violations(n.recompute, n.pp, n.schedule, stack)
        and not (n.sequence_parallel and not stack.sequence_parallel)
    ]


def nearest_alternatives(searcher: Searcher, winner: Scored, limit: int = 6) -> list[Alternative]:
    """Single-axis neighbours of the winner, priced with their own best cut points."""
    base = winner.estimate.step_time_s
    alts: list[tuple[float, Alternative]] = []
    for n in sorted(set(_neighbours(winner.candidate, searcher.gpus, searcher.train.global_batch, searcher.model, searcher.stack))):
        if n.pp * n.v > searcher.model.num_layers or n.pp > searcher.model.num_layers:
            continue
        scored = searcher.price(n)
        if scored is None:
            continue
        est = scored.estimate
        if not est.fits:
            worst = max(est.peak_memory_gib)
            alts.append((float("inf"), Alternative(n.label(), est.step_time_s,
                                                   f"does not fit: {worst:.1f} GiB > {est.memory_limit_gib:.1f} GiB")))
            continue
        delta = 100 * (est.step_time_s / base - 1)
        alts.append((est.step_time_s, Alternative(n.label(), est.step_time_s, _why_slower(winner.estimate, est, delta))))
    alts.sort(key=lambda t: (t[0], t[1].label))
    return [a for _, a in alts[:limit]]


def _why_slower(win: Estimate, other: Estimate, delta_pct: float) -> str:
    if abs(delta_pct) < 0.05:
        return "ties on step time; the canonical order (smaller degrees, cheaper options first) decides"
    if delta_pct < 0:
        return f"{-delta_pct:.1f}% faster but not chosen (outside the screened set)"
    diffs = {
        "bubble": other.breakdown.bubble_s - win.breakdown.bubble_s,
        "TP communication": other.breakdown.tp_comm_s - win.breakdown.tp_comm_s,
        "DP communication": other.breakdown.dp_comm_s - win.breakdown.dp_comm_s,
        "recomputation": other.breakdown.recompute_s - win.breakdown.recompute_s,
        "compute efficiency": other.breakdown.compute_s - win.breakdown.compute_s,
    }
    name, seconds = max(diffs.items(), key=lambda kv: kv[1])
    return f"{delta_pct:.1f}% slower, mostly {name} (+{seconds:.3f} s)"


def rationale(searcher: Searcher, winner: Scored, runner_up: Scored | None) -> list[str]:
    lines = [f"binds: {line}" for line in binding_constraints(winner.estimate)]
    if runner_up is not None:
        gap = 100 * (runner_up.estimate.step_time_s / winner.estimate.step_time_s - 1)
        lines.append(f"runner-up {runner_up.candidate.label()} is {gap:.1f}% slower")
    for alt in nearest_alternatives(searcher, winner):
        lines.append(f"rejected {alt.label}: {alt.reason}")
    return lines
