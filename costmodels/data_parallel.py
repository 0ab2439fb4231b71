"""Data-parallel traffic of one pipeline rank and how much of it its stack hides.

Once per step a rank reduces its gradients over its DP group (an all-reduce, or a
reduce-scatter under ZeRO >= 1) and, under ZeRO-1/2, gathers its updated parameters back
(Rajbhandari et al. 2020, Sec. 5); under ZeRO-3 the parameters are gathered per microbatch
instead (``stage_zero3_gather_s``). The group is hierarchical over the node boundary
(``costmodels.comm.collective_s``) and shares its nodes' NICs with the other DP groups of
the same stage, which reduce at the same time.

A stage's traffic moves as several collectives, each paying its ring's latency
(``collective_pieces``): one per FSDP2 unit (torchtitan and ppplan's runtime wrap every
transformer block), one per Megatron-Core DDP bucket, one coalesced buffer on Megatron-LM 2021
and DeepSpeed. The collectives of a rank run one after another on one communication stream, beside the
compute (``_reduce_queue``, ``_gather_queue``). When each virtual stage's may start is the
stack's (``StackSpec.overlap``), from the simulated times of the stage's actions:

- ``dp_grad_reduce: bucketed`` (Megatron-Core ``--overlap-grad-reduce``): buckets of
  ``max(dp_bucket_params, dp_bucket_params_per_dp_rank * dp)`` parameters leave as the
  stage's last backward produces them (one model chunk after another under interleaving),
  so the reduce may start when that backward starts and its last bucket when it ends.
  Megatron-Core turns bucketing off for a rank's model chunks after its first
  (``dp_later_chunks_one_bucket``): each of those moves as one bucket once its last backward ends;
- ``dp_grad_reduce: after_backward`` (torch pipelining's REDUCE_GRAD after a stage's last
  backward): when the stage's last backward ends;
- ``dp_grad_reduce: after_schedule`` (Megatron-LM 2021 ``allreduce_gradients`` after the
  whole schedule; DeepSpeed's final ReduceGrads): when the rank's last action ends.

Whatever the queue has not finished when the rank's last action ends is exposed. The
parameter gather (ZeRO-1/2) opens the next step: ``param_gather: overlapped``
(``--overlap-param-gather``, FSDP2 prefetch) streams stage by stage from the step's start,
each stage needing its first bucket when its first forward starts and the rest by that
forward's end; ``after_step`` (Megatron-LM 2022 distributed optimizer) gathers everything
before the step. On a node whose cores both compute and move the bytes
(``comm_overlaps_compute`` false) nothing hides: all of it is exposed.

What hides is not free: the compute that runs beside a collective runs slower
(``costmodels.overlap``), so a hidden second of traffic still costs ``contention_s`` of it
(``overlapped_pass_s`` for the traffic inside a pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from costmodels.comm import Collective, GroupPlacement, Network, collective_s, placement_of
from costmodels.layout import StageLayout
from costmodels.overlap import comm_overlaps_compute, contention_s
from costmodels.rank_grid import RankGrid
from profiles.schema import ClusterSpec, ParallelConfig
from profiles.stack_schema import StackOverlap


def dp_placement(cluster: ClusterSpec, cfg: ParallelConfig, pipeline_rank: int) -> GroupPlacement:
    """The group dense gradients are averaged over: the dp x cp ranks of (pipeline rank, tp rank 0)
    on the rank grid (``RankGrid.data_context_group``: Megatron-Core's data-parallel group with context
    parallelism, torchtitan's ``dp_shard_cp``, ppplan's runtime alike); every rank of a node it spans
    belongs to such a group of the same stage that reduces at the same time (they share the NICs)."""
    return _dp_placement(cfg.tp, cfg.pp, cfg.dp, cfg.cp, cluster.gpus_per_node, pipeline_rank, 1)


def edp_placement(cluster: ClusterSpec, cfg: ParallelConfig, pipeline_rank: int) -> GroupPlacement:
    """The group a routed expert's gradients are averaged over: the ``tp·dp·cp / (ep·etp)`` ranks holding
    the same experts (``RankGrid.edp_group``, Megatron-Core's expert-data-parallel group; dp·cp / ep
    with expert TP = tp)."""
    return _dp_placement(cfg.tp, cfg.pp, cfg.dp, cfg.cp, cluster.gpus_per_node, pipeline_rank, cfg.ep, cfg.expert_tp)


def experts_reduced_apart(cfg: ParallelConfig) -> bool:
    """Routed experts' gradients go over their own group, not the dense dp x cp one: with expert
    parallelism, or with expert TP 1 under tp > 1 (every tp rank then holds whole experts)."""
    return cfg.ep > 1 or cfg.expert_tp != cfg.tp


def syncs_gradients(cfg: ParallelConfig) -> bool:
    """A rank reduces gradients with others: over its dp x cp group, or its experts over their own group
    (with expert TP 1 that group holds tp ranks even without data parallelism). Where the experts reduce
    with the dense weights their group is the dp x cp one, so the larger of the two decides."""
    return max(cfg.dp * cfg.cp, cfg.expert_data_ranks) > 1


@lru_cache(maxsize=4096)
def _dp_placement(tp: int, pp: int, dp: int, cp: int, gpus_per_node: int, pipeline_rank: int, ep: int,
                  etp: int | None = None) -> GroupPlacement:
    grid = RankGrid(tp, pp, dp, cp)
    apart = ep > 1 or (etp is not None and etp != tp)
    group = grid.edp_group(pipeline_rank, 0, 0, ep, etp) if apart else grid.data_context_group(pipeline_rank, 0)
    return placement_of(group, gpus_per_node, min(gpus_per_node, tp * cp * dp))


def bucket_params(overlap: StackOverlap, data_ranks: int) -> float:
    """Parameters per DP bucket (Megatron-Core: max(40M, 1M x dp x cp), training.py get_model);
    ``data_ranks`` is dp x cp."""
    return float(max(overlap.dp_bucket_params, overlap.dp_bucket_params_per_dp_rank * data_ranks))


def collective_pieces(overlap: StackOverlap, params: float, units: int, data_ranks: int) -> int:
    """How many collectives carry ``params`` over a data-parallel group: FSDP2 (torch's REDUCE_GRAD,
    ``after_backward``) one per ``fully_shard`` unit, ``units``; Megatron-Core's DDP (``bucketed``) one
    per bucket of ``bucket_params`` (distributed/param_and_grad_buffer.py; expert gradients fill buckets
    of their own); Megatron-LM 2021 and DeepSpeed's engine one coalesced buffer (``after_schedule``)."""
    if params <= 0:
        return 1
    if overlap.dp_grad_reduce == "after_backward":
        return max(1, units)
    if overlap.dp_grad_reduce == "bucketed":
        return max(1, math.ceil(params / bucket_params(overlap, data_ranks)))
    return 1


@dataclass(frozen=True)
class StageUnits:
    """A stage's FSDP2 units (``fsdp_units_of``): ``dense`` for its blocks and the root, ``experts`` for the
    routed experts of its MoE layers, which ppplan's runtime and torchtitan wrap on their own (the
    experts' mesh; launch/runtime/fsdp.py, torchtitan ``apply_fsdp``)."""

    dense: int = 1
    experts: int = 0


def fsdp_units_of(layout: StageLayout, moe_layers: int) -> StageUnits:
    """One unit per transformer block and one for the stage's root when it holds the embedding or the
    head (ppplan's runtime: ``fully_shard`` per layer, then on the stage; torchtitan wraps the embedding
    and the norm with the head apart, one piece more at pp = 1, and ppplan's runtime each MoE layer's
    router and shared experts apart: neither counted); one per MoE layer's experts."""
    return StageUnits(layout.num_layers + (1 if layout.has_embedding or layout.has_head else 0), moe_layers)


def stage_pieces(overlap: StackOverlap, cfg: ParallelConfig, dense_params: float, expert_params: float,
                 units: StageUnits) -> tuple[int, int]:
    """(pieces of the dense traffic, pieces of the experts' on their own group): with the experts reduced
    beside the dense weights (``experts_reduced_apart`` false) one count covers both, their units added."""
    data_ranks = cfg.dp * cfg.cp
    if not experts_reduced_apart(cfg):
        return collective_pieces(overlap, dense_params + expert_params, units.dense + units.experts, data_ranks), 0
    return (collective_pieces(overlap, dense_params, units.dense, data_ranks),
            collective_pieces(overlap, expert_params, units.experts, data_ranks))


def pieces_s(collective: Collective, num_bytes: float, pieces: int, placement: GroupPlacement,
             network: Network) -> float:
    """``num_bytes`` moved as ``pieces`` equal collectives one after another: every piece pays the ring's
    latency (``costmodels.comm.collective_s``), the bytes once."""
    return pieces * collective_s(collective, num_bytes / pieces, placement, network) if num_bytes > 0 else 0.0


def _stage_dp_collective_s(collective: Collective, cluster: ClusterSpec, cfg: ParallelConfig, pipeline_rank: int,
                           dense_params: float, expert_params: float, bytes_per_param: float, network: Network,
                           pieces: tuple[int, int] = (1, 1)) -> float:
    """A stage's parameters in ``pieces`` collectives (``stage_pieces``): its dense ones over the dp x cp
    group, its routed experts over theirs (``edp_placement``; with the dense ones when ep = 1, not at all
    when their group is one rank)."""
    dense_group = dp_placement(cluster, cfg, pipeline_rank)
    if not experts_reduced_apart(cfg):
        return pieces_s(collective, (dense_params + expert_params) * bytes_per_param, pieces[0], dense_group, network)
    seconds = pieces_s(collective, dense_params * bytes_per_param, pieces[0], dense_group, network)
    if cfg.expert_data_ranks > 1:
        seconds += pieces_s(collective, expert_params * bytes_per_param, pieces[1],
                            edp_placement(cluster, cfg, pipeline_rank), network)
    return seconds


def stage_zero3_gather_s(cluster: ClusterSpec, cfg: ParallelConfig, pipeline_rank: int, dense_params: float,
                         expert_params: float, bytes_per_element: int, network: Network,
                         pieces: tuple[int, int] = (1, 1)) -> float:
    """A stage's ZeRO-3 parameter all-gather in ``pieces`` collectives (``stage_pieces``), dense and
    expert groups apart (per microbatch in F, again in B: FSDP2 with ``reshard_after_forward=True`` frees
    them after each forward; Rajbhandari et al. 2020, Sec. 5.3; how many a step runs under torch's pipelining:
    ``costmodels.microbatch_dp.zero3_gathers_per_microbatch``)."""
    return _stage_dp_collective_s("all_gather", cluster, cfg, pipeline_rank, dense_params, expert_params,
                                  bytes_per_element, network, pieces)


def stage_reduce_scatter_s(cluster: ClusterSpec, cfg: ParallelConfig, pipeline_rank: int, dense_params: float,
                           expert_params: float, bytes_per_param: float, network: Network,
                           pieces: tuple[int, int] = (1, 1)) -> float:
    """A stage's gradient reduce-scatter (``bytes_per_param`` each) in ``pieces`` collectives, dense and
    expert groups apart."""
    return _stage_dp_collective_s("reduce_scatter", cluster, cfg, pipeline_rank, dense_params, expert_params,
                                  bytes_per_param, network, pieces)


@dataclass(frozen=True)
class StageWindow:
    """A virtual stage of the rank as the simulation ran it: its parameters (per rank: dense, and
    routed experts reduced over their own group), when its first forward starts and how long one
    forward takes, when its last backward ends and how long that backward (B + W) takes, and its
    model chunk: its place among the rank's stages, 0 for the rank's first (Megatron's model chunk)."""

    params: float
    first_forward_s: float
    forward_s: float
    last_backward_end_s: float
    backward_s: float
    expert_params: float = 0.0
    units: StageUnits = StageUnits()
    chunk: int = 0


@dataclass(frozen=True)
class RankSync:
    """Once-per-step data-parallel traffic of one pipeline rank (seconds): the gradient reduce
    and the parameter gather, each in total and the part its stack leaves exposed (the
    reduce after the rank's last action, the gather as a delay of the step's start)."""

    grad_reduce_s: float = 0.0
    grad_reduce_exposed_s: float = 0.0
    param_gather_s: float = 0.0
    param_gather_exposed_s: float = 0.0


@dataclass(frozen=True)
class _Transfer:
    earliest_s: float  # may start
    last_piece_s: float  # its last bucket may start
    total_s: float
    last_bucket_s: float


def _reduce_queue(transfers: list[_Transfer]) -> float:
    """When one stream that runs ``transfers`` in order finishes."""
    clock = 0.0
    for t in sorted(transfers, key=lambda t: (t.last_piece_s, t.earliest_s)):
        start = max(clock, t.earliest_s)
        clock = max(start + t.total_s, t.last_piece_s + t.last_bucket_s)
    return clock


def _gather_delay_s(stages: list[StageWindow], gathers: list[tuple[float, float]]) -> float:
    """How long the step's start waits for gathers streamed from time 0 in first-forward order:
    each stage needs its first bucket when its first forward starts and all of it by its end."""
    clock, delay = 0.0, 0.0
    for st, (total, first) in sorted(zip(stages, gathers), key=lambda x: x[0].first_forward_s):
        late_first = clock + first - st.first_forward_s
        clock += total
        delay = max(delay, late_first, clock - (st.first_forward_s + st.forward_s))
    return delay


def rank_sync(
    cluster: ClusterSpec, cfg: ParallelConfig, overlap: StackOverlap, network: Network, pipeline_rank: int,
    stages: list[StageWindow], rank_end_s: float, precision_bytes: int, grad_bytes: int, timing_known: bool = True,
) -> RankSync:
    """The rank's gradient reduce and parameter gather, and what of them ``overlap`` exposes
    (module docstring). Without the stages' simulated times (``timing_known`` false: a pricer
    that bounds the pipeline instead of simulating it) the exposed parts are lower bounds
    (``_exposed_floor``)."""
    if not syncs_gradients(cfg) or not stages:
        return RankSync()
    placement = dp_placement(cluster, cfg, pipeline_rank)
    kind: Collective = "all_reduce" if cfg.zero == 0 else "reduce_scatter"
    hides = comm_overlaps_compute(cluster)
    pieces = [(1, 1) if one_bucket(overlap, st) else stage_pieces(overlap, cfg, st.params, st.expert_params, st.units)
              for st in stages]

    def moved_s(collective: Collective, st: StageWindow, st_pieces: tuple[int, int], bytes_per_param: int) -> float:
        return _stage_dp_collective_s(collective, cluster, cfg, pipeline_rank, st.params, st.expert_params,
                                      bytes_per_param, network, st_pieces)

    def last_piece_s(collective: Collective, st: StageWindow, st_pieces: tuple[int, int], bytes_per_param: int) -> float:
        """One dense piece: the bucket that ends the reduce, the unit the gather starts with (equal pieces:
        the embedding's, larger in truth, is not sized apart)."""
        return collective_s(collective, _dense_params(st, cfg) / st_pieces[0] * bytes_per_param, placement, network)

    transfers = []
    for st, st_pieces in zip(stages, pieces):
        total = moved_s(kind, st, st_pieces, grad_bytes)
        last = last_piece_s(kind, st, st_pieces, grad_bytes)
        if not hides or overlap.dp_grad_reduce == "after_schedule":
            transfers.append(_Transfer(rank_end_s, rank_end_s, total, total))
        elif overlap.dp_grad_reduce == "after_backward" or one_bucket(overlap, st):
            transfers.append(_Transfer(st.last_backward_end_s, st.last_backward_end_s, total, total))
        else:
            start = st.last_backward_end_s - st.backward_s
            transfers.append(_Transfer(start, st.last_backward_end_s, total, last))
    reduce_s = sum(t.total_s for t in transfers)
    reduce_exposed = max(0.0, _reduce_queue(transfers) - rank_end_s)
    # ZeRO-1/2 gather the updated parameters back; ZeRO-0 has nothing to gather, ZeRO-3 gathers per microbatch
    gathers = [(moved_s("all_gather", st, st_pieces, precision_bytes),
                last_piece_s("all_gather", st, st_pieces, precision_bytes))
               for st, st_pieces in zip(stages, pieces)] if cfg.zero in (1, 2) else []
    gather_s = sum((total for total, _ in gathers), 0.0)
    if not hides or overlap.param_gather == "after_step":
        gather_exposed = gather_s
    elif timing_known:
        gather_exposed = _gather_delay_s(stages, gathers) if gather_s else 0.0
    else:
        gather_exposed = _gather_floor_s(stages, gathers, pipeline_rank) if gather_s else 0.0
    if not timing_known and hides and overlap.dp_grad_reduce != "after_schedule":
        reduce_exposed = min(t.last_bucket_s for t in transfers)
    if hides:  # the hidden part slows the compute beside it (a lower bound stays one: affine, increasing)
        reduce_exposed += contention_s(reduce_s - reduce_exposed)
        gather_exposed += contention_s(gather_s - gather_exposed)
    return RankSync(reduce_s, reduce_exposed, gather_s, gather_exposed)


def one_bucket(overlap: StackOverlap, st: StageWindow) -> bool:
    """Whether a bucketed stack reduces and gathers this stage's gradients as one bucket: a rank's later
    model chunks where the stack turns their bucketing off (``StackOverlap.dp_later_chunks_one_bucket``,
    Megatron-Core), so their reduce starts when the chunk's last backward ends."""
    return overlap.dp_grad_reduce == "bucketed" and overlap.dp_later_chunks_one_bucket and st.chunk > 0


def _dense_params(st: StageWindow, cfg: ParallelConfig) -> float:
    """Parameters reduced over the dp x cp group: the dense ones, and the routed experts too when every
    rank holds all of them (ep = 1); with ep > 1 the experts go over their own group, or nowhere when
    each expert-data-parallel group is a single rank (``experts_reduced_apart``)."""
    return st.params if experts_reduced_apart(cfg) else st.params + st.expert_params


def _gather_floor_s(stages: list[StageWindow], gathers: list[tuple[float, float]], pipeline_rank: int) -> float:
    """A lower bound of the gather delay without simulated times: pipeline rank 0 runs stage 0's
    first forward at time 0, so it waits for that stage's first bucket and for all of its
    gather beyond that forward; any other rank may start late enough to wait for nothing.
    (A rank's last action is a backward of one of its stages, so its reduce exposes at
    least that stage's last bucket: ``rank_sync`` takes the smallest over its stages.)"""
    if pipeline_rank != 0:
        return 0.0
    total, first = gathers[0]
    return max(0.0, first, total - stages[0].forward_s)
