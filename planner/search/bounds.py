"""Lower bounds of a candidate's exact price (step time and per-rank memory), cheap enough to
compute for every candidate of the space.

The exact price of a candidate and cut is ``estimate(...)`` with the event simulator
(``costmodels.estimate``). The bounds here are built from the same pieces the estimate
composes, each taken no larger than the estimate takes it, so they stay below it:

- time: the stage times of the cut's layers plus the embedding and the head from the
  same ``LayerTimes`` the estimate uses (the estimate adds ZeRO-3 gathers and p2p on
  top; where the schedule does not split the backward, W less the split's measured excess as
  the estimate takes it, ``PassTimes.joined_backward``), run through ``costmodels.pipeline_bound``'s makespan bound; step >= makespan.
  Before a cut is chosen, ``any_cut_makespan_lower_bound_s`` covers every cut (a model
  with dense and mixture-of-experts layers: per layer the faster kind's F, B and W, and
  the exact sum over all layers). Where the stack overlaps consecutive steps (a post-validated
  optimizer step, ``costmodels.steady_state``) the step is a period, not a makespan, and only the
  busiest rank's work bounds it.
- memory: each rank's weights, gradients and optimizer state (``costmodels.memory.
  stack_static_memory``: the gradients as the stack keeps them, as the estimate takes them; dense parameters over
  dp x cp, routed experts over dp x cp / ep; where torch's runtime keeps three of a rank's v stages unsharded at a
  time, 3/v of its weights, ``Bounds.weights_share``, at most the three largest stages' the estimate takes), its
  activation peak (the schedule's closed-form in-flight
  count, ``ScheduleSpec.peak_inflight``, times the rank's smallest stage with the stage's output
  where torch's pipelining keeps it; before a cut, per layer the lighter kind), the allocator's
  fragmentation share of those bytes (``costmodels.rank_memory.allocator_share``: the stack's fitted share on GPUs,
  else ``ClusterSpec.allocator_fragmentation``), the
  heap a communicating rank keeps on top (``heap_reserve_gib``) and the
  runtime's reserve; the estimate adds transient, communication and ZeRO-3 buffers.

The search checks every exact price it computes against these bounds and counts any
violation (``SearchResult.bound_violations``), so a change of the cost model that
breaks one is seen, not silently trusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

from costmodels.communicators import communicator_gib, communicators_of_rank
from costmodels.layer_costs import LayerTimes, PassTimes
from costmodels.memory import (
    GIB,
    embedding_activation_bytes,
    evicts_unsharded_stages,
    gradients_held_per_stage,
    layer_activation_bytes,
    saved_weight_copy_bytes,
    stack_static_memory,
    stage_output_bytes,
    stage_param_split,
)
from costmodels.mtp import head_with_mtp_activation_bytes, head_with_mtp_times
from costmodels.params import moe_layers_in
from costmodels.pipeline_bound import (
    any_cut_makespan_lower_bound_s,
    held_alive_at_peak,
    held_lower_bound,
    makespan_lower_bound_s,
    peak_inflight,
    stages_by_rank,
)
from costmodels.rank_memory import allocator_share, heap_reserve_gib, memory_limit_gib
from costmodels.runtime_costs import pricing_network, runtime_costs_of
from costmodels.schedules.fsdp_lowering import MAX_ACTIVE_STAGES
from costmodels.schedules.registry import schedule_spec
from costmodels.simulator import StageTimes
from costmodels.stage_plan import activation_variant, sp_regather_passes
from planner.search.space import Candidate
from profiles.schema import ClusterSpec, ModelSpec, TrainSpec, expert_data_ranks
from profiles.stack_schema import StackSpec


@dataclass(frozen=True)
class LayerPasses:
    """Per-microbatch F/B/W seconds of one candidate's layers: ``dense`` and ``moe`` transformer layers
    (None where the model has no layer of that kind), the embedding and the head."""

    dense: PassTimes | None
    moe: PassTimes | None
    embedding: PassTimes
    head: PassTimes
    # ``layers``' sums by (dense, MoE) layer count, this instance's own (the searcher asks for the same counts per cut)
    _sums: dict[tuple[int, int], PassTimes] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def layer(self) -> PassTimes:
        """The model's most common layer (its MoE layers when it has any): what cut points balance."""
        layer = self.moe if self.moe is not None else self.dense
        assert layer is not None  # a model has at least one layer
        return layer

    @property
    def fastest(self) -> PassTimes:
        """No slower in F, B and W than any layer of the model."""
        kinds = [k for k in (self.dense, self.moe) if k is not None]
        return PassTimes(*(min(getattr(k, f) for k in kinds) for f in ("forward_s", "backward_input_s", "backward_weight_s")))

    def without_split_excess(self) -> "LayerPasses":
        """Each piece's W no larger than as split or as one autograd call (``PassTimes.joined_backward``)."""
        def low(p: PassTimes) -> PassTimes:
            return replace(p, backward_weight_s=p.backward_weight_s - max(0.0, p.split_backward_extra_s))
        return LayerPasses(*(low(p) if p is not None else None for p in (self.dense, self.moe)),
                           low(self.embedding), low(self.head))

    def layers(self, num_dense: int, num_moe: int) -> PassTimes:
        """F/B/W of ``num_dense`` dense and ``num_moe`` MoE layers together."""
        out = self._sums.get((num_dense, num_moe))
        if out is None:
            out = PassTimes(0.0, 0.0, 0.0)
            for count, kind in ((num_dense, self.dense), (num_moe, self.moe)):
                if count and kind is not None:
                    out = out.plus(kind.scaled(count))
            self._sums[num_dense, num_moe] = out
        return out


class Bounds:
    """Lower bounds for the candidates of one search (model, cluster, train and layer times fixed)."""

    def __init__(
        self, model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, layers: LayerTimes, stack: StackSpec,
    ) -> None:
        self.model, self.cluster, self.train, self.layers, self.stack = model, cluster, train, layers, stack
        self.variant = activation_variant(cluster, train, stack)  # what the stack's kernels keep
        # ... where a plan keeps its sequence-parallel inputs as shards (ParallelConfig.sp_regather)
        self.shards_variant = self.variant.with_input_shards()
        self.network = pricing_network(cluster, runtime_costs_of(layers, cluster))  # the estimate's
        self.limit_gib = memory_limit_gib(cluster)
        self.num_moe = model.num_moe_layers
        self.num_dense = model.num_layers - self.num_moe
        self._passes = lru_cache(maxsize=None)(self._passes_uncached)
        self._activations = lru_cache(maxsize=None)(self._activations_uncached)
        self._state = lru_cache(maxsize=None)(self._state_uncached)
        self._floor = lru_cache(maxsize=None)(self._floor_uncached)
        self._any_cut_passes = lru_cache(maxsize=None)(self._any_cut_passes_uncached)
        self._nccl = lru_cache(maxsize=None)(self._nccl_uncached)
        self._per_communicator_gib = communicator_gib(cluster)

    # ---- pieces, cached per (tp, mbs, sp, recompute, cp, ep) or per stage shape
    def _passes_uncached(self, tp: int, mbs: int, sp: bool, recompute: str, cp: int, ep: int,
                         split_backward: bool, etp: int, ep_overlap: bool = False, regather: bool = False) -> LayerPasses:
        """``ep_overlap``: the schedule merges passes, priced as if all were (hiding the most: a lower bound);
        ``regather``: the plan keeps its sequence-parallel inputs as shards (the estimate's ``sp_regather_passes``)."""
        s, times = self.train.seq_len, self.layers
        again = sp_regather_passes(self.model, self.train, self.cluster, self.network, tp, mbs, cp, recompute,
                                   sequence_parallel=sp, sp_regather=regather)
        dense = times.transformer(tp, mbs, s, sp, recompute, cp=cp, ep=ep, moe=False).plus(again) if self.num_dense else None
        moe = times.transformer(tp, mbs, s, sp, recompute, cp=cp, ep=ep, moe=True, etp=etp,
                                ep_overlap=1.0 if ep_overlap else 0.0).plus(again) if self.num_moe else None
        head = head_with_mtp_times(times, self.model, tp, mbs, s, sp, recompute, cp=cp, ep=ep, etp=etp,
                                   ep_overlap=1.0 if ep_overlap else 0.0)
        passes = LayerPasses(dense, moe, times.embedding(tp, mbs, s, sp, cp=cp), head)
        if split_backward:
            return passes
        # the estimate takes the split's measured excess off each stage's W (``estimate._stage_costs``)
        return LayerPasses(*(p.joined_backward() if p is not None else None
                             for p in (passes.dense, passes.moe, passes.embedding, passes.head)))

    def _pass_key(self, c: Candidate) -> tuple:
        spec = schedule_spec(c.schedule)
        return (c.tp, c.mbs, c.sequence_parallel, c.recompute, c.cp, c.ep, spec.split_backward, c.etp,
                spec.overlaps_expert_comm, c.sp_regather)

    def layer_passes(self, c: Candidate) -> LayerPasses:
        return self._passes(*self._pass_key(c))

    def _any_cut_passes_uncached(self, first_stage_joined: bool, *key: object) -> LayerPasses:
        """A candidate's layer passes (per ``_pass_key``) as any cut may run them: where the estimate runs the first
        stage's backward as one autograd call (``_first_stage_joined``), any layer may be on that stage, so each W is
        the smaller of the two (``LayerPasses.without_split_excess``)."""
        lp = self._passes(*key)
        return lp.without_split_excess() if first_stage_joined else lp

    def passes(self, c: Candidate) -> tuple[PassTimes, PassTimes, PassTimes]:
        """(transformer layer, embedding, head) F/B/W seconds per microbatch (the model's most common layer)."""
        lp = self.layer_passes(c)
        return lp.layer, lp.embedding, lp.head

    def _activations_uncached(self, tp: int, mbs: int, sp: bool, recompute: str, cp: int,
                              ep: int, etp: int, regather: bool = False) -> tuple[float, float, float, float]:
        """(dense layer, MoE layer, embedding, head with any multi-token prediction modules) bytes kept per microbatch;
        ``regather``: the plan keeps its sequence-parallel inputs as shards."""
        m, s, v = self.model, self.train.seq_len, self.shards_variant if regather else self.variant
        dense = layer_activation_bytes(m, s, mbs, tp, sp, recompute, v, cp=cp, ep=ep) if self.num_dense else math.inf
        moe = layer_activation_bytes(m, s, mbs, tp, sp, recompute, v, cp=cp, ep=ep, moe=True, etp=etp) if self.num_moe else math.inf
        head = head_with_mtp_activation_bytes(m, s, mbs, tp, sp, recompute, v, cp=cp, ep=ep, etp=etp)
        # autocast's weight copies per layer and head, as ``costmodels.stage_plan.plan_stage`` counts them
        dense += saved_weight_copy_bytes(m, v, 0, 1, False, tp, ep, recompute, "dense", etp) if self.num_dense else 0.0
        moe += saved_weight_copy_bytes(m, v, 0, 1, False, tp, ep, recompute, "moe", etp) if self.num_moe else 0.0
        head += saved_weight_copy_bytes(m, v, 0, 0, True, tp, ep, recompute, None, etp)
        return (dense, moe, embedding_activation_bytes(m, s // cp, mbs, tp, sp, v), head)

    def _state_uncached(self, first_layer: int, layers: int, has_embedding: bool, has_head: bool, tp: int, pp: int,
                        dp: int, zero: int, cp: int, ep: int, etp: int, split_backward: bool,
                        layer_kind: str | None = None, weights_share: float = 1.0) -> tuple[float, float]:
        """A stage's (weights and optimizer state, gradients) as the stack keeps them, its weights at
        ``weights_share`` (``weights_share``)."""
        params = stage_param_split(self.model, first_layer, layers, has_embedding, has_head, tp, ep, layer_kind, etp)
        state = stack_static_memory(self.stack, params.dense, params.expert, self.train.precision, pp, dp * cp, ep, zero,
                                    split_backward, expert_data_ranks(tp, cp, dp, ep, etp))
        return state.weights_bytes * weights_share + state.optimizer_bytes, state.gradients_bytes

    def _static_bytes(self, first_layer: int, layers: int, has_embedding: bool, has_head: bool, tp: int, pp: int,
                      dp: int, zero: int, cp: int, ep: int, etp: int, split_backward: bool,
                      layer_kind: str | None = None, gradients: bool = True, weights_share: float = 1.0) -> float:
        """A stage's weights, gradients and optimizer state; not the gradients where ``gradients`` is False
        (``_gradients_at_peak``)."""
        rest, grads = self._state(first_layer, layers, has_embedding, has_head, tp, pp, dp, zero, cp, ep, etp,
                                  split_backward, layer_kind, weights_share)
        return rest + grads if gradients else rest

    def unsharded_share(self, c: Candidate) -> float:
        """At most the share of its unsharded weights a rank of ``c`` holds at once: where torch's runtime evicts
        unsharded stages (``costmodels.memory.evicts_unsharded_stages``) ``MAX_ACTIVE_STAGES`` of
        its ``v`` stages, which hold at least that share of them whatever the cut (the estimate takes the largest
        three: ``costmodels.memory.unsharded_weights_share``); else 1."""
        if not evicts_unsharded_stages(self.stack, c.pp, c.v, c.dp * c.cp, c.zero, self.train.precision):
            return 1.0
        return MAX_ACTIVE_STAGES / c.v

    def weights_share(self, c: Candidate) -> float:
        """The share of the static weights (``stack_static_memory``) the bounds take: ``unsharded_share`` below
        ZeRO 3, where they are the unsharded copy; 1 at ZeRO 3, where they are the shards every stage keeps (the
        gathered copies, and an fp32 run's shards below ZeRO 3, are not in the bounds)."""
        return self.unsharded_share(c) if c.zero < 3 else 1.0

    def _gradients_at_peak(self, c: Candidate) -> bool:
        """Whether a rank of ``c`` holds all its stages' gradients at its peak: unless they live per stage
        (``gradients_held_per_stage``) on ranks of several stages whose schedule may free one stage's before
        another's appear (``costmodels.pipeline_bound.held_alive_at_peak``)."""
        return (held_alive_at_peak(c.schedule, c.pp, c.v, c.num_microbatches)
                or not gradients_held_per_stage(self.stack, c.pp, c.dp * c.cp, c.zero, self.train.precision))

    def _gib(self, allocated_bytes: float, c: Candidate, rank: int | None = None) -> float:
        """GiB of a rank of ``c`` that allocates ``allocated_bytes``: pipeline rank ``rank``, or (None) any
        of them, whose NCCL buffers are then the fewest any rank holds."""
        return ((1.0 + allocator_share(self.cluster, self.stack)) * allocated_bytes / GIB + self.cluster.runtime_reserved_gib
                + heap_reserve_gib(self.cluster, c.tp, c.pp, c.dp * c.cp, c.zero, allocated_bytes / GIB,
                                   c.num_microbatches)
                + self._nccl_gib(c, rank))

    def _nccl_gib(self, c: Candidate, rank: int | None) -> float:
        if not self._per_communicator_gib:
            return 0.0
        return self._nccl(c.tp, c.cp, c.dp, c.ep, c.etp, c.pp, c.v, c.schedule, rank)

    def _nccl_uncached(self, tp: int, cp: int, dp: int, ep: int, etp: int, pp: int, v: int, schedule: str,
                       rank: int | None) -> float:
        expert_data = expert_data_ranks(tp, cp, dp, ep, etp)
        return self._per_communicator_gib * communicators_of_rank(
            self.model.tie_embeddings, tp=tp, cp=cp, dp=dp, ep=ep, expert_data=expert_data, pp=pp, v=v,
            schedule=schedule, rank=rank)

    def _layer_floor(self, c: Candidate) -> tuple[float, float]:
        """(static, activation) bytes per layer no larger than any of the model's layers needs."""
        return self._floor(c.tp, c.cp, c.ep, c.pp, c.dp, c.mbs, c.sequence_parallel, c.recompute, c.zero, c.etp,
                           schedule_spec(c.schedule).split_backward, self._gradients_at_peak(c), self.weights_share(c),
                           c.sp_regather)

    def _floor_uncached(self, tp: int, cp: int, ep: int, pp: int, dp: int, mbs: int, sp: bool, recompute: str,
                        zero: int, etp: int, split_backward: bool, gradients: bool = True,
                        weights_share: float = 1.0, regather: bool = False) -> tuple[float, float]:
        kinds = [k for k, n in (("dense", self.num_dense), ("moe", self.num_moe)) if n]
        static = min(self._static_bytes(0, 1, False, False, tp, pp, dp, zero, cp, ep, etp, split_backward, k, gradients,
                                        weights_share)
                     for k in kinds)
        dense, moe, _, _ = self._activations(tp, mbs, sp, recompute, cp, ep, etp, regather)
        return static, min(dense, moe)

    # ---- before a cut is chosen
    def _first_stage_joined(self, c: Candidate) -> bool:
        """Whether the estimate runs the first stage's backward as one autograd call under a split-backward schedule
        (torch's pipeline runs its whole backward as W: ``estimate._stage_costs``)."""
        return schedule_spec(c.schedule).split_backward and self.stack.pipeline_runtime == "torch"

    def time_any_cut_s(self, c: Candidate) -> float:
        """Step time of ``c`` under any cut is at least this."""
        lp = self._any_cut_passes(self._first_stage_joined(c), *self._pass_key(c))
        overlap = self.steps_overlap(c)
        if lp.moe is None or lp.dense is None:
            return any_cut_makespan_lower_bound_s(c.schedule, c.pp, c.v, c.num_microbatches, lp.layer, lp.embedding,
                                                  lp.head, self.model.num_layers, steps_overlap=overlap)
        return any_cut_makespan_lower_bound_s(c.schedule, c.pp, c.v, c.num_microbatches, lp.fastest, lp.embedding,
                                              lp.head, self.model.num_layers, lp.layers(self.num_dense, self.num_moe),
                                              steps_overlap=overlap)

    def steps_overlap(self, c: Candidate) -> bool:
        """Whether ``c``'s steps overlap (a post-validated optimizer step): then only the busiest rank's work
        bounds the step, not the makespan (``costmodels.steady_state``)."""
        return self.stack.steps_overlap(c.schedule, self.train.precision)

    def memory_any_cut_gib(self, c: Candidate) -> float:
        """The worst rank of ``c`` under any cut needs at least this (a continuous relaxation over cuts:
        with one stage per rank, layers spread so that every rank needs the same; with several, each
        stage holds at least one layer except the end stages, which may hold the embedding or the
        head alone)."""
        static, act = self._layer_floor(c)
        counts = peak_inflight(c.schedule, c.pp, c.v, c.num_microbatches)
        layers = self.model.num_layers
        if c.v == 1:
            need = layers / sum(1.0 / (static + act * n) for n in counts)
        elif c.schedule == "looped-bfs":  # every forward of every local stage before the first backward
            need = (static + act * c.num_microbatches) * layers / c.pp
        else:  # the end stages may hold no layer (``end_stage_floors``): a rank holding one keeps a layer fewer,
            # and its smallest stage's activations (the embedding's or the head's alone) are not counted
            last = c.pp * c.v - 1
            per_rank = [static * (c.v - sum(s in (0, last) for s in own)) + (0.0 if 0 in own or last in own else act * n)
                        for own, n in zip(stages_by_rank(c.schedule, c.pp, c.v), counts)]
            need = max(static * math.ceil(layers / c.pp), *per_rank)
        return self._gib(need, c)

    # ---- for a given cut
    def _kinds(self, stage_layers: list[int]) -> list[tuple[int, int, int]]:
        """(first layer, dense layers, MoE layers) of each stage."""
        out, first = [], 0
        for n in stage_layers:
            moe = moe_layers_in(self.model, first, n)
            out.append((first, n - moe, moe))
            first += n
        return out

    def stage_times(self, c: Candidate, stage_layers: list[int]) -> StageTimes:
        """Stage times no larger than the estimate's: the layers, the embedding on the first stage
        and the head on the last; no p2p, no ZeRO-3 gathers."""
        lp = self.layer_passes(c)
        last = len(stage_layers) - 1
        per_stage = [lp.layers(dense, moe) for _, dense, moe in self._kinds(stage_layers)]
        per_stage[0] = per_stage[0].plus(lp.embedding)
        per_stage[last] = per_stage[last].plus(lp.head)
        if self._first_stage_joined(c):
            per_stage[0] = per_stage[0].joined_backward()
        stages = len(stage_layers)
        return StageTimes(tuple(st.forward_s for st in per_stage), tuple(st.backward_input_s for st in per_stage),
                          tuple(max(0.0, st.backward_weight_s) for st in per_stage), (0.0,) * stages, (0.0,) * (stages - 1))

    def time_of_cut_s(self, c: Candidate, stage_layers: list[int]) -> float:
        """Step time of ``c`` with ``stage_layers`` is at least this."""
        return makespan_lower_bound_s(c.schedule, c.pp, c.v, c.num_microbatches, self.stage_times(c, stage_layers),
                                      self.steps_overlap(c))

    def memory_of_cut_gib(self, c: Candidate, stage_layers: list[int]) -> list[float]:
        """Per pipeline rank, at least this many GiB with ``stage_layers``."""
        act_dense, act_moe, act_emb, act_head = self._activations(c.tp, c.mbs, c.sequence_parallel, c.recompute, c.cp, c.ep,
                                                                  c.etp, c.sp_regather)
        last = len(stage_layers) - 1
        kinds = self._kinds(stage_layers)
        counts = peak_inflight(c.schedule, c.pp, c.v, c.num_microbatches)

        out_hidden, out_logits = (stage_output_bytes(self.model, self.train.seq_len // c.cp, c.mbs, c.tp, c.sequence_parallel,
                                                     self.variant, head) if self.variant.keeps_stage_output_at(c.pp) else 0.0
                                 for head in (False, True))

        def stage_act(s: int) -> float:
            _, dense, moe = kinds[s]
            act = (dense * act_dense if dense else 0.0) + (moe * act_moe if moe else 0.0)
            return act + (act_emb if s == 0 else 0.0) + (act_head + out_logits if s == last else out_hidden)

        out, split = [], schedule_spec(c.schedule).split_backward
        gradients, share = self._gradients_at_peak(c), self.weights_share(c)
        for rank, own in enumerate(stages_by_rank(c.schedule, c.pp, c.v)):
            shapes = [(kinds[s][0], stage_layers[s], s == 0, s == last, c.tp, c.pp, c.dp, c.zero, c.cp, c.ep, c.etp, split)
                      for s in own]
            static = sum(self._static_bytes(*shape, None, gradients, share) for shape in shapes)
            smallest = min(stage_act(s) for s in own)
            if not gradients:  # the gradients alive at the peak, at least (costmodels.pipeline_bound.held_lower_bound)
                static += held_lower_bound([self._state(*shape)[1] for shape in shapes], smallest)
            out.append(self._gib(static + counts[rank] * smallest, c, rank))
        return out
