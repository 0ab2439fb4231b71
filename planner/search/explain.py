"""Why a plan wins: what binds it (memory, bubble, communication), the nearest rejected
alternatives with the reason each lost or failed, and warnings when the plan wastes the
machine or its model's shape keeps the stack's kernels off the tensor cores.

Neighbours are the configurations one step away along one axis (tp, cp, ep, pp, mbs, v, schedule,
recompute, sequence parallelism, ZeRO), each priced like a search candidate (its uniform
split and its min-max cut, the better one that fits), so the comparison is between plans
the search could have chosen.
"""

from __future__ import annotations

from dataclasses import replace

from costmodels.layer_costs import bytes_per_element
from costmodels.layout import min_layers_for
from costmodels.operators import TENSOR_CORE_ALIGNMENT_BYTES, unfused_attention_on_tensor_cores
from costmodels.rules import (
    config_violations,
    data_parallel_violations,
    expert_context_violations,
    parallelism_violations,
    recompute_violations,
    schedule_violations,
    tp_violations,
    zero_violations,
)
from planner.search.branch_and_bound import TOLERANCE, Candidate, Scored, Searcher
from planner.search.space import (
    CP_MICRO_BATCH,
    DEFAULT_SCHEDULES,
    MAX_MBS,
    MIN_CP_CHUNK,
    RECOMPUTE_KINDS,
    SEARCHED_ZERO,
    DegreeFilter,
    sp_regather_applies,
)
from profiles.schema import Alternative, Estimate, ModelSpec, ParallelConfig, TrainSpec
from profiles.stack_schema import StackSpec

# A part of the step worth naming in "what binds" (a twentieth of the step).
BINDING_SHARE = 0.05
# Thresholds of the waste warnings (issue 11, "plans that waste the machine").
WASTE_BUBBLE_FRACTION = 0.5  # more than half of the step idle in the pipeline
WASTE_MFU_SHARE = 1 / 3  # MFU under a third of what the same GPUs reach on the same layers when busy

# Where the terms that fell add up to more than this share of the largest rise, they are named beside
# it: the breakdowns are the critical rank's, and two plans' critical ranks can trade compute for
# bubble (DeepSeek-V3's pp 16 against pp 32: bubble +9.2 s, compute, all-to-all and recomputation
# -8.9 s together, a 0.8 % step difference).
OFFSET_SHARE = 0.5
OFFSET_NAMED_SHARE = 0.05  # a fall under a twentieth of the rise is not named
OFFSETS_NAMED = 3
EXPLAINED_SHARE = 0.1  # a largest rise under a tenth of the step-time gap does not explain it


def _g3(value: float) -> str:
    """Three significant digits, trailing zeros kept (67.0, 0.553, 143): the text people read."""
    return f"{value:#.3g}".rstrip(".") if abs(value) < 1e5 else f"{value:.3g}"


def candidate_of(cfg: ParallelConfig) -> Candidate:
    return Candidate(cfg.tp, cfg.cp, cfg.ep, cfg.expert_tp, cfg.pp, cfg.dp, cfg.mbs, cfg.v, cfg.schedule, cfg.recompute_label,
                     cfg.sequence_parallel, cfg.zero, cfg.num_microbatches, cfg.offload_layers, cfg.sp_regather)


def config_label(cfg: ParallelConfig) -> str:
    return candidate_of(cfg).label()


def binding_constraints(est: Estimate) -> list[str]:
    """Plain statements of what limits this plan (figures to three significant digits)."""
    lines = []
    worst = max(est.peak_memory_gib)
    rank = est.peak_memory_gib.index(worst)
    headroom = 1 - worst / est.memory_limit_gib
    if headroom < 0:
        lines.append(f"memory: does not fit, rank {rank} needs {_g3(worst)} GiB > {_g3(est.memory_limit_gib)} GiB")
    elif headroom < 0.10:
        lines.append(f"memory binds: rank {rank} uses {_g3(worst)} of {_g3(est.memory_limit_gib)} GiB ({100 * headroom:.0f}% free)")
    b = est.breakdown
    step = est.step_time_s
    shares = {
        "pipeline bubble": b.bubble_s,
        "tensor-parallel communication": b.tp_comm_s,
        "exposed data-parallel communication": b.dp_comm_s,
        "recomputation": b.recompute_s,
        "pipeline p2p": b.pp_comm_s,
        "expert-parallel all-to-all (token dispatch and combine)": b.ep_comm_s,
        "context-parallel ring (K/V transfers beyond the blocks' compute)": b.cp_comm_s,
        "activation offload (host copies beyond their layers' compute)": b.offload_s,
    }
    for name, seconds in sorted(shares.items(), key=lambda kv: -kv[1]):
        if seconds / step >= BINDING_SHARE:
            lines.append(f"{name}: {_g3(seconds)} s ({100 * seconds / step:.0f}% of the step)")
    hidden = b.overlapped.get("cp_comm_s", 0.0)
    if hidden / step >= BINDING_SHARE:
        lines.append(f"context-parallel ring: {_g3(hidden)} s of K/V transfers hidden behind the attention blocks"
                     + ("" if b.cp_comm_s / step >= BINDING_SHARE else ", the ring does not bind"))
    if not lines:
        lines.append("compute binds: no overhead above 5% of the step")
    return lines


def waste_warnings(cfg: ParallelConfig, est: Estimate, global_batch: int, steps_overlap: bool = False) -> list[str]:
    """Warnings for a plan that wastes the machine: a batch too small to fill the pipelines, a
    bubble over half the step, or an MFU under a third of what the GPUs reach when busy. Where
    ``steps_overlap`` (a post-validated optimizer step: ``costmodels.steady_state``) the bubble is the
    critical rank's idle share of the period, not DESIGN's ``bubble_fraction`` over one step's makespan.
    An MFU over 100 % is no waste but a price no GPU reaches: measured layer times (``--profile``) faster
    than the cluster's peak FLOP/s allow, taken on another device or with a broken timer."""
    warnings = []
    if est.mfu > 1:
        warnings.append(f"MFU {_g3(100 * est.mfu)}% is above the GPUs' peak: the layer times run faster than the "
                        "cluster's peak FLOP/s allow (a profile of another device, or a cluster whose peak is too low)")
    if cfg.pp > 1 and cfg.num_microbatches < cfg.pp:
        fill = cfg.dp * cfg.mbs * cfg.pp
        replicas = "the one replica" if cfg.dp == 1 else f"each of the {cfg.dp} data-parallel replicas"
        warnings.append(
            f"{_count(global_batch, 'sequence')} per step give {replicas} {_count(cfg.num_microbatches, 'microbatch')} "
            f"for {cfg.pp} pipeline stages, fewer than a pipeline can use: a global batch of {fill} or more keeps "
            "them busy (or use fewer GPUs)"
        )
    bubble = est.breakdown.bubble_s / est.step_time_s if steps_overlap else est.bubble_fraction
    if bubble > WASTE_BUBBLE_FRACTION:
        warnings.append(f"the pipeline bubble is {_g3(100 * bubble)}% of the step: the GPUs idle more than "
                        "they compute (more microbatches per replica, or fewer pipeline stages, shrink it)")
    busy = est.breakdown.compute_s
    if busy > 0:
        ceiling = est.mfu * est.step_time_s / busy
        # above 1 the critical rank (the breakdown's) computes less than its share: a stage cut that leaves
        # it nearly empty, whose idle time says nothing about the GPUs' rate
        if ceiling <= 1 and est.mfu < WASTE_MFU_SHARE * ceiling:
            warnings.append(f"MFU {_g3(100 * est.mfu)}% is under a third of the {_g3(100 * ceiling)}% these GPUs reach on "
                            "this model's layers while computing: most of the step is spent waiting")
    return warnings


def kernel_warnings(model: ModelSpec, stack: StackSpec, precision: str) -> list[str]:
    """Warnings for a model whose shape keeps its stack's kernels off the tensor cores: unfused
    attention at a head dim whose bytes are not a multiple of 16 runs its batched GEMMs on the CUDA
    cores (``costmodels.operators.unfused_attention_on_tensor_cores``, the rule the price takes;
    BigScience's tr11 at head dim 108 ran 30-40 % slower than at 144), whatever the parallel layout."""
    p = bytes_per_element(precision)
    if stack.kernels.attention != "unfused" or unfused_attention_on_tensor_cores(model, p):
        return []
    return [f"head dim {model.head_dim} x {p} B is not a multiple of {TENSOR_CORE_ALIGNMENT_BYTES} bytes: {stack.name}'s unfused "
            "attention runs its batched GEMMs on the CUDA cores (priced at the fp32 peak); a head dim that is a multiple of "
            f"{TENSOR_CORE_ALIGNMENT_BYTES // p} keeps them on the tensor cores"]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}es" if noun.endswith("ch") else f"{n} {noun}s"


def _neighbours(c: Candidate, gpus: int, train: TrainSpec, model: ModelSpec, stack: StackSpec,
                cp_degrees: frozenset[int] | None = None, expert_tp_folding: bool = True) -> list[Candidate]:
    """Single-axis neighbours of ``c`` that keep the rules; cp only among ``cp_degrees`` (None: any),
    the degrees the layer prices know (a profile's timed rings, as search's own space)."""
    global_batch = train.global_batch
    out: list[Candidate] = []

    def with_degrees(tp: int, pp: int, cp: int = c.cp, ep: int = c.ep, etp: int | None = None) -> None:
        etp = (tp if c.etp == c.tp else c.etp) if etp is None else etp  # a folded expert TP stays 1
        if gpus % (tp * cp * pp) or tp_violations(model, tp, etp):
            return
        dp = gpus // (tp * cp * pp)
        folded_ranks = tp if etp != tp else 1
        if global_batch % (dp * c.mbs) or (dp * cp * folded_ranks) % ep or (cp > 1 and c.mbs > 1):
            return
        # one stage has no pipeline schedule: its neighbour at pp 1 runs 1f1b (v 1), as search's pp-1 candidates
        schedule, v = (c.schedule, c.v) if pp > 1 else ("1f1b", 1)
        out.append(replace(c, tp=tp, cp=cp, ep=ep, etp=etp, pp=pp, dp=dp, num_microbatches=global_batch // (dp * c.mbs),
                           sequence_parallel=(c.sequence_parallel or etp != tp) and tp > 1, zero=c.zero if dp * cp > 1 else 0,
                           schedule=schedule, v=v))

    for tp in (c.tp // 2, c.tp * 2):
        if tp >= 1:
            with_degrees(tp, c.pp)
    for pp in (c.pp // 2, c.pp * 2):
        if pp >= 1:
            with_degrees(c.tp, pp)
    for cp in (c.cp // 2, c.cp * 2):
        if cp >= 1 and stack.context_parallel and (cp_degrees is None or cp in cp_degrees):
            with_degrees(c.tp, c.pp, cp=cp)
    if model.is_moe and stack.expert_parallel:
        for ep in (c.ep // 2, c.ep * 2):
            if ep >= 1 and (model.num_experts or 1) % ep == 0:
                with_degrees(c.tp, c.pp, ep=ep)
        if c.tp > 1 and stack.expert_tp_folding and expert_tp_folding:  # expert TP 1 <-> tp (Megatron-Core's parallel folding)
            with_degrees(c.tp, c.pp, etp=c.tp if c.etp != c.tp else 1)
    for mbs in (c.mbs // 2, c.mbs * 2):
        if mbs >= 1 and global_batch % (c.dp * mbs) == 0 and (c.cp == 1 or mbs <= CP_MICRO_BATCH):
            out.append(replace(c, mbs=mbs, num_microbatches=global_batch // (c.dp * mbs)))
    for kind in RECOMPUTE_KINDS:
        if kind != c.recompute:
            out.append(replace(c, recompute=kind))
    if c.tp > 1:
        out.append(replace(c, sequence_parallel=not c.sequence_parallel))
    if sp_regather_applies(c.sequence_parallel, c.recompute, stack):
        out.append(replace(c, sp_regather=not c.sp_regather))
    # a neighbour without sequence parallelism, or recomputing whole layers, keeps no input shards
    out = [replace(n, sp_regather=n.sp_regather and sp_regather_applies(n.sequence_parallel, n.recompute, stack))
           for n in out]
    if c.dp * c.cp > 1:
        out += [replace(c, zero=z) for z in SEARCHED_ZERO if z != c.zero]
    if c.pp > 1:
        if c.v > 1:
            out.append(replace(c, schedule="1f1b", v=1))
            out += [replace(c, v=v) for v in (c.v - 1, c.v + 1) if v >= 2]
        else:
            out.append(replace(c, schedule="interleaved-1f1b", v=2))
            out.append(replace(c, schedule="gpipe" if c.schedule != "gpipe" else "1f1b"))
    # a cheap filter before pricing; ``nearest_alternatives`` checks each priced configuration with ``config_violations``
    return [
        n for n in out
        if not schedule_violations(n.schedule, n.pp, n.v, n.num_microbatches, stack)
        and not zero_violations(n.zero, n.pp, n.schedule, stack) and not recompute_violations(n.recompute, n.pp, n.schedule, stack)
        and not (n.sequence_parallel and not stack.sequence_parallel) and not _parallel_problems(n, model, train, stack)
    ]


def _parallel_problems(c: Candidate, model: ModelSpec, train: TrainSpec, stack: StackSpec) -> list[str]:
    """The rules a neighbour's cp, ep, sequence and data parallelism must keep (``costmodels.rules``)."""
    cfg = ParallelConfig(stack=stack.name, tp=c.tp, cp=c.cp, ep=c.ep, etp=c.config_etp, pp=c.pp,
                         dp=c.dp, mbs=c.mbs,
                         num_microbatches=c.num_microbatches, zero=c.zero, sequence_parallel=c.sequence_parallel,
                         sp_regather=c.sp_regather, stage_layers=[1])
    return (expert_context_violations(model, train, cfg) + parallelism_violations(cfg, stack, train)
            + data_parallel_violations(train.precision, c.tp, c.cp, c.pp, c.dp, c.zero, stack))


def nearest_alternatives(searcher: Searcher, winner: Scored, limit: int = 6, degrees: DegreeFilter | None = None,
                         schedules: tuple[str, ...] | None = None, cross_node_tp: bool = False,
                         ranked: list[Scored] | None = None) -> list[Alternative]:
    """Single-axis neighbours of the winner, each priced like a search candidate, nearest first. A neighbour
    is shown only where the rules let it run (``costmodels.rules.config_violations`` on the priced
    configuration, cut points included: the one rules module); ``degrees`` and ``schedules`` are what the
    search was limited to (None: no degree limit, the default schedules), which a faster neighbour outside
    them names; ``cross_node_tp``: the search tried TP groups larger than a node (``--allow-cross-node-tp``).
    A neighbour among the search's ``ranked`` plans keeps its refined price (``SearchResult.ranked``), as the runners-up
    show it; any other is priced on the search's own cuts."""
    base = winner.estimate.step_time_s
    refined = {s.candidate: s for s in ranked or []}
    alts: list[tuple[float, Alternative]] = []
    cands = set(_neighbours(winner.candidate, searcher.gpus, searcher.train, searcher.model, searcher.stack,
                            searcher.layers.context_parallel_degrees, searcher.layers.expert_tp_folding))
    for n in sorted(cands):
        if min_layers_for(n.pp * n.v) > searcher.model.num_layers:
            continue
        scored = refined.get(n) or searcher.price(n)
        if scored is None or config_violations(searcher.model, searcher.train, searcher.gpus, scored.config, searcher.stack):
            continue
        est = scored.estimate
        delta = 100 * (est.step_time_s / base - 1)
        if not est.fits:
            worst = max(est.peak_memory_gib)
            reason = f"does not fit: {_g3(worst)} GiB > {_g3(est.memory_limit_gib)} GiB"
            alts.append((float("inf"), Alternative(config=scored.config, step_time_s=est.step_time_s, delta_pct=delta,
                                                   reason=reason)))
            continue
        reason = _why_slower(winner.estimate, est, delta, scored, searcher, degrees, schedules, cross_node_tp)
        alts.append((est.step_time_s, Alternative(config=scored.config, step_time_s=est.step_time_s, delta_pct=delta,
                                                  reason=reason)))
    alts.sort(key=lambda t: (t[0], config_label(t[1].config)))
    return [a for _, a in alts[:limit]]


def _outside_space(scored: Scored, searcher: Searcher, degrees: DegreeFilter | None,
                   schedules: tuple[str, ...] | None, cross_node_tp: bool = False) -> str | None:
    """Why search's space (as limited by ``degrees`` and ``schedules``, None: the defaults) does not hold the
    neighbour ``scored``; None where it does."""
    cfg = scored.config
    if degrees is not None and not degrees.admits(scored.candidate):
        return f"outside the degrees the search was limited to ({degrees.describe()})"
    if schedules is not None and cfg.schedule not in schedules:
        return f"schedule '{cfg.schedule}' is outside the schedules searched (--schedules {','.join(schedules)})"
    if cfg.tp > searcher.cluster.gpus_per_node and not cross_node_tp:
        return "TP across nodes, which search tries only with --allow-cross-node-tp"
    if cfg.cp > 1 and cfg.mbs > CP_MICRO_BATCH:
        return f"cp > 1 with mbs {cfg.mbs}, which search does not enumerate (context parallelism runs micro-batch 1)"
    if cfg.cp > 1 and searcher.train.seq_len // (2 * cfg.cp) < MIN_CP_CHUNK:
        return f"cp={cfg.cp} leaves chunks under {MIN_CP_CHUNK} positions, which search does not enumerate"
    if cfg.mbs > MAX_MBS:
        return f"mbs {cfg.mbs} is above the {MAX_MBS} search tries"
    if schedules is None and cfg.schedule not in DEFAULT_SCHEDULES:
        return f"schedule '{cfg.schedule}' is not searched by default"
    return None


# The step-time terms a slower neighbour is explained by (``Breakdown`` field, the name said), in the order
# that breaks a tie.
SLOWER_TERMS: tuple[tuple[str, str], ...] = (
    ("bubble_s", "bubble"), ("tp_comm_s", "TP communication"), ("dp_comm_s", "DP communication"),
    ("recompute_s", "recomputation"), ("compute_s", "compute efficiency"), ("ep_comm_s", "expert all-to-all"),
    ("cp_comm_s", "context-parallel ring"), ("pp_comm_s", "pipeline p2p"), ("optimizer_s", "optimizer step"),
    ("overhead_s", "host overhead"), ("offload_s", "activation offload copies"),
)


def _why_slower(win: Estimate, other: Estimate, delta_pct: float, scored: Scored, searcher: Searcher,
                degrees: DegreeFilter | None = None, schedules: tuple[str, ...] | None = None,
                cross_node_tp: bool = False) -> str:
    outside = _outside_space(scored, searcher, degrees, schedules, cross_node_tp) if delta_pct < 0 else None
    if outside:  # a faster neighbour the search could not return, whatever the margin
        return f"{_g3(-delta_pct)}% faster: {outside}"
    if abs(delta_pct) < 0.05:
        return "ties on step time; the canonical order (smaller degrees, cheaper options first) decides"
    if delta_pct < 0:
        if -delta_pct <= 100 * TOLERANCE:
            return f"{-delta_pct:.2g}% faster, within the search's {100 * TOLERANCE:.2g}% tolerance"
        return (f"{_g3(-delta_pct)}% faster: this plan is not the best of search's space (a runner-up, or a plan "
                "made by hand): ppplan search returns the best")
    diffs = {label: getattr(other.breakdown, field) - getattr(win.breakdown, field) for field, label in SLOWER_TERMS}
    name, seconds = max(diffs.items(), key=lambda kv: kv[1])
    step_gap_s = other.step_time_s - win.step_time_s
    if seconds < EXPLAINED_SHARE * step_gap_s:  # no term of the critical rank's breakdown carries the gap
        return (f"{_g3(delta_pct)}% slower (+{_g3(step_gap_s)} s): no term of the critical rank's breakdown "
                f"rises by more than {_g3(max(seconds, 0.0))} s; the gap comes from how the ranks' work overlaps")
    falls = sorted((v, k) for k, v in diffs.items() if v < -OFFSET_NAMED_SHARE * seconds)
    if -sum(v for v, _ in falls) > OFFSET_SHARE * seconds:  # large moves that nearly cancel: say them all
        against = ", ".join(f"{k} -{_g3(-v)} s" for v, k in falls[:OFFSETS_NAMED])
        return f"{_g3(delta_pct)}% slower: {name} +{_g3(seconds)} s against {against}"
    return f"{_g3(delta_pct)}% slower, mostly {name} (+{_g3(seconds)} s)"


def end_stage_line(stage_layers: list[int]) -> str | None:
    """Says so when an end stage holds the embedding or the head alone (its cut has no layer there)."""
    alone = [what for what, n in (("the embedding", stage_layers[0]), ("the head", stage_layers[-1])) if n == 0]
    if len(stage_layers) < 2 or not alone:
        return None
    return (f"cut: {' and '.join(alone)} alone on {'their end stages' if len(alone) == 2 else 'its end stage'} "
            f"(stage_layers {stage_layers[0]}, {stage_layers[1]}, ..., {stage_layers[-1]}; Megatron-LM: "
            "--account-for-embedding/loss-in-pipeline-split)")


def refined_line(unrefined_s: float, refined_s: float) -> str:
    """Says what refining the pick's cut saved (``Searcher.refine_cut``), and that the alternatives are not refined:
    part of their gap is the pick's refinement."""
    return (f"cut refined by one-layer moves from the search's own cut ({_g3(unrefined_s)} s): "
            f"{_g3(100 * (1 - refined_s / unrefined_s))}% faster; an alternative below that is not a runner-up is priced "
            "on the search's own cuts, unrefined")


def rationale(winner: Scored, runner_up: Scored | None, alternatives: list[Alternative]) -> list[str]:
    lines = [f"binds: {line}" for line in binding_constraints(winner.estimate)]
    cut = end_stage_line(winner.config.stage_layers)
    if cut:
        lines.append(cut)
    if winner.refined_from is not None:
        lines.append(refined_line(winner.refined_from.estimate.step_time_s, winner.estimate.step_time_s))
    if runner_up is not None:
        gap = 100 * (runner_up.estimate.step_time_s / winner.estimate.step_time_s - 1)
        lines.append(f"runner-up {runner_up.candidate.label()} is {gap:.2g}% slower")
    for alt in alternatives:
        lines.append(f"rejected {config_label(alt.config)}: {alt.reason}")
    return lines
