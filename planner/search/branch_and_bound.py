"""The search: branch and bound over the space, exact under the simulated price.

The space is every candidate of ``planner.search.space`` (degrees with cp and ep, mbs, M, v,
schedule, recompute, SP, ZeRO), each with the cuts ``Searcher.cuts`` gives it: the uniform split
(what ``ppplan evaluate`` prices) and, where the stack cuts freely, the min–max cut points
under per-rank memory caps (``planner.search.cutpoints``), once under caps that charge a
several-stage rank's end-stage extras on every stage-microbatch in flight and once under caps
that charge them once (``Searcher.layer_caps``). The price of a candidate is the
best exact price of its cuts that fit: ``estimate`` with the event simulator over the
schedule's action list. ``search`` returns the k best candidates by that price, within
``TOLERANCE``: the i-th plan returned is never more than 0.5 % slower than the i-th best
of the space (DESIGN.md, Search).

1. Every candidate gets a time and a memory lower bound that hold for any cut
   (``planner.search.bounds``); one whose memory bound is over the limit cannot fit.
2. Candidates are visited in order of their time bound. The visit stops at the first
   bound that, raised by the tolerance, reaches the k-th best exact price found so far:
   no candidate after it can enter the top k by more than the tolerance.
3. A visited candidate's cuts each get their own time and memory bounds (the cut's stage
   times); a cut is simulated only when those leave it a chance.
4. Each of the plans found has its cut refined (``Searcher.refine_cut``), and the plans are ranked
   again: one layer moved from one stage to another while a move lowers the exact price by more than
   the tolerance and still fits. A refined plan is at least as fast as its unrefined price, so the
   guarantee above still holds; its cut may lie outside the space (the simulator's price is not the
   min–max of the stage times). A refined runner-up can overtake the pick (gpt3-1.7b on 16 A100s,
   2.1 %). Step 4's prices are not checked against bounds nor counted in ``SearchResult.evaluated``;
   steps 1-3's are.

Steps 2-4 always rank at least ``RANKED_AT_LEAST`` plans (the CLI's default k), and the first k of them
are returned: the first k plans of any k up to that are the default search's first k. Without the
floor, the pick depended on k twice over: a k-1 visit stops at the first plan's price and skips
plans within the tolerance below it (gpt3-175b on 1024 A100s: tp 8 pp 8 at k 1, tp 4 pp 16, 0.1 %
faster, at k 5), and only the k plans returned were refined. A larger k ranks more plans, so its pick
is never slower.

Every exact price is checked against the bounds that admitted it; a violation (a cost-model
change that breaks a bound) is counted in ``SearchResult.bound_violations`` and logged.
Deterministic: orders break ties by the candidate's canonical tuple.
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Callable

from costmodels.estimate import estimate
from costmodels.layer_costs import LayerTimes, RooflineTimes
from costmodels.layout import default_split, end_stage_floors
from costmodels.memory import gradients_held_per_stage
from costmodels.pipeline_bound import bound_pipeline, peak_inflight, stages_by_rank
from costmodels.rank_memory import memory_limit_gib, uniform_rank_memory
from costmodels.rules import (
    context_degree_violations,
    expert_degree_violations,
    model_support_violations,
    position_violations,
    tp_violations,
)
from planner.search.bounds import Bounds
from planner.search.cutpoints import split_affine
from planner.search.space import DEFAULT_SCHEDULES, Candidate, DegreeFilter, cp_chunk_search_violations, enumerate_candidates
from profiles.errors import PlanError, sig3
from profiles.loader import DEFAULT_STACK, load_stack, preset_names
from profiles.schema import ClusterSpec, Estimate, ModelSpec, ParallelConfig, TrainSpec
from profiles.stack_schema import StackSpec

log = logging.getLogger(__name__)

# DESIGN.md (Search): the returned top-k are the k best of the space within 0.5 %.
TOLERANCE = 0.005
# A ranked plan's cut is refined by one-layer moves (``Searcher.refine_cut``): at most this many exact prices
# per stage of the plan, each move kept only if it lowers the step by more than the search's own tolerance (a move for
# 0.01 % made cuts like [.., 6, 9, 3, 6, ..] and moved a fifth of a rank's memory for nothing the price can tell).
REFINE_PRICES_PER_STAGE = 8
REFINE_PRICES_MAX = 48
REFINE_GAIN = TOLERANCE
# Plans the visit ranks and refines, whatever k, and the default k: the first k of any k up to this are the default search's.
RANKED_AT_LEAST = 5
# Moves bounded per round of ``Searcher.refine_cut`` (the nearest ones), and in all per plan (each a pair of cut
# bounds, about 0.1-0.3 ms on 64-96 stages), priced or not.
REFINE_MOVES_MAX = 1024
REFINE_BOUNDS_MAX = 4 * REFINE_MOVES_MAX
# Relative slack when checking an exact price against its bound (float summation order).
BOUND_CHECK_SLACK = 1e-9


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    config: ParallelConfig
    estimate: Estimate
    refined_from: "Scored | None" = None  # the plan at the search's own cut, where ``Searcher.refine_cut`` moved it

    @property
    def key(self) -> tuple:
        return (round(self.estimate.step_time_s, 12), self.candidate)


@dataclass
class SearchResult:
    best: list[Scored]
    closest: Scored | None
    searcher: "Searcher | None" = None  # the one that priced these plans (its caches are warm)
    candidates: int = 0
    evaluated: int = 0  # cuts priced by the event simulator
    pruned_by_bound: int = 0  # candidates and cuts never simulated because a bound excluded them
    rejected_memory: int = 0  # candidates whose bound cannot fit, and cuts whose bound or exact price does not fit
    bound_violations: int = 0  # exact prices below the bound that admitted them (should stay 0)
    ranked: list[Scored] = field(default_factory=list)  # every plan ranked and refined, best first (``best`` is its first k)


def config_for(cand: Candidate, stage_layers: list[int], stack: str = DEFAULT_STACK) -> ParallelConfig:
    return ParallelConfig(
        stack=stack, tp=cand.tp, cp=cand.cp, ep=cand.ep, etp=cand.config_etp, pp=cand.pp,
        dp=cand.dp, v=cand.v, mbs=cand.mbs,
        num_microbatches=cand.num_microbatches, schedule=cand.schedule, recompute=cand.recompute,
        sequence_parallel=cand.sequence_parallel, sp_regather=cand.sp_regather, zero=cand.zero, offload_layers=cand.offload,
        stage_layers=stage_layers,
    )


@dataclass(frozen=True)
class RankMemoryLine:
    """One kind of rank's GiB (what the cut points are capped with): the larger of the backward's peak,
    ``base + per_layer·(layers on the rank) + inflight·(per_stage + per_stage_layer·(layers per stage))``,
    and the optimizer step's, ``step_base + step_per_layer·(layers on the rank)``; each affine in the
    layers per stage."""

    base: float
    per_layer: float
    per_stage: float
    per_stage_layer: float
    step_base: float = 0.0
    step_per_layer: float = 0.0

    def pieces(self, v: int, inflight: int) -> tuple[tuple[float, float], tuple[float, float]]:
        """(GiB at 0 layers per stage, GiB per layer per stage) of the backward's and the step's peak."""
        backward = (self.base + inflight * self.per_stage, self.per_layer * v + inflight * self.per_stage_layer)
        return backward, (self.step_base, self.step_per_layer * v)

    def cap(self, v: int, inflight: int, limit_gib: float, most: int) -> int:
        """Most layers per stage (at most ``most``) under ``limit_gib``; 0 when one is too many (a rank
        of end stages may still hold the embedding or the head alone), -1 when not even none fits."""
        caps = []
        for at_zero, slope in self.pieces(v, inflight):
            if at_zero > limit_gib:
                caps.append(-1)
            elif at_zero + slope > limit_gib:
                caps.append(0)
            else:
                caps.append(most if slope <= 0 else min(most, 1 + int((limit_gib - at_zero - slope) / slope)))
        return min(caps)


# (pp, v, schedule, rank) of a small configuration whose ``rank`` is of the kind (embedding, head).
_PROBES: dict[tuple[bool, bool], tuple[int, int, str, int]] = {
    (False, False): (3, 1, "1f1b", 1), (True, False): (2, 1, "1f1b", 0),
    (False, True): (2, 1, "1f1b", 1), (True, True): (2, 2, "zbv", 0),
}


class Searcher:
    """Prices candidates of one search: their cuts, their exact price, their bounds."""

    def __init__(
        self, model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, gpus: int, layers: LayerTimes | None = None,
        stack: StackSpec | None = None,
    ):
        self.model, self.cluster, self.train, self.gpus = model, cluster, train, gpus
        self.stack = stack or load_stack()
        self.layers = layers or RooflineTimes(model, cluster, train.precision, stack=self.stack)
        self.limit_gib = memory_limit_gib(cluster)
        self.bounds = Bounds(model, cluster, train, self.layers, self.stack)
        self._lines: dict[tuple, RankMemoryLine] = {}

    def config(self, c: Candidate, stage_layers: list[int]) -> ParallelConfig:
        return config_for(c, stage_layers, self.stack.name)

    def _memory_line(self, c: Candidate, kind: tuple[bool, bool]) -> RankMemoryLine:
        """The estimate's memory of a rank of ``kind``, probed on a small configuration with the
        candidate's degrees and options (a rank's memory depends on the pipeline only through
        what the rank holds and whether there is a pipeline), cached per such probe."""
        if c.offload:  # the lines are affine in a stage's layers; an offload's resident layers are not
            raise ValueError(f"memory lines price no activation offload: {c.label()}")
        pipelined = c.pp > 1
        # a rank of several stages may free one stage's gradients before its peak where they live per stage: its line
        # counts none of them (a lower bound: the line also charges every stage-microbatch in flight at the probe's
        # stage, whose end-stage extras only one of the rank's stages has, so counting them would tighten the caps
        # below cuts that fit)
        held = not (c.v > 1 and gradients_held_per_stage(self.stack, c.pp, c.dp * c.cp, c.zero, self.train.precision))
        # where torch's runtime evicts unsharded stages the probe (v <= 2) takes the share of the candidate's
        # v equal stages, at most what any cut holds (Bounds.unsharded_share)
        share = self.bounds.unsharded_share(c)
        key = (c.tp, c.cp, c.ep, c.etp, c.dp, c.mbs, c.num_microbatches, c.recompute, c.sequence_parallel, c.sp_regather,
               c.zero, pipelined, kind, held, share)
        line = self._lines.get(key)
        if line is None:
            pp, v, schedule, rank = _PROBES[kind] if pipelined else (1, 1, "1f1b", 0)
            probe = ParallelConfig(
                stack=self.stack.name, tp=c.tp, cp=c.cp, ep=c.ep, etp=c.config_etp, pp=pp, dp=c.dp,
                v=v, mbs=c.mbs,
                num_microbatches=c.num_microbatches, schedule=schedule, recompute=c.recompute,
                sequence_parallel=c.sequence_parallel, sp_regather=c.sp_regather, zero=c.zero, stage_layers=[1] * (pp * v),
            )

            one, two = (uniform_rank_memory(self.model, self.cluster, self.train, probe, rank, n, stack=self.stack,
                                            held_gradients=held, weights_share=None if share == 1.0 else share)
                        for n in (1, 2))
            m10, m20, m11, m21 = one(0, "backward"), two(0, "backward"), one(1, "backward"), two(1, "backward")
            per_layer = (m20 - m10) / v
            per_stage_layer = (m21 - m20) - (m11 - m10)
            s1, s2 = one(0, "step"), two(0, "step")
            step_per_layer = (s2 - s1) / v
            line = RankMemoryLine(m10 - per_layer * v, per_layer, (m11 - m10) - per_stage_layer, per_stage_layer,
                                  s1 - step_per_layer * v, step_per_layer)
            self._lines[key] = line
        return line

    def _extras_once(self, c: Candidate, line: RankMemoryLine) -> RankMemoryLine:
        """``line`` with its end stage's per-microbatch extras (the embedding's or the head's kept tensors beyond a
        middle stage's) charged once instead of on every stage-microbatch in flight: of a several-stage rank's stages
        only one has them, and its own in-flight count at the rank's peak is at least one."""
        middle = self._memory_line(c, (False, False))
        return replace(line, base=line.base + line.per_stage - middle.per_stage, per_stage=middle.per_stage)

    def layer_caps(self, c: Candidate, extras_once: bool = False) -> list[int] | None:
        """Most layers each virtual stage may hold so that its rank fits (the schedule's in-flight
        count on that rank, affine memory in the layer count); None when a rank cannot hold its least:
        one layer a stage, or none where all its stages are end stages (``end_stage_floors``).
        ``extras_once``: a several-stage rank that holds an end stage is charged that stage's
        per-microbatch extras once (``_extras_once``), not on every stage-microbatch in flight."""
        stages = c.pp * c.v
        last = stages - 1
        counts = peak_inflight(c.schedule, c.pp, c.v, c.num_microbatches)
        floors = end_stage_floors(stages)
        caps = [0] * stages
        for rank, own in enumerate(stages_by_rank(c.schedule, c.pp, c.v)):
            kind = (0 in own, last in own)
            line = self._memory_line(c, kind)
            if extras_once and len(own) > 1 and kind != (False, False):
                line = self._extras_once(c, line)
            cap = line.cap(c.v, counts[rank], self.limit_gib, self.model.num_layers)
            if cap < max(floors[s] for s in own):
                return None
            for s in own:
                caps[s] = cap
        return caps

    def min_max_cut(self, c: Candidate, caps: list[int] | None = None) -> list[int] | None:
        """The min–max cut points under the memory caps (``split_affine``; ``caps``: ``layer_caps``'s by default),
        or None."""
        caps = self.layer_caps(c) if caps is None else caps
        if caps is None:
            return None
        layer, emb, head = self.bounds.passes(c)
        extras = [0.0] * len(caps)
        extras[0] += emb.total_s
        extras[-1] += head.total_s
        floors = end_stage_floors(len(caps))
        split = split_affine(self.model.num_layers, layer.total_s, extras, caps, floors)
        return list(split.layers) if split else None

    def default_cut(self, c: Candidate) -> list[int]:
        """``costmodels.layout.default_split`` of the model over ``c``'s stages (the space only holds
        candidates with at least ``min_layers_for`` their stages)."""
        split = default_split(self.model.num_layers, c.pp * c.v)
        assert split is not None, f"{c.label()}: {self.model.num_layers} layers on {c.pp * c.v} stages"
        return split

    def cuts(self, c: Candidate) -> list[list[int]]:
        """The cuts of the space for ``c``: the uniform split (``default_split``: an end stage holds the
        embedding or the head alone where the layers are fewer than the stages), then, where the stack
        cuts freely (``StackSpec.cut_layouts``), the min–max cut if it differs (whose end stages may hold
        no layer when the embedding's or the head's time outweighs one), and with v > 1 the min–max cut
        under the caps that charge an end stage's per-microbatch extras once (``layer_caps``), if it differs
        again. The caps are affine estimates of the rank's memory that may err either way for a rank of
        several stages: the first can rule out cuts that fit (the extras on every stage-microbatch in
        flight), the second can admit cuts that do not (it takes one of an end stage's microbatches in flight,
        where looped-bfs keeps all of them); each cut is bounded and priced exactly, so the space keeps every
        fitting cut of either (the returned plans stay within ``TOLERANCE`` of the space's best, as before)."""
        uniform = self.default_cut(c)
        if self.stack.cut_layouts != "any":
            return [uniform]
        cuts = [uniform]
        tight = self.layer_caps(c)
        caps = [tight] if tight is not None else []
        if c.v > 1 and (loose := self.layer_caps(c, extras_once=True)) not in (None, tight):
            caps.append(loose)
        for balanced in (self.min_max_cut(c, cap) for cap in caps):
            if balanced is not None and balanced not in cuts:
                cuts.append(balanced)
        return cuts

    def score(self, c: Candidate, stage_layers: list[int]) -> Scored:
        """Exact: the event simulator over the schedule's action list."""
        cfg = self.config(c, stage_layers)
        return Scored(c, cfg, estimate(self.model, self.cluster, self.train, cfg, self.layers, stack=self.stack))

    def composed_bound(self, c: Candidate, stage_layers: list[int]) -> Estimate:
        """The estimate composed over ``bound_pipeline`` instead of the simulator: its step time and
        per-rank memory are lower bounds of the exact ones (the estimate's terms are monotone in the
        makespan and in the activation peaks), at the cost of no action list."""
        return estimate(self.model, self.cluster, self.train, self.config(c, stage_layers), self.layers, bound_pipeline,
                        stack=self.stack)

    def refine_cut(self, s: Scored, budget: int | None = None) -> Scored:
        """``s`` with a cut at least as fast, by rounds of one-layer moves (one layer from one stage to another).
        A round bounds each of the nearest ``REFINE_MOVES_MAX`` moves (``Bounds.time_of_cut_s``,
        ``memory_of_cut_gib``: true lower bounds), drops those that cannot save ``REFINE_GAIN`` or cannot fit, and
        prices the rest lowest time bound first; the first that fits and saves more than ``REFINE_GAIN`` is kept
        and starts the next round. It stops after a round without a gain, after ``budget`` exact prices (default
        ``REFINE_PRICES_PER_STAGE`` per stage, at most ``REFINE_PRICES_MAX``; a cut is priced once), or after
        ``REFINE_BOUNDS_MAX`` moves bounded. The min-max cut balances the slowest stage, but the event simulator's
        price also depends on where the heavy stages sit (under zb-h1 a heavier early stage fills warm-up slack;
        session 52's brute force found one-layer moves 0.8-1.9 % faster on 2-6-stage pipelines, and a second
        one 1.2-4.5 % over 8-16 stages of interleaved-zb). Lowest bound first: llama3-8b at seq 4096 on 16 H200
        (interleaved-zb, pp 8 v 2) reaches 1.061 s within the budget, where a scan of the moves nearest first
        stopped at 1.098 s. Only where the stack cuts freely (``cut_layouts: any``); every cut keeps
        ``end_stage_floors``."""
        if self.stack.cut_layouts != "any" or len(s.config.stage_layers) < 2:
            return s
        start = s
        floors = end_stage_floors(len(s.config.stage_layers))
        moves = _one_layer_moves(len(floors))[:REFINE_MOVES_MAX]
        budget = min(REFINE_PRICES_PER_STAGE * len(floors), REFINE_PRICES_MAX) if budget is None else budget
        priced: set[tuple[int, ...]] = set()
        spent, bounded, gained = 0, 0, True
        while gained and spent < budget and bounded < REFINE_BOUNDS_MAX:
            target_s = s.estimate.step_time_s * (1 - REFINE_GAIN)
            promising: list[tuple[float, int, list[int]]] = []
            for order, (src, dst) in enumerate(moves):
                if bounded >= REFINE_BOUNDS_MAX:
                    break
                if s.config.stage_layers[src] <= floors[src]:
                    continue
                cut = list(s.config.stage_layers)
                cut[src], cut[dst] = cut[src] - 1, cut[dst] + 1
                if tuple(cut) in priced:
                    continue
                bounded += 1
                bound_s = self.bounds.time_of_cut_s(s.candidate, cut)
                if bound_s < target_s and max(self.bounds.memory_of_cut_gib(s.candidate, cut)) <= self.limit_gib:
                    promising.append((bound_s, order, cut))
            gained = False
            for _, _, cut in sorted(promising, key=lambda t: t[:2])[: budget - spent]:
                priced.add(tuple(cut))
                tried = self.score(s.candidate, cut)
                spent += 1
                if tried.estimate.fits and tried.estimate.step_time_s < target_s:
                    s, gained = tried, True
                    break
        return s if s is start else replace(s, refined_from=start)

    def price(self, c: Candidate) -> Scored | None:
        """The candidate's exact price: its best cut that fits; if none fits, its cut that needs the
        least memory (``estimate.fits`` is then false); None if it has no legal cut."""
        scored = [self.score(c, cut) for cut in self.cuts(c)]
        fitting = [s for s in scored if s.estimate.fits]
        if fitting:
            return min(fitting, key=lambda s: s.key)
        return min(scored, key=lambda s: (max(s.estimate.peak_memory_gib), s.key)) if scored else None


def _one_layer_moves(stages: int) -> list[tuple[int, int]]:
    """(from, to) pairs of distinct stages, the nearest first (a layer moved across one cut, then across two, ...):
    a move across several cuts is one move, where adjacent ones would pass through a worse cut, and an
    interleaved rank holds stages pp apart (llama3-8b on 16 H200, interleaved-zb v 2, session 52's nearest-first
    scan: moves across at most 3 cuts stopped at 1.098 s; any move, with prices enough, reached 1.061 s)."""
    pairs = [(i, j) for i in range(stages) for j in range(stages) if i != j]
    return sorted(pairs, key=lambda move: (abs(move[0] - move[1]), move))


def _stacks_running(model: ModelSpec) -> str:
    """'re-plan with --stack A or --stack B': the shipped stacks that run every layer of ``model``."""
    names = [n for n in preset_names("stacks") if not model_support_violations(model, load_stack(n))]
    return f"re-plan with {' or '.join(f'--stack {n}' for n in names)}" if names else "no shipped stack runs it"


def search(
    model: ModelSpec,
    cluster: ClusterSpec,
    train: TrainSpec,
    gpus: int,
    top_k: int = RANKED_AT_LEAST,
    schedules: tuple[str, ...] = DEFAULT_SCHEDULES,
    allow_cross_node_tp: bool = False,
    layers: LayerTimes | None = None,
    progress: Callable[[int, int], None] | None = None,
    stack: StackSpec | None = None,
    tolerance: float = TOLERANCE,
    degrees: DegreeFilter | None = None,
) -> SearchResult:
    """Top-k plans that fit on ``stack`` (default ``ppplan-torch``), best first; ``closest`` is the
    least-overflowing plan when none fits (module docstring). A model with layers the stack does not
    run (mixture of experts, multi-head latent attention) or a sequence past its learned positions is bad input
    (``PlanError``), and so are ``degrees`` no legal candidate has (the message lists the legal ones)."""
    schedules = tuple(dict.fromkeys(schedules))  # a schedule named twice is searched once
    problems = position_violations(model, train)  # no configuration runs a sequence past the position table
    if problems:
        raise PlanError(problems[0])
    searcher = Searcher(model, cluster, train, gpus, layers, stack)
    unsupported = model_support_violations(model, searcher.stack)
    if unsupported:
        raise PlanError(unsupported[0].replace("use another stack", _stacks_running(model)))
    cands = list(enumerate_candidates(model, train, gpus, cluster.gpus_per_node, schedules, allow_cross_node_tp, searcher.stack,
                                      searcher.layers.context_parallel_degrees, searcher.layers.expert_tp_folding))
    if degrees is not None and degrees.etp is not None and not model.is_moe:
        raise PlanError(f"--etp needs a mixture-of-experts model ({model.name} is dense): drop --etp")
    if degrees is not None:
        cands = _filtered(cands, degrees, model, train)
    result = SearchResult(best=[], closest=None, candidates=len(cands), searcher=searcher)
    visit = _Visit(searcher, max(top_k, RANKED_AT_LEAST), tolerance, result)
    for c in cands:
        if searcher.bounds.memory_any_cut_gib(c) > searcher.limit_gib:
            result.rejected_memory += 1
        else:
            visit.queue.append((searcher.bounds.time_any_cut_s(c), CANDIDATE, c, ()))
    visit.run(progress)
    result.ranked = sorted((searcher.refine_cut(s) for s in visit.top()), key=lambda s: s.key)
    result.best = result.ranked[:top_k]
    if not result.best:
        result.closest = closest_plan(searcher, cands)
    return result


def infeasible_message(closest: Scored | None, model: ModelSpec, gpus: int, global_batch: int) -> str:
    """Why a search returned no plan (DESIGN.md: an infeasible request exits 1 with the closest plan and why):
    no legal configuration at all, or the least-overflowing plan (``SearchResult.closest``) and its overflow."""
    if closest is None:
        return (f"no legal configuration of {model.name} on {gpus} GPUs with global batch {global_batch}: tp x cp x pp x dp "
                f"must make {gpus} with dp x mbs dividing the global batch and each degree within the model's rules "
                "(heads, sequence, layers); fewer GPUs or a larger global batch")
    est = closest.estimate
    worst = max(est.peak_memory_gib)
    return (f"no plan fits in {sig3(est.memory_limit_gib)} GiB per GPU; closest: {closest.candidate.label()} needs "
            f"{sig3(worst)} GiB on pipeline rank {est.peak_memory_gib.index(worst)} "
            f"(over by {sig3(worst - est.memory_limit_gib)} GiB)")


def pinned_degree_violations(model: ModelSpec, train: TrainSpec, degrees: DegreeFilter) -> list[str]:
    """The rules that rule out a fixed degree on its own (``costmodels.rules``), to say why it has no
    legal configuration; empty when only the other degrees' combinations rule it out."""
    checks = {"tp": lambda d: tp_violations(model, d),
              "cp": lambda d: context_degree_violations(train.seq_len, d) + cp_chunk_search_violations(train.seq_len, d),
              "ep": lambda d: expert_degree_violations(model, d), "pp": lambda d: [], "etp": lambda d: []}
    return [p for name, allowed in degrees.fixed() for d in sorted(allowed) for p in checks[name](d)]


def _filtered(cands: list[Candidate], degrees: DegreeFilter, model: ModelSpec, train: TrainSpec) -> list[Candidate]:
    kept = [c for c in cands if degrees.admits(c)]
    if cands and not kept:
        legal = "; ".join(f"{name} {', '.join(str(d) for d in sorted({getattr(c, name) for c in cands}))}"
                          for name, _ in degrees.fixed())
        why = pinned_degree_violations(model, train, degrees)
        reason = f" ({'; '.join(why)})" if why else ""
        raise PlanError(f"no legal configuration has {degrees.describe()}: the legal degrees here are {legal}{reason}")
    return kept


# What a queue entry holds: a candidate before its cuts, a cut with its stage-time bound, a cut
# with the bound composed by the estimate (ready to simulate).
CANDIDATE, CUT, COMPOSED = 0, 1, 2


class _Visit:
    """Best-first branch and bound: the queue holds candidates keyed by their any-cut bound and cuts
    keyed by their own, tighter bounds; the smallest key is refined (a candidate into its cuts, a
    cut's stage-time bound into the estimate-composed one) or simulated, until it reaches the
    threshold. A bound is refined only when it is the smallest left, so the costly refinements are
    spent where the threshold cannot yet exclude them."""

    def __init__(self, searcher: Searcher, top_k: int, tolerance: float, result: SearchResult) -> None:
        self.searcher, self.top_k, self.tolerance, self.result = searcher, top_k, tolerance, result
        self.queue: list[tuple[float, int, Candidate, tuple[int, ...]]] = []
        self.priced: dict[Candidate, Scored] = {}
        self.memory_bounds: dict[tuple[Candidate, tuple[int, ...]], list[float]] = {}

    def top(self) -> list[Scored]:
        return sorted(self.priced.values(), key=lambda s: s.key)[: self.top_k]

    def threshold(self) -> float:
        """Bounds at or above this cannot enter the top k by more than the tolerance."""
        best = self.top()
        return best[-1].estimate.step_time_s / (1 + self.tolerance) if len(best) == self.top_k else math.inf

    def run(self, progress: Callable[[int, int], None] | None) -> None:
        heapq.heapify(self.queue)
        total, expanded = len(self.queue), 0
        threshold = math.inf
        while self.queue:
            bound, kind, c, cut = heapq.heappop(self.queue)
            if bound >= threshold:
                self.result.pruned_by_bound += 1 + len(self.queue)
                break
            if kind == CANDIDATE:
                expanded += 1
                if progress and expanded % 256 == 0:
                    progress(expanded, total)
                self.expand(c, bound)
            elif kind == CUT:
                self.compose(c, cut, bound)
            else:
                self.simulate(c, list(cut), bound)
                threshold = self.threshold()
        if progress:
            progress(total, total)

    def expand(self, c: Candidate, any_cut_bound: float) -> None:
        """Queue each cut of ``c`` that its memory bound lets fit, keyed by its stage-time bound."""
        searcher = self.searcher
        for cut in searcher.cuts(c):
            memory_bound = searcher.bounds.memory_of_cut_gib(c, cut)
            if max(memory_bound) > searcher.limit_gib:
                self.result.rejected_memory += 1
                continue
            key = tuple(cut)
            self.memory_bounds[(c, key)] = memory_bound
            time_bound = searcher.bounds.time_of_cut_s(c, cut)
            heapq.heappush(self.queue, (max(any_cut_bound, time_bound), CUT, c, key))

    def compose(self, c: Candidate, cut: tuple[int, ...], bound: float) -> None:
        """Re-queue a cut keyed by the estimate-composed bound, unless its memory cannot fit."""
        composed = self.searcher.composed_bound(c, list(cut))
        if not composed.fits:
            self.result.rejected_memory += 1
            self.memory_bounds.pop((c, cut))
            return
        memory = self.memory_bounds[(c, cut)]
        self.memory_bounds[(c, cut)] = [max(a, b) for a, b in zip(memory, composed.peak_memory_gib)]
        heapq.heappush(self.queue, (max(bound, composed.step_time_s), COMPOSED, c, cut))

    def simulate(self, c: Candidate, cut: list[int], bound: float) -> None:
        scored = self.searcher.score(c, cut)
        self.result.evaluated += 1
        _check_bounds(scored, bound, self.memory_bounds.pop((c, tuple(cut))), self.result)
        if not scored.estimate.fits:
            self.result.rejected_memory += 1
            return
        known = self.priced.get(c)
        if known is None or scored.key < known.key:
            self.priced[c] = scored


def _check_bounds(scored: Scored, time_bound_s: float, memory_bound_gib: list[float], result: SearchResult) -> None:
    est = scored.estimate
    low_time = est.step_time_s < time_bound_s * (1 - BOUND_CHECK_SLACK)
    low_memory = any(m < b * (1 - BOUND_CHECK_SLACK) for m, b in zip(est.peak_memory_gib, memory_bound_gib))
    if low_time or low_memory:
        result.bound_violations += 1
        log.warning("search bound above the exact price for %s (step %.6g s vs bound %.6g s; memory %s vs %s): "
                    "pruning may have lost plans", scored.candidate.label(), est.step_time_s, time_bound_s,
                    est.peak_memory_gib, memory_bound_gib)


CLOSEST_PRICED = 8  # candidates with the least memory bound that are priced exactly when nothing fits


def closest_plan(searcher: Searcher, cands: list[Candidate]) -> Scored | None:
    """When nothing fits: of the candidates whose uniform split has the smallest memory bound,
    the one whose exact price needs the least memory."""
    if not cands:
        return None

    def need(c: Candidate) -> tuple[float, Candidate]:
        return max(searcher.bounds.memory_of_cut_gib(c, searcher.default_cut(c))), c

    nearest = sorted(need(c) for c in cands)[:CLOSEST_PRICED]
    priced = [searcher.score(c, searcher.default_cut(c)) for _, c in nearest]
    return min(priced, key=lambda s: (max(s.estimate.peak_memory_gib), s.key))
