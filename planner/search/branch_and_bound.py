"""Branch-and-bound search over the space, with optimal stage cut points per candidate.

1. Every legal candidate gets a cheap lower bound on its step time (perfectly
   balanced stages, the schedule's unavoidable fill/drain).
2. Candidates are visited in bound order; each gets per-rank layer caps from its
   memory limit, then the min–max cut points (``planner.search.cutpoints``, the inner
   loop), then a closed-form screen (``costmodels.pipeline_approx``).
3. The visit stops when the next bound cannot beat the ``screen``-th best screen.
4. The survivors are priced by the event simulator over the exact action list
   (time and per-rank memory) and ranked by that alone.
Deterministic: every ordering breaks ties by the candidate's canonical tuple.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from costmodels.compute import memory_bound_time_s
from costmodels.estimate import ADAM_STEP_BYTES_PER_PARAM, estimate, memory_limit_gib, rank_memory_if_uniform_gib
from costmodels.layer_costs import LayerTimes, RooflineTimes
from costmodels.layout import uniform_split
from costmodels.memory import stage_params
from costmodels.pipeline_approx import approximate_inflight, approximate_pipeline, fill_fraction
from costmodels.rank_grid import stage_to_rank
from planner.search.cutpoints import split_affine
from planner.search.space import DEFAULT_SCHEDULES, Candidate, enumerate_candidates
from profiles.loader import DEFAULT_STACK, load_stack
from profiles.schema import ClusterSpec, Estimate, ModelSpec, ParallelConfig, TrainSpec
from profiles.stack_schema import StackSpec


@dataclass(frozen=True)
class Scored:
    candidate: Candidate
    config: ParallelConfig
    estimate: Estimate

    @property
    def key(self) -> tuple:
        return (round(self.estimate.step_time_s, 12), self.candidate)


@dataclass
class SearchResult:
    best: list[Scored]
    closest: Scored | None
    searcher: "Searcher | None" = None  # the one that priced these plans (its layer-time caches are warm)
    candidates: int = 0
    evaluated: int = 0
    pruned_by_bound: int = 0
    rejected_memory: int = 0
    rejected: list[tuple[Candidate, str]] = field(default_factory=list)


def config_for(cand: Candidate, stage_layers: list[int], stack: str = DEFAULT_STACK) -> ParallelConfig:
    return ParallelConfig(
        stack=stack, tp=cand.tp, pp=cand.pp, dp=cand.dp, v=cand.v, mbs=cand.mbs, num_microbatches=cand.num_microbatches,
        schedule=cand.schedule, recompute=cand.recompute, sequence_parallel=cand.sequence_parallel,
        zero=cand.zero, stage_layers=stage_layers,
    )


def inflight_stage_microbatches(schedule: str, pp: int, v: int, num_microbatches: int) -> tuple[float, ...]:
    """Stage-microbatches alive at each rank's peak (closed forms; the simulator checks the kept plans)."""
    return tuple(approximate_inflight(schedule, r, pp, v, num_microbatches) for r in range(pp))


class Searcher:
    def __init__(
        self, model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, gpus: int, layers: LayerTimes | None = None,
        stack: StackSpec | None = None,
    ):
        self.model, self.cluster, self.train, self.gpus = model, cluster, train, gpus
        self.stack = stack or load_stack()
        self.layers = layers or RooflineTimes(model, cluster, train.precision, stack=self.stack)
        self.limit_gib = memory_limit_gib(cluster)

    def config(self, c: Candidate, stage_layers: list[int]) -> ParallelConfig:
        return config_for(c, stage_layers, self.stack.name)

    def work_per_microbatch(self, c: Candidate) -> tuple[float, float, float]:
        """(per-layer, embedding, head) F+B+W seconds per microbatch."""
        s = self.train.seq_len
        layer = self.layers.transformer(c.tp, c.mbs, s, c.sequence_parallel, c.recompute).total_s
        emb = self.layers.embedding(c.tp, c.mbs, s, c.sequence_parallel).total_s
        head = self.layers.head(c.tp, c.mbs, s, c.sequence_parallel).total_s
        return layer, emb, head

    def lower_bound_s(self, c: Candidate) -> float:
        """Balanced stages and uniform fill/drain: M·W/P·(1 + (P−1)/(v·M)) plus the optimizer."""
        layer, emb, head = self.work_per_microbatch(c)
        total = self.model.num_layers * layer + emb + head
        fill = fill_fraction(c.schedule, c.pp, c.v, c.num_microbatches)
        params = stage_params(self.model, math.ceil(self.model.num_layers / c.pp), False, False, c.tp)
        opt = memory_bound_time_s(self.cluster, params / (c.dp if c.zero else 1) * ADAM_STEP_BYTES_PER_PARAM)
        return c.num_microbatches * total / c.pp * (1 + fill) + opt + self.cluster.efficiency.step_overhead_s

    def layer_caps(self, c: Candidate) -> list[int] | None:
        """Most layers each virtual stage may hold so that its rank fits (affine memory in n)."""
        cfg = self.config(c, uniform_split(self.model.num_layers, c.pp * c.v))
        inflight = inflight_stage_microbatches(c.schedule, c.pp, c.v, c.num_microbatches)
        caps_by_rank = []
        for r in range(c.pp):
            m1 = rank_memory_if_uniform_gib(self.model, self.cluster, self.train, cfg, r, 1, inflight[r], self.stack)
            m2 = rank_memory_if_uniform_gib(self.model, self.cluster, self.train, cfg, r, 2, inflight[r], self.stack)
            if m1 > self.limit_gib:
                return None
            slope = m2 - m1
            caps_by_rank.append(self.model.num_layers if slope <= 0 else 1 + int((self.limit_gib - m1) / slope))
        return [caps_by_rank[stage_to_rank(j, c.pp, c.v, c.schedule)] for j in range(c.pp * c.v)]

    def cut_points(self, c: Candidate) -> list[int] | None:
        """The min-max cut points under the memory caps; the uniform split where the stack cuts
        only uniformly (``StackSpec.cut_layouts``), if it fits."""
        caps = self.layer_caps(c)
        if caps is None:
            return None
        if self.stack.cut_layouts != "any":
            uniform = uniform_split(self.model.num_layers, c.pp * c.v)
            return uniform if all(n <= cap for n, cap in zip(uniform, caps)) else None
        layer, emb, head = self.work_per_microbatch(c)
        stages = c.pp * c.v
        extras = [0.0] * stages
        extras[0] += emb
        extras[-1] += head
        split = split_affine(self.model.num_layers, layer, extras, caps)
        return list(split.layers) if split else None

    def score(self, c: Candidate, stage_layers: list[int]) -> Scored:
        """Exact: the event simulator over the schedule's action list."""
        cfg = self.config(c, stage_layers)
        return Scored(c, cfg, estimate(self.model, self.cluster, self.train, cfg, self.layers, stack=self.stack))

    def screen(self, c: Candidate, stage_layers: list[int]) -> Scored:
        """Closed-form pipeline pricing, for ranking only."""
        cfg = self.config(c, stage_layers)
        return Scored(c, cfg, estimate(self.model, self.cluster, self.train, cfg, self.layers, approximate_pipeline,
                                       stack=self.stack))


def search(
    model: ModelSpec,
    cluster: ClusterSpec,
    train: TrainSpec,
    gpus: int,
    top_k: int = 5,
    schedules: tuple[str, ...] = DEFAULT_SCHEDULES,
    allow_cross_node_tp: bool = False,
    layers: LayerTimes | None = None,
    progress: Callable[[int, int], None] | None = None,
    stack: StackSpec | None = None,
) -> SearchResult:
    """Top-k plans that fit on ``stack`` (default ``ppplan-torch``), best first; ``closest`` is the
    least-overflowing plan when none fits."""
    searcher = Searcher(model, cluster, train, gpus, layers, stack)
    cands = list(enumerate_candidates(model, train, gpus, cluster.gpus_per_node, schedules, allow_cross_node_tp, searcher.stack))
    bounded = sorted((searcher.lower_bound_s(c), c) for c in cands)
    result = SearchResult(best=[], closest=None, candidates=len(cands), searcher=searcher)
    keep = screen_size(top_k)
    screened: list[Scored] = []
    for i, (bound, cand) in enumerate(bounded):
        if progress and i % 256 == 0:
            progress(i, len(bounded))
        if len(screened) >= keep and bound >= screened[-1].estimate.step_time_s:
            result.pruned_by_bound = len(bounded) - i
            break
        layers_split = searcher.cut_points(cand)
        if layers_split is None:
            result.rejected_memory += 1
            continue
        scored = searcher.screen(cand, layers_split)
        result.evaluated += 1
        if not scored.estimate.fits:
            result.rejected_memory += 1
            continue
        screened = sorted(screened + [scored], key=lambda s: s.key)[:keep]
    if progress:
        progress(len(bounded), len(bounded))
    exact = [searcher.score(s.candidate, s.config.stage_layers) for s in screened]
    result.rejected_memory += sum(1 for s in exact if not s.estimate.fits)
    result.best = sorted((s for s in exact if s.estimate.fits), key=lambda s: s.key)[:top_k]
    if not result.best:
        result.closest = closest_plan(searcher, cands)
    return result


def screen_size(top_k: int) -> int:
    """How many screened plans the simulator re-prices: enough that the closed form's
    error (a few percent against the simulator) rarely changes the top k."""
    return max(3 * top_k, 12)


def closest_plan(searcher: Searcher, cands: list[Candidate]) -> Scored | None:
    """The candidate whose uniform split needs the least memory (what to show when nothing fits)."""
    def need(c: Candidate) -> tuple[float, Candidate]:
        n = math.ceil(searcher.model.num_layers / (c.pp * c.v))
        cfg = searcher.config(c, uniform_split(searcher.model.num_layers, c.pp * c.v))
        inflight = inflight_stage_microbatches(c.schedule, c.pp, c.v, c.num_microbatches)
        worst = max(
            rank_memory_if_uniform_gib(searcher.model, searcher.cluster, searcher.train, cfg, r, n, inflight[r], searcher.stack)
            for r in range(c.pp)
        )
        return worst, c

    if not cands:
        return None
    _, best = min(need(c) for c in cands)
    return searcher.score(best, uniform_split(searcher.model.num_layers, best.pp * best.v))
