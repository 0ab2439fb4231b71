"""``estimate(model, cluster, train, config) -> Estimate``: one configuration, priced.

Step time = the pipeline makespan over the schedule's exact action list
(``costmodels.pipeline.price_pipeline``) with per-stage F/B/W times and p2p,
plus the exposed part of data-parallel gradient traffic, the optimizer step
and a fixed per-step overhead. Memory is per pipeline rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from costmodels.comm import all_gather_s, all_reduce_s, link_for, p2p_s, reduce_scatter_s
from costmodels.compute import memory_bound_time_s, peak_flops
from costmodels.flops import hardware_flops_per_iteration, model_flops_per_iteration, parameter_counts
from costmodels.layer_costs import ZERO_PASS, LayerTimes, PassTimes, RooflineTimes, bytes_per_element
from costmodels.layout import StageLayout, layouts_of, stage_layouts
from costmodels.memory import (
    GIB,
    ActivationVariant,
    embedding_activation_bytes,
    head_activation_bytes,
    layer_activation_bytes,
    stage_params,
    static_memory,
)
from costmodels.params import model_parameters
from costmodels.pipeline import PipelineResult, price_actions, price_pipeline
from costmodels.rank_grid import RankCoord, RankGrid, stage_to_rank
from costmodels.schedules.generate import schedule_of
from costmodels.schedules.registry import schedule_spec
from costmodels.simulator import StageTimes
from profiles.schema import Breakdown, ClusterSpec, Estimate, ModelSpec, ParallelConfig, TrainSpec

PipelinePricer = Callable[[str, int, int, int, StageTimes], PipelineResult]
GRAD_REDUCE_BYTES = 4  # gradients are reduced in fp32 (Megatron's --accumulate-allreduce-grads-in-fp32 default for bf16)
# AdamW step traffic: read fp32 param, grad, m, v (16 B); write param, m, v (12 B) and the 2-byte copy
ADAM_STEP_BYTES_PER_PARAM = 30
DP_BUCKET_PARAMS = 40_000_000  # Megatron-LM DDP bucket size (megatron/core/distributed, bucket_size default 40M)
# Buffer counts (each a multiple of one buffer's bytes):
ZERO3_GATHERED_UNITS = 2  # FSDP2 with resharding: the unit in use and the one prefetched (torch FSDP2 implicit prefetch)
TRANSIENT_COPIES = 2  # the widest activation (MLP intermediate, or fp32 logits) and its gradient, alive together in backward
P2P_BUFFERS = 4  # torch PipelineStage: forward receive and send, backward receive and send of the boundary tensor
DP_BUCKETS_IN_FLIGHT = 2  # one bucket being reduced while the next fills (double buffering)


@dataclass(frozen=True)
class StagePlan:
    """What one virtual stage (``costmodels.layout.StageLayout``, as the runtime builds it) costs."""

    layout: StageLayout
    recompute: str
    times: PassTimes
    params: float
    activation_bytes: float

    @property
    def rank(self) -> int:
        return self.layout.pipeline_rank


def activation_variant(cluster: ClusterSpec, train: TrainSpec) -> ActivationVariant:
    """What ppplan's runtime stores on this cluster's device (a "cpu" GPU name means CPU)."""
    return ActivationVariant.runtime(train.precision, device="cpu" if cluster.gpu.name == "cpu" else "cuda")


def _stage_plan(
    model: ModelSpec, train: TrainSpec, cfg: ParallelConfig, layers: LayerTimes | None, layout: StageLayout,
    variant: ActivationVariant,
) -> StagePlan:
    """The stage's times and memory (its layers, plus the embedding on the first stage and the
    head on the last); ``layers=None`` skips the times (memory-only callers)."""
    s, b, tp, sp = train.seq_len, cfg.mbs, cfg.tp, cfg.sequence_parallel
    n, first, last = layout.num_layers, layout.has_embedding, layout.has_head
    kind = cfg.recompute_of_stage(layout.stage)
    times = layers.transformer(tp, b, s, sp, kind).scaled(n) if layers else ZERO_PASS
    act = n * layer_activation_bytes(model, s, b, tp, sp, kind, variant)
    if first:
        times = times.plus(layers.embedding(tp, b, s, sp)) if layers else times
        act += embedding_activation_bytes(model, s, b, tp, sp, variant)
    if last:
        times = times.plus(layers.head(tp, b, s, sp)) if layers else times
        act += head_activation_bytes(model, s, b, tp, sp, variant)
    return StagePlan(
        layout=layout,
        recompute=kind,
        times=times,
        params=stage_params(model, n, first, last, tp),
        activation_bytes=act,
    )


def _stage_plans(
    model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig, layers: LayerTimes
) -> list[StagePlan]:
    variant = activation_variant(cluster, train)
    return [_stage_plan(model, train, cfg, layers, layout, variant) for layout in stage_layouts(cfg)]


def rank_memory_if_uniform_gib(
    model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig,
    rank: int, layers_per_stage: int, inflight_stage_microbatches: float,
) -> float:
    """Peak GiB of pipeline ``rank`` if each of its stages held ``layers_per_stage`` layers and
    ``inflight_stage_microbatches`` stage-microbatches were alive (affine in the layer count;
    the search derives per-rank layer caps from it)."""
    variant = activation_variant(cluster, train)
    plans = [
        _stage_plan(model, train, cfg, None, layout, variant)
        for layout in layouts_of([layers_per_stage] * cfg.num_stages, cfg.pp, cfg.v, cfg.schedule)
        if layout.pipeline_rank == rank
    ]
    peak = inflight_stage_microbatches * max(st.activation_bytes for st in plans)
    return sum(_rank_memory_gib(model, cluster, train, cfg, plans, peak).values())


def _p2p_times(model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig) -> tuple[float, ...]:
    """Boundary activation transfer between consecutive virtual stages (Megatron's scatter-gather
    optimisation sends s·b·h/t per TP rank)."""
    grid = RankGrid(cfg.tp, cfg.pp, cfg.dp)
    num_bytes = bytes_per_element(train.precision) * train.seq_len * cfg.mbs * model.hidden_size / cfg.tp
    times = []
    for j in range(cfg.num_stages - 1):
        a = grid.rank(RankCoord(0, stage_to_rank(j, cfg.pp, cfg.v, cfg.schedule), 0))
        b = grid.rank(RankCoord(0, stage_to_rank(j + 1, cfg.pp, cfg.v, cfg.schedule), 0))
        crosses = a // cluster.gpus_per_node != b // cluster.gpus_per_node
        times.append(0.0 if a == b else p2p_s(num_bytes, link_for(cluster, crosses)))
    return tuple(times)


def _zero_per_microbatch_s(cfg: ParallelConfig, params: float, link, precision: str) -> tuple[float, float]:
    """(forward, backward) parameter all-gather per microbatch under ZeRO-3: FSDP2 with
    ``reshard_after_forward=True`` frees the gathered weights after each forward and
    gathers them again for the backward (Rajbhandari et al. 2020, Sec. 5.3). Gradients are
    reduce-scattered once per step in every stage (``_dp_exposed_s``)."""
    if cfg.zero != 3:
        return 0.0, 0.0
    ag = all_gather_s(params * bytes_per_element(precision), cfg.dp, link)
    return ag, ag


def stage_times(
    model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig, layers: LayerTimes | None = None
) -> StageTimes:
    """Per-virtual-stage times for the simulator (what ``ppplan simulate plan.json`` runs)."""
    return _pipeline_inputs(model, cluster, train, cfg, layers or RooflineTimes(model, cluster, train.precision))[1]


def _dp_link(cluster: ClusterSpec, cfg: ParallelConfig):
    grid = RankGrid(cfg.tp, cfg.pp, cfg.dp)
    return link_for(cluster, grid.spans_nodes(grid.dp_group(0, 0), cluster.gpus_per_node))


def _pipeline_inputs(
    model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig, layers: LayerTimes
) -> tuple[list[StagePlan], StageTimes]:
    plans = _stage_plans(model, cluster, train, cfg, layers)
    link = _dp_link(cluster, cfg)
    fwd, bwd_in, bwd_w = [], [], []
    for st in plans:
        extra_f, extra_b = _zero_per_microbatch_s(cfg, st.params, link, train.precision)
        # per-microbatch ZeRO traffic overlaps with that microbatch's compute; only the excess shows
        # (all of it where the cores that compute also move the bytes: comm_overlaps_compute)
        hide_f, hide_b = (st.times.forward_s, st.times.backward_input_s + st.times.backward_weight_s) if comm_overlaps_compute(cluster) else (0.0, 0.0)
        fwd.append(st.times.forward_s + max(0.0, extra_f - hide_f))
        bwd_in.append(st.times.backward_input_s + max(0.0, extra_b - hide_b))
        bwd_w.append(st.times.backward_weight_s)
    if schedule_spec(cfg.schedule).split_backward:
        # torch's first stage has no input gradient to send: its B is empty and the whole
        # backward runs as W (torch.distributed.pipelining, measured by the profiler)
        bwd_w[0] += bwd_in[0]
        bwd_in[0] = 0.0
    times = StageTimes(
        forward_s=tuple(fwd),
        backward_input_s=tuple(bwd_in),
        backward_weight_s=tuple(bwd_w),
        activation_bytes=tuple(st.activation_bytes for st in plans),
        p2p_s=_p2p_times(model, cluster, train, cfg),
    )
    return plans, times


def comm_overlaps_compute(cluster: ClusterSpec) -> bool:
    """Whether data-parallel traffic can hide behind compute: yes on accelerators (a copy
    engine / NIC moves the bytes while the SMs compute); no on a CPU node
    (``concurrent_ranks_per_node`` set), where gloo's loopback copies and reductions run on
    the same cores as the compute, and FSDP2 reduces synchronously in its post-backward hook
    (torch.profiler on cpu-local: ``FSDP::post_backward_reduce`` 4-10 ms per layer inside the
    step, nothing running beside it)."""
    return cluster.concurrent_ranks_per_node is None


def _dp_exposed_s(cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig, rank_plans: list[StagePlan]) -> float:
    """Once-per-step data-parallel traffic, overlapped with the last microbatch's backward
    (gradients) and the first forward (parameters), as Megatron's --overlap-grad-reduce /
    --overlap-param-gather and FSDP2's prefetching do; only the excess is exposed.

    ZeRO-0: one all-reduce of the gradients. ZeRO-1/2 (FSDP2 without resharding after
    forward): reduce-scatter of gradients plus one all-gather of parameters. ZeRO-3:
    the reduce-scatter only (its gathers are per microbatch, ``_zero_per_microbatch_s``).
    """
    if cfg.dp == 1:
        return 0.0
    link = _dp_link(cluster, cfg)
    params = sum(st.params for st in rank_plans)
    backward_window = sum(st.times.backward_input_s + st.times.backward_weight_s for st in rank_plans)
    forward_window = sum(st.times.forward_s for st in rank_plans)
    if not comm_overlaps_compute(cluster):
        backward_window = forward_window = 0.0
    grads = params * GRAD_REDUCE_BYTES
    if cfg.zero == 0:
        return max(0.0, all_reduce_s(grads, cfg.dp, link) - backward_window)
    exposed = max(0.0, reduce_scatter_s(grads, cfg.dp, link) - backward_window)
    if cfg.zero in (1, 2):
        gather = all_gather_s(params * bytes_per_element(train.precision), cfg.dp, link)
        exposed += max(0.0, gather - forward_window)
    return exposed


def _largest_unit_params(model: ModelSpec, tp: int, rank_plans: list[StagePlan]) -> float:
    """Largest block FSDP gathers at once: a transformer layer, or the embedding/head matrix."""
    unit = parameter_counts(model).per_layer / tp
    if any(st.layout.has_embedding or st.layout.has_head for st in rank_plans):
        unit = max(unit, model.vocab_size * model.hidden_size / tp)
    return unit


def _rank_memory_gib(
    model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig,
    rank_plans: list[StagePlan], activation_peak: float,
) -> dict[str, float]:
    """Per-rank memory in GiB by category: static state under ZeRO, activations of the
    microbatches in flight (from the schedule), the largest transient working tensor,
    p2p and DP bucket buffers, allocator fragmentation and the runtime's own reserve."""
    params = sum(st.params for st in rank_plans)
    static = static_memory(params, train.precision, cfg.dp, cfg.zero, gradients_sharded=False)
    p = bytes_per_element(train.precision)
    tokens = train.seq_len * cfg.mbs
    # ZeRO-3: the current and the prefetched unsharded block
    gathered = ZERO3_GATHERED_UNITS * _largest_unit_params(model, cfg.tp, rank_plans) * p if cfg.zero == 3 else 0.0
    # transient: the MLP intermediate (or the fp32 logits on the head stage) and its gradient
    transient = TRANSIENT_COPIES * p * tokens * model.ffn_size / cfg.tp
    if any(st.layout.has_head for st in rank_plans):
        transient = max(transient, TRANSIENT_COPIES * 4 * tokens * model.vocab_size / cfg.tp)
    p2p_buffers = P2P_BUFFERS * p * tokens * model.hidden_size / cfg.tp if cfg.pp > 1 else 0.0
    dp_buckets = float(DP_BUCKETS_IN_FLIGHT) * min(params, DP_BUCKET_PARAMS) * GRAD_REDUCE_BYTES if cfg.dp > 1 else 0.0
    allocated = {
        "weights": static.weights_bytes + gathered,
        "gradients": static.gradients_bytes,
        "optimizer": static.optimizer_bytes,
        "activations": activation_peak,
        "transient": transient,
        "comm_buffers": p2p_buffers + dp_buckets,
    }
    allocated["fragmentation"] = sum(allocated.values()) * cluster.allocator_fragmentation
    out = {k: v / GIB for k, v in allocated.items()}
    out["runtime_reserved"] = cluster.runtime_reserved_gib
    return out


def timeshared_compute_s(
    cluster: ClusterSpec, cfg: ParallelConfig, busy_s: tuple[float, ...], tail_s: list[float]
) -> float:
    """Work bound of a node whose ranks time-share fewer cores (0 when every rank has its own device).

    A node runs ``n = min(world, gpus_per_node)`` ranks, but only ``C =
    concurrent_ranks_per_node`` of them compute at full speed at once (CPU cores; torchrun
    runs one OMP thread per process, and Linux shares a core fairly among the ranks that
    want it). Work is conserved, so the node needs at least its ranks' total compute
    (simulated busy time plus the optimizer step and exposed data-parallel traffic,
    ``tail_s``, per pipeline rank, in full-speed seconds)
    divided by ``C``. Layer times are those of one TP group alone on the node (a TP group
    larger than ``C`` already time-shares: ``RooflineTimes`` and a ``--tp-group`` profile
    include it), so a TP group's rank counts ``min(tp, C) / tp`` of a core. The pipeline
    simulation at full speed is the other lower bound; the estimate takes the larger:
    exact when the node is saturated (more ranks than cores, short bubble) or when it is
    not (no more ranks than cores), and optimistic in between (processor sharing over the
    bubble is not simulated).
    """
    cores = cluster.concurrent_ranks_per_node
    if cores is None:
        return 0.0
    grid = RankGrid(cfg.tp, cfg.pp, cfg.dp)
    on_node = range(min(grid.world_size, cluster.gpus_per_node))
    work_s = sum(busy_s[grid.coord(r).pp] + tail_s[grid.coord(r).pp] for r in on_node)
    # to the picosecond: plans with the same work (pp4 and pp2 x dp2) tie exactly, whatever the
    # summation order, and the search's canonical tie-break decides between them
    return round(work_s * min(cfg.tp, cores) / cfg.tp / cores, 12)


def memory_limit_gib(cluster: ClusterSpec) -> float:
    """HBM the fit check allows: capacity less the documented safety margin."""
    return cluster.gpu.memory_gib * (1.0 - cluster.memory_safety_margin)


def _breakdown(
    cfg: ParallelConfig, cluster: ClusterSpec, plans: list[StagePlan], result: PipelineResult,
    dp_s: float, optimizer_s: float, p2p: tuple[float, ...],
) -> Breakdown:
    busiest = max(range(cfg.pp), key=lambda r: result.busy_s[r])
    mine = [st for st in plans if st.rank == busiest]
    m = cfg.num_microbatches
    tp_comm = m * sum(st.times.tp_comm_s for st in mine)
    recompute = m * sum(st.times.recompute_s for st in mine)
    compute = m * sum(st.times.total_s for st in mine) - tp_comm - recompute
    return Breakdown(
        compute_s=compute,
        recompute_s=recompute,
        tp_comm_s=tp_comm,
        pp_comm_s=2 * sum(p2p),
        dp_comm_s=dp_s,
        bubble_s=result.makespan_s * result.bubble_fraction,
        optimizer_s=optimizer_s,
        overhead_s=cluster.efficiency.step_overhead_s,
    )


def estimate(
    model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig, layers: LayerTimes | None = None,
    pricer: PipelinePricer = price_pipeline,
) -> Estimate:
    """Price one configuration (the rules are checked by the caller: ``costmodels.rules``).

    ``pricer`` is the event simulator over the exact action list; the search passes the
    closed-form screen (``costmodels.pipeline_approx``) only to rank candidates."""
    layers = layers or RooflineTimes(model, cluster, train.precision)
    plans, times = _pipeline_inputs(model, cluster, train, cfg, layers)
    if cfg.schedule == "custom":
        schedule = schedule_of("custom", cfg.pp, cfg.v, cfg.num_microbatches, cfg.schedule_csv)
        result = price_actions(schedule, times)
    else:
        result = pricer(cfg.schedule, cfg.pp, cfg.v, cfg.num_microbatches, times)
    per_rank = [[st for st in plans if st.rank == r] for r in range(cfg.pp)]
    rank_dp_s = [_dp_exposed_s(cluster, train, cfg, mine) for mine in per_rank]
    dp_s = max(rank_dp_s)
    opt_share = cfg.dp if cfg.zero >= 1 else 1
    rank_optimizer_s = [
        memory_bound_time_s(cluster, sum(st.params for st in mine) / opt_share * ADAM_STEP_BYTES_PER_PARAM)
        for mine in per_rank
    ]
    optimizer_s = max(rank_optimizer_s)
    rank_tail_s = [opt + dp for opt, dp in zip(rank_optimizer_s, rank_dp_s)]
    compute_s = max(result.makespan_s + optimizer_s + dp_s, timeshared_compute_s(cluster, cfg, result.busy_s, rank_tail_s))
    step = compute_s + cluster.efficiency.step_overhead_s
    memory = [
        _rank_memory_gib(model, cluster, train, cfg, per_rank[r], result.peak_activation_bytes[r]) for r in range(cfg.pp)
    ]
    peak = [round(sum(m.values()), 4) for m in memory]
    gpus = cfg.tp * cfg.pp * cfg.dp
    all_layers = [st.recompute for st in plans for _ in range(st.layout.num_layers)]
    model_flops = model_flops_per_iteration(model, train.global_batch, train.seq_len)
    hw_flops = hardware_flops_per_iteration(model, train.global_batch, train.seq_len, all_layers)
    peak_tflops = peak_flops(cluster, train.precision) / 1e12
    model_tflops = model_flops / step / gpus / 1e12
    hw_tflops = hw_flops / step / gpus / 1e12
    limit = memory_limit_gib(cluster)
    parameters = model_parameters(model)
    return Estimate(
        step_time_s=step,
        tokens_per_s=train.global_batch * train.seq_len / step,
        model_tflops_per_gpu=model_tflops,
        hw_tflops_per_gpu=hw_tflops,
        mfu=model_tflops / peak_tflops,
        hfu=hw_tflops / peak_tflops,
        bubble_fraction=result.bubble_fraction,
        peak_memory_gib=peak,
        memory_limit_gib=limit,
        fits=max(peak) <= limit,
        breakdown=_breakdown(cfg, cluster, plans, result, dp_s, optimizer_s, times.p2p_s),
        memory_breakdown_gib=[{k: round(v, 4) for k, v in m.items()} for m in memory],
        params_total=float(parameters.total),
        params_active=float(parameters.active),
    )
