"""Lower bounds of a candidate's exact price (step time and per-rank memory), cheap enough to
compute for every candidate of the space.

The exact price of a candidate and cut is ``estimate(...)`` with the event simulator
(``costmodels.estimate``). The bounds here are built from the same pieces the estimate
composes, each taken no larger than the estimate takes it, so they stay below it:

- time: the stage times of the cut's layers plus the embedding and the head from the
  same ``LayerTimes`` the estimate uses (the estimate adds ZeRO-3 gathers and p2p on
  top), run through ``costmodels.pipeline_bound``'s makespan bound; step >= makespan.
  Before a cut is chosen, ``any_cut_makespan_lower_bound_s`` covers every cut.
- memory: each rank's weights, gradients and optimizer state (``costmodels.memory.
  static_memory`` with the stack's gradient sharding, ``gradients_sharded``), its activation peak (the schedule's closed-form in-flight count,
  ``ScheduleSpec.peak_inflight``, times the rank's smallest stage), the allocator's
  fragmentation share of those bytes (``ClusterSpec.allocator_fragmentation``) and the
  runtime's reserve; the estimate adds transient, communication and ZeRO-3 buffers.

The search checks every exact price it computes against these bounds and counts any
violation (``SearchResult.bound_violations``), so a change of the cost model that
breaks one is seen, not silently trusted.
"""

from __future__ import annotations

import math
from functools import lru_cache

from costmodels.estimate import activation_variant, memory_limit_gib
from costmodels.layer_costs import LayerTimes, PassTimes
from costmodels.memory import (
    GIB,
    embedding_activation_bytes,
    gradients_sharded,
    head_activation_bytes,
    layer_activation_bytes,
    stage_params,
    static_memory,
)
from costmodels.pipeline_bound import any_cut_makespan_lower_bound_s, makespan_lower_bound_s, peak_inflight, stages_by_rank
from costmodels.simulator import StageTimes
from planner.search.space import Candidate
from profiles.schema import ClusterSpec, ModelSpec, TrainSpec
from profiles.stack_schema import StackSpec


class Bounds:
    """Lower bounds for the candidates of one search (model, cluster, train and layer times fixed)."""

    def __init__(
        self, model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, layers: LayerTimes, stack: StackSpec,
    ) -> None:
        self.model, self.cluster, self.train, self.layers, self.stack = model, cluster, train, layers, stack
        self.variant = activation_variant(cluster, train, stack.kernels)  # what the stack's kernels keep
        self.limit_gib = memory_limit_gib(cluster)
        self.allocated_factor = 1.0 + cluster.allocator_fragmentation
        self._passes = lru_cache(maxsize=None)(self._passes_uncached)
        self._activations = lru_cache(maxsize=None)(self._activations_uncached)
        self._static_bytes = lru_cache(maxsize=None)(self._static_bytes_uncached)

    # ---- pieces, cached per (tp, mbs, sp, recompute) or per stage shape
    def _passes_uncached(self, tp: int, mbs: int, sp: bool, recompute: str) -> tuple[PassTimes, PassTimes, PassTimes]:
        s = self.train.seq_len
        return (self.layers.transformer(tp, mbs, s, sp, recompute), self.layers.embedding(tp, mbs, s, sp),
                self.layers.head(tp, mbs, s, sp))

    def passes(self, c: Candidate) -> tuple[PassTimes, PassTimes, PassTimes]:
        """(transformer layer, embedding, head) F/B/W seconds per microbatch."""
        return self._passes(c.tp, c.mbs, c.sequence_parallel, c.recompute)

    def _activations_uncached(self, tp: int, mbs: int, sp: bool, recompute: str) -> tuple[float, float, float]:
        m, s, v = self.model, self.train.seq_len, self.variant
        return (layer_activation_bytes(m, s, mbs, tp, sp, recompute, v), embedding_activation_bytes(m, s, mbs, tp, sp, v),
                head_activation_bytes(m, s, mbs, tp, sp, v))

    def _static_bytes_uncached(self, layers: int, has_embedding: bool, has_head: bool, tp: int, pp: int, dp: int,
                               zero: int) -> float:
        params = stage_params(self.model, layers, has_embedding, has_head, tp)
        state = static_memory(params, self.train.precision, dp, zero, gradients_sharded(self.stack, pp, dp, zero),
                              self.stack.grad_accumulation_fp32)
        return state.weights_bytes + state.gradients_bytes + state.optimizer_bytes

    def _gib(self, allocated_bytes: float) -> float:
        return self.allocated_factor * allocated_bytes / GIB + self.cluster.runtime_reserved_gib

    # ---- before a cut is chosen
    def time_any_cut_s(self, c: Candidate) -> float:
        """Step time of ``c`` under any cut is at least this."""
        layer, emb, head = self.passes(c)
        return any_cut_makespan_lower_bound_s(c.schedule, c.pp, c.v, c.num_microbatches, layer, emb, head, self.model.num_layers)

    def memory_any_cut_gib(self, c: Candidate) -> float:
        """The worst rank of ``c`` under any cut needs at least this (a continuous relaxation over cuts:
        with one stage per rank, layers spread so that every rank needs the same; with several, each
        stage holds at least one layer)."""
        static = self._static_bytes(1, False, False, c.tp, c.pp, c.dp, c.zero)
        act = self._activations(c.tp, c.mbs, c.sequence_parallel, c.recompute)[0]
        counts = peak_inflight(c.schedule, c.pp, c.v, c.num_microbatches)
        layers = self.model.num_layers
        if c.v == 1:
            need = layers / sum(1.0 / (static + act * n) for n in counts)
        elif c.schedule == "looped-bfs":  # every forward of every local stage before the first backward
            need = (static + act * c.num_microbatches) * layers / c.pp
        else:
            need = max(static * math.ceil(layers / c.pp) + act * min(counts), static * c.v + act * max(counts))
        return self._gib(need)

    # ---- for a given cut
    def stage_times(self, c: Candidate, stage_layers: list[int]) -> StageTimes:
        """Stage times no larger than the estimate's: the layers, the embedding on the first stage
        and the head on the last; no p2p, no ZeRO-3 gathers."""
        layer, emb, head = self.passes(c)
        last = len(stage_layers) - 1

        def per_stage(attr: str) -> tuple[float, ...]:
            out = [n * getattr(layer, attr) for n in stage_layers]
            out[0] += getattr(emb, attr)
            out[last] += getattr(head, attr)
            return tuple(out)

        stages = len(stage_layers)
        return StageTimes(per_stage("forward_s"), per_stage("backward_input_s"), per_stage("backward_weight_s"),
                          (0.0,) * stages, (0.0,) * (stages - 1))

    def time_of_cut_s(self, c: Candidate, stage_layers: list[int]) -> float:
        """Step time of ``c`` with ``stage_layers`` is at least this."""
        return makespan_lower_bound_s(c.schedule, c.pp, c.v, c.num_microbatches, self.stage_times(c, stage_layers))

    def memory_of_cut_gib(self, c: Candidate, stage_layers: list[int]) -> list[float]:
        """Per pipeline rank, at least this many GiB with ``stage_layers``."""
        act_layer, act_emb, act_head = self._activations(c.tp, c.mbs, c.sequence_parallel, c.recompute)
        last = len(stage_layers) - 1
        counts = peak_inflight(c.schedule, c.pp, c.v, c.num_microbatches)
        out = []
        for rank, own in enumerate(stages_by_rank(c.schedule, c.pp, c.v)):
            static = sum(self._static_bytes(stage_layers[s], s == 0, s == last, c.tp, c.pp, c.dp, c.zero) for s in own)
            smallest = min(stage_layers[s] * act_layer + (act_emb if s == 0 else 0.0) + (act_head if s == last else 0.0)
                           for s in own)
            out.append(self._gib(static + counts[rank] * smallest))
        return out
