"""``estimate(model, cluster, train, config, stack=...) -> Estimate``: one configuration, priced.

Per virtual stage, the F/B/W times of its layers (``costmodels.layer_costs``: the stack's
operators by roofline, or a measured profile) plus what the stack's runtime adds to each
pipeline action: ZeRO-3 parameter gathers beyond what compute hides, blocking p2p sends,
and a fixed overhead per action (``_stage_costs``). The event simulator runs the schedule's
exact action list over them (``costmodels.pipeline.price_pipeline``); the data-parallel
traffic each rank leaves exposed (``costmodels.data_parallel``), the optimizer step and a
per-step overhead complete the step, composed explicitly with a breakdown whose exposed
parts add up to it (``costmodels.step_time``). Memory is per pipeline rank.

The stack (``StackSpec``) decides kernels, overlaps and overheads; every caller names it (there
is no default: a plan is priced as one stack runs it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from costmodels.comm import FP32_BYTES, GroupPlacement, Network, collective_s, sequence_parallel_gather_s
from costmodels.communicators import nccl_buffers_gib
from costmodels.compute import memory_bound_time_s, peak_flops
from costmodels.data_parallel import (
    RankSync,
    StageWindow,
    bucket_params,
    fsdp_units_of,
    rank_sync,
    syncs_gradients,
)
from costmodels.experts import routed_rows
from costmodels.flops import hardware_flops_per_iteration, model_flops_per_iteration
from costmodels.grad_accumulation import grad_accumulation_s
from costmodels.layer_costs import (
    ZERO_PASS,
    LayerTimes,
    PassTimes,
    RooflineTimes,
    bytes_per_element,
    runs_on_cpu,
    tp_group_timeshare,
)
from costmodels.layer_ops import stops_early
from costmodels.layout import StageLayout, layouts_of, stage_layouts
from costmodels.memory import (
    GIB,
    ActivationVariant,
    StageParams,
    StaticMemory,
    embedding_activation_bytes,
    end_weight_grad_input_bytes,
    evicts_unsharded_stages,
    fp32_shard_bytes,
    gradients_held_per_stage,
    held_gradient_bytes,
    layer_activation_bytes,
    layer_params,
    loss_bytes_per_logit,
    microbatch_grad_sync,
    optimizer_step_temp_bytes,
    recompute_working_bytes,
    saved_weight_copy_bytes,
    stack_static_memory,
    stage_output_bytes,
    stage_param_split,
    unsharded_weights_share,
    weight_grad_input_bytes,
)
from costmodels.microbatch_dp import (
    dp_traffic_extra_s,
    evicted_regathers,
    fsdp_copy_s,
    microbatch_dp_traffic,
    regather_traffic,
    zero3_gathers_per_microbatch,
)
from costmodels.mtp import head_with_mtp_activation_bytes, head_with_mtp_times
from costmodels.offload import OffloadPlan, exposed_copy_s, peak_resident_layers
from costmodels.overlap import comm_overlaps_compute
from costmodels.params import model_parameters, moe_layers_in
from costmodels.pipeline import PipelineResult, price_actions, price_pipeline
from costmodels.processor_sharing import timeshared_makespan_s
from costmodels.rank_grid import RankCoord, RankGrid
from costmodels.runtime_costs import (
    NO_RUNTIME_COSTS,
    RuntimeCosts,
    compute_factor,
    fsdp_host_s,
    host_overhead_per_action_s,
    optimizer_temp_bytes,
    pricing_network,
    runtime_costs_of,
)
from costmodels.schedules.actions import Schedule
from costmodels.schedules.generate import generate_schedule, schedule_of
from costmodels.schedules.registry import schedule_spec
from costmodels.schedules.torch_order import combined_paired_share
from costmodels.simulator import StageTimes
from costmodels.steady_state import steady_state_period_s, work_bound_period_s
from costmodels.step_time import RankWork, compose_step, step_gap_s
from profiles.schema import ClusterSpec, Estimate, ModelSpec, ParallelConfig, TrainSpec
from profiles.stack_schema import StackOverlap, StackSpec

__all__ = ["comm_overlaps_compute", "estimate", "stage_times", "rank_memory_if_uniform_gib", "uniform_rank_memory",
           "memory_limit_gib"]

PipelinePricer = Callable[[str, int, int, int, StageTimes], PipelineResult]
# AdamW step traffic per parameter, one fused multi-tensor kernel: read the fp32 weight, gradient,
# m and v (16 B), write weight, m and v (12 B) and the 2-byte copy the forward uses.
ADAM_STEP_BYTES_PER_PARAM = 30
# Buffer counts (each a multiple of one buffer's bytes):
ZERO3_GATHERED_UNITS = 2  # FSDP2 with resharding: the unit in use and the one prefetched (torch FSDP2 implicit prefetch)
TRANSIENT_COPIES = 2  # the widest activation (the MLP intermediate) and its gradient, alive together in backward
P2P_BUFFERS = 4  # Megatron's p2p: forward receive and send, backward receive and send of the boundary tensor
DP_BUCKETS_IN_FLIGHT = 2  # one bucket being reduced while the next fills (double buffering)


@dataclass(frozen=True)
class StagePlan:
    """What one virtual stage (``costmodels.layout.StageLayout``, as the runtime builds it) costs;
    ``moe_layers`` of its layers are mixture-of-experts layers."""

    layout: StageLayout
    recompute: str
    times: PassTimes
    params: StageParams
    activation_bytes: float
    moe_layers: int = 0
    retained_bytes: float = 0.0  # held from B to W when W is deferred (``memory.weight_grad_input_bytes``)
    offload: OffloadPlan | None = None  # its layers' activations copied to the host (``costmodels.offload``)
    gemm_params: float = 0.0  # the weights its GEMMs multiply by, per rank: layers and head, not the embedding table

    @property
    def rank(self) -> int:
        return self.layout.pipeline_rank

    @property
    def dense_layers(self) -> int:
        return self.layout.num_layers - self.moe_layers


def activation_variant(cluster: ClusterSpec, train: TrainSpec, stack: StackSpec,
                       cfg: ParallelConfig | None = None) -> ActivationVariant:
    """What the stack's runtime stores on this cluster's device (a "cpu" GPU name means CPU), for ``cfg`` where
    given: its sequence-parallel blocks' inputs kept as shards where it asks (``sp_regather``)."""
    device = "cpu" if runs_on_cpu(cluster) else "cuda"
    engine_keeps = stack.pipeline_runtime != "torch" and stack.pipeline_keeps_stage_outputs
    variant = ActivationVariant.for_stack(stack.kernels, train.precision, device,
                                          stack.pipeline_runtime == "torch" or engine_keeps, stack.single_stage_pipeline,
                                          last_output_is_loss=engine_keeps, autocast=stack.autocasts(train.precision))
    return variant.with_input_shards() if cfg is not None and cfg.sp_regather else variant


def sp_regather_passes(model: ModelSpec, train: TrainSpec, cluster: ClusterSpec, network: Network, tp: int, mbs: int,
                       cp: int, recompute: str, *, sequence_parallel: bool, sp_regather: bool) -> PassTimes:
    """What one transformer layer's backward adds where a plan keeps its sequence-parallel blocks' inputs as shards
    (``sequence_parallel`` and ``ParallelConfig.sp_regather``): the attention's and the MLP's (or MoE block's)
    all-gathers again, in B, and under a split backward once more in W (``split_backward_extra_s``;
    launch/runtime/regather.py gathers when autograd unpacks the saved input, which B and W each do; Korthikanti et
    al. 2022, Sec. 4.2.2); none under full recompute, whose re-run forward keeps them gathered, nor elsewhere."""
    if not (sequence_parallel and sp_regather) or recompute == "full":
        return ZERO_PASS
    tokens = train.seq_len * mbs // cp
    gather = 2 * sequence_parallel_gather_s(tokens, model.hidden_size, bytes_per_element(train.precision), tp,
                                            network) * tp_group_timeshare(cluster, tp)
    return PassTimes(0.0, gather, gather, tp_comm_s=gather, split_backward_extra_s=gather)


def _stage_plan(
    model: ModelSpec, train: TrainSpec, cfg: ParallelConfig, layers: LayerTimes | None, layout: StageLayout,
    variant: ActivationVariant, layer_kind: str | None = None, regather: PassTimes = ZERO_PASS,
) -> StagePlan:
    """The stage's times and memory (its dense and mixture-of-experts layers, plus the embedding on the
    first stage and the head on the last, with the multi-token prediction modules, ``costmodels.mtp``); ``layers=None`` skips the times (memory-only callers);
    ``layer_kind`` ("moe" or "dense") counts every layer as that kind; ``regather`` is what each layer's backward adds
    where the plan keeps its sequence-parallel inputs as shards (``sp_regather_passes``)."""
    s, b, tp, sp, cp, ep, etp = train.seq_len, cfg.mbs, cfg.tp, cfg.sequence_parallel, cfg.cp, cfg.ep, cfg.etp
    ep_overlap = combined_paired_share(cfg.pp, cfg.v, cfg.num_microbatches) \
        if schedule_spec(cfg.schedule).overlaps_expert_comm else 0.0
    n, first, last = layout.num_layers, layout.has_embedding, layout.has_head
    moe_layers = moe_layers_in(model, layout.first_layer, n)
    if layer_kind is not None:
        moe_layers = n if layer_kind == "moe" else 0
    kind = cfg.recompute_of_stage(layout.stage)
    times, act, kept = ZERO_PASS, 0.0, 0.0
    for count, moe in ((n - moe_layers, False), (moe_layers, True)):
        if count:
            if layers:
                per_layer = layers.transformer(tp, b, s, sp, kind, cp=cp, ep=ep, moe=moe, etp=etp,
                                               ep_overlap=ep_overlap).plus(regather).scaled(count)
                times = per_layer if times is ZERO_PASS else times.plus(per_layer)
            act += count * layer_activation_bytes(model, s, b, tp, sp, kind, variant, cp=cp, ep=ep, moe=moe, etp=etp)
            kept += count * weight_grad_input_bytes(model, s, b, tp, sp, variant, cp=cp, ep=ep, moe=moe, etp=etp)
    offload = _offload_plan(cfg, n, act, times)
    if offload:  # the offloaded layers leave the GPU but for those in flight (``costmodels.offload``)
        act -= (n - peak_resident_layers(n, offload.groups)) * offload.layer_bytes
    kept += end_weight_grad_input_bytes(model, s // cp, b, tp, variant, first, last)
    if first:
        times = times.plus(layers.embedding(tp, b, s, sp, cp=cp)) if layers else times
        act += embedding_activation_bytes(model, s // cp, b, tp, sp, variant)
    if last:
        if layers:
            times = times.plus(head_with_mtp_times(layers, model, tp, b, s, sp, kind, cp=cp, ep=ep, etp=etp,
                                                   ep_overlap=ep_overlap))
        act += head_with_mtp_activation_bytes(model, s, b, tp, sp, kind, variant, cp=cp, ep=ep, etp=etp)
    if variant.keeps_stage_output_at(cfg.pp):
        act += stage_output_bytes(model, s // cp, b, tp, sp, variant, last)
    act += saved_weight_copy_bytes(model, variant, layout.first_layer, n, last, tp, ep, kind, layer_kind, etp)
    return StagePlan(
        layout=layout,
        recompute=kind,
        times=times,
        params=stage_param_split(model, layout.first_layer, n, first, last, tp, ep, layer_kind, etp),
        activation_bytes=act,
        moe_layers=moe_layers,
        retained_bytes=kept,
        offload=offload,
        gemm_params=stage_param_split(model, layout.first_layer, n, False, last, tp, ep, layer_kind, etp).total,
    )


def _stage_plans(
    model: ModelSpec, train: TrainSpec, cfg: ParallelConfig, layers: LayerTimes, layouts: list[StageLayout],
    variant: ActivationVariant, regather: Callable[[str], PassTimes],
) -> list[StagePlan]:
    """``_stage_plan`` of each of ``layouts`` (``regather``: the layer's re-gather for a recompute kind), planned once
    per kind of stage: a stage's plan depends on its layout only through its layer count, how many of those are
    mixture-of-experts layers, whether it holds the embedding or the head, and its recompute (so a uniform cut's
    middle stages share one)."""
    planned: dict[tuple[int, int, bool, bool, str], StagePlan] = {}
    plans = []
    for layout in layouts:
        recompute = cfg.recompute_of_stage(layout.stage)
        key = (layout.num_layers, moe_layers_in(model, layout.first_layer, layout.num_layers), layout.has_embedding,
               layout.has_head, recompute)
        plan = planned.get(key)
        if plan is None:
            plan = planned[key] = _stage_plan(model, train, cfg, layers, layout, variant, regather=regather(recompute))
        plans.append(replace(plan, layout=layout))
    return plans


def _offload_plan(cfg: ParallelConfig, num_layers: int, layers_bytes: float, layers_times: PassTimes) -> OffloadPlan | None:
    """The stage's activation offload (``ParallelConfig.offload_layers``; one stage: the rules allow it without
    pipeline parallelism only), its layers taken at their mean bytes and pass times."""
    if not cfg.offload_layers or not num_layers:
        return None
    groups = min(cfg.offload_layers, num_layers)
    joined = layers_times.joined_backward()  # one autograd call: the schedules a pipeline of one runs
    forward = layers_times.forward_s / num_layers
    backward = (joined.backward_input_s + joined.backward_weight_s) / num_layers
    return OffloadPlan(num_layers, groups, layers_bytes / num_layers, forward, backward)


def rank_memory_if_uniform_gib(
    model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig,
    rank: int, layers_per_stage: int, inflight_stage_microbatches: float, *, stack: StackSpec, part: str = "peak",
    held_gradients: bool = True, weights_share: float | None = None,
) -> float:
    """Peak GiB of pipeline ``rank`` if each of its stages held ``layers_per_stage`` layers and
    ``inflight_stage_microbatches`` stage-microbatches were alive (``uniform_rank_memory``)."""
    return uniform_rank_memory(model, cluster, train, cfg, rank, layers_per_stage, stack=stack,
                               held_gradients=held_gradients, weights_share=weights_share)(inflight_stage_microbatches, part)


def uniform_rank_memory(
    model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig,
    rank: int, layers_per_stage: int, *, stack: StackSpec, held_gradients: bool = True,
    weights_share: float | None = None,
) -> Callable[[float, str], float]:
    """``(inflight_stage_microbatches, part) -> GiB``: the peak of pipeline ``rank`` if each of its stages held
    ``layers_per_stage`` layers and that many stage-microbatches were alive, its stages planned once for all
    such questions (the search asks six per memory line); a mixture-of-experts model's layers
    all count as MoE layers. ``part`` "backward" (affine in the layer count and the in-flight count)
    and "step" (affine in the layer count; 0 plus the reserve where the step allocates nothing) are the
    two pieces whose maximum is the peak: the search derives per-rank layer caps from each.
    Gradients that live per stage (``costmodels.memory.gradients_held_per_stage``) count whole, as with one
    stage per rank, where they are alive at the activation peak (``costmodels.pipeline_bound.bound_pipeline``);
    ``held_gradients`` False counts none of them, a lower bound for ranks of several stages, one of which may
    free its gradients before the peak. ``weights_share`` replaces the share of the rank's unsharded weights it
    holds at once (``_unsharded_weights_share``)."""
    variant = activation_variant(cluster, train, stack, cfg)
    kind = "moe" if model.is_moe else None  # the model's most common layer, wherever the probe's layers fall
    plans = [
        _stage_plan(model, train, cfg, None, layout, variant, kind)
        for layout in layouts_of([layers_per_stage] * cfg.num_stages, cfg.pp, cfg.v, cfg.schedule)
        if layout.pipeline_rank == rank
    ]
    activation = max(st.activation_bytes for st in plans)
    held = None  # None: all of the rank's gradients
    if not held_gradients and gradients_held_per_stage(stack, cfg.pp, cfg.dp * cfg.cp, cfg.zero, train.precision):
        held = 0.0

    def gib(inflight_stage_microbatches: float, part: str = "peak") -> float:
        return sum(_rank_memory_gib(model, cluster, train, cfg, plans, inflight_stage_microbatches * activation, stack,
                                    variant, part, held, weights_share).values())

    return gib


def _p2p_times(model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig, network: Network,
               residual_bytes: int) -> tuple[float, ...]:
    """Boundary activation transfer between consecutive virtual stages (Megatron's scatter-gather
    optimisation sends s·b·h/t per TP rank, of the rank's s/cp positions), the residual stream at
    ``residual_bytes`` per value (``ActivationVariant.residual_stream_bytes``: fp32 under autocast over fp32
    parameters); every rank of a stage on a node sends at once."""
    grid = RankGrid(cfg.tp, cfg.pp, cfg.dp, cfg.cp)
    num_bytes = residual_bytes * (train.seq_len // cfg.cp) * cfg.mbs * model.hidden_size / cfg.tp
    senders = min(cluster.gpus_per_node, cfg.tp * cfg.cp * cfg.dp)
    layouts = stage_layouts(cfg)
    times = []
    for layout, following in zip(layouts, layouts[1:]):
        a = grid.rank(RankCoord(0, layout.pipeline_rank, 0))
        b = grid.rank(RankCoord(0, following.pipeline_rank, 0))
        if a == b:
            times.append(0.0)
            continue
        crosses = a // cluster.gpus_per_node != b // cluster.gpus_per_node
        placement = GroupPlacement(size=2, ranks_per_node=1 if crosses else 2, nodes=2 if crosses else 1, node_senders=senders)
        times.append(collective_s("p2p", num_bytes, placement, network))
    return tuple(times)


def action_overhead_s(cluster: ClusterSpec, overlap: StackOverlap, costs: RuntimeCosts = NO_RUNTIME_COSTS, pp: int = 1) -> float:
    """Fixed seconds per pipeline action: the GPU family's (fitted) plus the stack's host cost, or
    the host cost ``ppplan profile`` measured for this machine, in a real pipeline where ``pp`` > 1
    (``costmodels.runtime_costs``)."""
    measured = host_overhead_per_action_s(costs, pp)
    return cluster.efficiency.action_overhead_s + (overlap.host_overhead_per_action_s if measured is None else measured)


def _autocast_cast_s(cluster: ClusterSpec, train: TrainSpec, stack: StackSpec, st: StagePlan) -> tuple[float, float]:
    """Autocast's casts per microbatch where the stack runs 16-bit precision as autocast over fp32 parameters
    (``StackSpec.autocasts``): the forward reads every GEMM weight in fp32 and writes its bf16 copy
    (4 + 2 B), and the backward casts each bf16 weight gradient back to fp32 (2 + 4 B) before autograd accumulates
    it; by HBM bytes (a full-recompute backward re-casts the weights it re-runs). On the roofline only: a measured
    profile's passes ran under the same autocast and hold the casts (``_stage_costs``'s ``accumulate``)."""
    if not stack.autocasts(train.precision):
        return 0.0, 0.0
    cast = memory_bound_time_s(cluster, (FP32_BYTES + 2) * st.gemm_params)
    return cast, cast


def _offload_copy_s(cluster: ClusterSpec, st: StagePlan, factor: float) -> tuple[float, float]:
    """The activation offload copies a microbatch's F and B wait for (``costmodels.offload.exposed_copy_s``), against
    the layers' compute as the actions run it (``compute_factor``)."""
    if st.offload is None:
        return 0.0, 0.0
    plan = replace(st.offload, layer_forward_s=factor * st.offload.layer_forward_s,
                   layer_backward_s=factor * st.offload.layer_backward_s)
    return exposed_copy_s(cluster, plan)


def _stage_costs(
    cfg: ParallelConfig, cluster: ClusterSpec, train: TrainSpec, plans: list[StagePlan], stack: StackSpec,
    network: Network, p2p: tuple[float, ...], runtime: RuntimeCosts = NO_RUNTIME_COSTS, accumulate: bool = True,
    regathers: bool = True,
) -> tuple[list[PassTimes], list[dict[str, float]]]:
    """Each stage's per-microbatch passes as its actions run them, with what they hide.

    Data-parallel traffic inside the passes (``costmodels.microbatch_dp``: ZeRO-3 gathers,
    per-microbatch gradient reduce-scatters, the gathers again of stages torch's pipeline runtime
    evicted from a rank of more than three) overlaps that pass's compute (FSDP2 prefetch,
    backward hooks) where comm overlaps compute, and only the excess shows. Blocking p2p
    (``overlap.p2p == "exposed"``): F holds the rank for its send to the next stage, B for its
    send to the previous one. Every action pays the fixed per-action overhead (W only where
    the schedule splits the backward), the stack's host cost or the one ``ppplan profile``
    measured for this machine. Where the schedule does not split the backward (and on the first stage of torch's
    pipeline, whose whole backward is W), B and W run as one
    autograd call: the measured excess of the split pair over it (``split_backward_extra_s``) is
    taken off. W adds the stage's gradients into the step's where ``accumulate`` (the layer times leave
    it out: ``costmodels.grad_accumulation``). ZeRO-3 gathers under torch's pipelining are counted on the action
    list (``costmodels.microbatch_dp.zero3_gathers_per_microbatch``). Without ``regathers`` (a bounding pricer,
    which generates no action list) the evicted stages' gathers are left out and the ZeRO-3 gathers are their
    lower bound: the times stay lower bounds."""
    overlap = stack.overlap
    overhead = action_overhead_s(cluster, overlap, runtime, cfg.pp)
    factor = compute_factor(runtime, cfg.pp, ranks_per_core(cluster, cfg), cfg.mbs)
    split = schedule_spec(cfg.schedule).split_backward
    extra_gathers = evicted_regathers(cfg, stack, train.precision) if regathers else ()
    zero3_gathers = zero3_gathers_per_microbatch(cfg, stack, train.precision, exact=regathers)
    costs, hidden = [], []
    for j, st in enumerate(plans):
        t = st.times
        # torch's pipeline runs the first stage's whole backward as W, one autograd call (_pipeline_inputs)
        joined = not split or (st.layout.stage == 0 and stack.pipeline_runtime == "torch")
        f, b, w = factor * t.forward_s, factor * t.backward_input_s, factor * t.backward_weight_s
        if accumulate:
            w += grad_accumulation_s(cluster, stack, stack.held_precision(train.precision), cfg,
                                     st.params.dense + st.params.expert)
            cast_f, cast_w = _autocast_cast_s(cluster, train, stack, st)
            f, b, w = f + cast_f, b + (cast_f if st.recompute == "full" else 0.0), w + cast_w
        slower = (factor - 1.0) * (t.forward_s + t.backward_input_s + t.backward_weight_s
                                   - (min(t.backward_weight_s, t.split_backward_extra_s) if joined else 0.0))
        gathers = zero3_gathers[st.layout.stage] if zero3_gathers else None
        copy_f, copy_b = fsdp_copy_s(cfg, cluster, train, st, stack, gathers)
        traffic = microbatch_dp_traffic(cfg, cluster, train, st, stack, network, gathers)
        if extra_gathers:  # torch's lowering evicted the stage and gathers it again (costmodels.schedules.fsdp_lowering)
            # ZeRO 0-2: no gathers inside the passes but these
            traffic, regather_copy_s = regather_traffic(cfg, cluster, train, st, stack, network,
                                                        extra_gathers[st.layout.stage])
            copy_f += regather_copy_s
        f, b, dp_in_actions, hides = f + copy_f, b + copy_b, copy_f + copy_b, {}
        comm = traffic.total_s
        if comm:
            extra_f, extra_b = dp_traffic_extra_s(cluster, stack, f, b + w, traffic)
            f, b, dp_in_actions = f + extra_f, b + extra_b, dp_in_actions + extra_f + extra_b
            hides["zero3_gather_s"] = comm - extra_f - extra_b
        offload_f, offload_b = _offload_copy_s(cluster, st, factor)
        f, b = f + offload_f, b + offload_b
        send_f = p2p[j] if j < len(p2p) else 0.0
        send_b = p2p[j - 1] if j > 0 else 0.0
        pp_in_actions = 0.0
        if overlap.p2p == "exposed":
            f, b, pp_in_actions = f + send_f, b + send_b, send_f + send_b
        else:
            hides["pp_comm_s"] = send_f + send_b
        if joined:  # B and W run as one autograd call, which the profile timed as such
            w = max(0.0, w - factor * t.split_backward_extra_s)
        actions = 3 if split else 2
        f, b, w = f + overhead, b + overhead, w + (overhead if split else 0.0)
        costs.append(PassTimes(
            f, b, w, tp_comm_s=t.tp_comm_s, recompute_s=t.recompute_s, dp_comm_s=t.dp_comm_s + dp_in_actions,
            pp_comm_s=t.pp_comm_s + pp_in_actions,
            overhead_s=t.overhead_s + actions * overhead + slower, offload_s=t.offload_s + offload_f + offload_b,
            overlapped_tp_comm_s=t.overlapped_tp_comm_s, cp_comm_s=t.cp_comm_s, ep_comm_s=t.ep_comm_s,
            overlapped_cp_comm_s=t.overlapped_cp_comm_s, overlapped_ep_comm_s=t.overlapped_ep_comm_s,
        ))
        hidden.append(hides)
    return costs, hidden


def stage_times(
    model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig, layers: LayerTimes | None = None,
    *, stack: StackSpec,
) -> StageTimes:
    """Per-virtual-stage times for the simulator (what ``ppplan simulate plan.json`` runs)."""
    layers = layers or RooflineTimes(model, cluster, train.precision, stack=stack)
    network = pricing_network(cluster, runtime_costs_of(layers, cluster))
    return _pipeline_inputs(model, cluster, train, cfg, layers, stack, stack.overlap, network)[2]


def _pipeline_inputs(
    model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig, layers: LayerTimes,
    stack: StackSpec, overlap: StackOverlap, network: Network, regathers: bool = True,
) -> tuple[list[StagePlan], list[PassTimes], StageTimes, list[dict[str, float]]]:
    variant = activation_variant(cluster, train, stack, cfg)

    def regather(recompute: str) -> PassTimes:
        return sp_regather_passes(model, train, cluster, network, cfg.tp, cfg.mbs, cfg.cp, recompute,
                                  sequence_parallel=cfg.sequence_parallel, sp_regather=cfg.sp_regather)

    plans = _stage_plans(model, train, cfg, layers, stage_layouts(cfg), variant, regather)
    p2p = _p2p_times(model, cluster, train, cfg, network, variant.residual_stream_bytes)
    costs, hidden = _stage_costs(cfg, cluster, train, plans, stack, network, p2p, runtime_costs_of(layers, cluster),
                                 accumulate=not layers.grad_accumulation_measured, regathers=regathers)
    fwd = [c.forward_s for c in costs]
    bwd_in = [c.backward_input_s for c in costs]
    bwd_w = [c.backward_weight_s for c in costs]
    if schedule_spec(cfg.schedule).split_backward and stack.pipeline_runtime == "torch":
        # torch's first stage has no input gradient to send: its B is empty and the whole
        # backward runs as W (torch.distributed.pipelining, measured by the profiler). Megatron's
        # zero-bubble runtime splits at the GEMMs instead: B is the autograd backward with the
        # weight-gradient GEMMs queued (WeightGradStore, sail-sg/zero-bubble-pipeline-parallelism
        # megatron/core/zbpp_utils.py), the first stage's included, and W runs the queue.
        bwd_w[0] += bwd_in[0]
        bwd_in[0] = 0.0
    times = StageTimes(
        forward_s=tuple(fwd),
        backward_input_s=tuple(bwd_in),
        backward_weight_s=tuple(bwd_w),
        activation_bytes=tuple(st.activation_bytes for st in plans),
        p2p_s=tuple(0.0 for _ in p2p) if overlap.p2p == "exposed" else p2p,
        retained_bytes=_retained_bytes(cfg, stack, plans),
        **_held_bytes(train, cfg, stack, plans),
    )
    return plans, costs, times, hidden


def _stage_held_bytes(train: TrainSpec, cfg: ParallelConfig, stack: StackSpec, st: StagePlan) -> tuple[float, float]:
    """(held, kept) gradient bytes of one stage whose gradients live per stage (``costmodels.memory.
    held_gradient_bytes``)."""
    data_ranks = cfg.dp * cfg.cp
    static = stack_static_memory(stack, st.params.dense, st.params.expert, train.precision, cfg.pp, data_ranks, cfg.ep,
                                 cfg.zero, schedule_spec(cfg.schedule).split_backward, cfg.expert_data_ranks)
    return held_gradient_bytes(static.gradients_bytes, st.params.dense, st.params.expert, data_ranks, cfg.ep, cfg.zero,
                               cfg.expert_data_ranks)


def _held_bytes(train: TrainSpec, cfg: ParallelConfig, stack: StackSpec, plans: list[StagePlan]) -> dict[str, tuple[float, ...]]:
    """``StageTimes.held_bytes`` and ``held_kept_bytes`` where each stage's gradients live only from its first
    weight-gradient pass to its last (``costmodels.memory.gradients_held_per_stage``); none otherwise, where
    ``_rank_memory_gib`` counts them through the whole step."""
    if not gradients_held_per_stage(stack, cfg.pp, cfg.dp * cfg.cp, cfg.zero, train.precision):
        return {}
    held = [_stage_held_bytes(train, cfg, stack, st) for st in plans]
    return {"held_bytes": tuple(h for h, _ in held), "held_kept_bytes": tuple(k for _, k in held)}


def _retained_bytes(cfg: ParallelConfig, stack: StackSpec, plans: list[StagePlan]) -> tuple[float, ...]:
    """Bytes each stage holds from a microbatch's B to its W (``StageTimes.retained_bytes``): where
    the schedule splits the backward on torch's pipeline runtime, whose ``stage_backward_input``
    keeps the weight gradients' inputs; none on the first stage, whose whole backward runs as W
    (above), nor where B and W run as one."""
    if not schedule_spec(cfg.schedule).split_backward or stack.pipeline_runtime != "torch":
        return ()
    return tuple(0.0 if st.layout.stage == 0 else st.retained_bytes for st in plans)


def _largest_unit_params(model: ModelSpec, cfg: ParallelConfig, rank_plans: list[StagePlan]) -> float:
    """Largest block FSDP gathers at once: a transformer layer (an MoE layer with its local experts),
    or the embedding/head matrix."""
    unit = max(layer_params(model, cfg.tp, cfg.ep, st.moe_layers > 0, cfg.etp).total for st in rank_plans)
    if any(st.layout.has_embedding or st.layout.has_head for st in rank_plans):
        unit = max(unit, model.vocab_size * model.hidden_size / cfg.tp)
    return unit


def _widest_per_token(model: ModelSpec, cfg: ParallelConfig, rank_plans: list[StagePlan]) -> float:
    """The widest FFN intermediate per token of the rank's layers, per TP rank: the dense MLP's, or an
    MoE layer's routed rows per token (``costmodels.experts.routed_rows``) times the expert FFN."""
    widest = 0.0
    if any(st.dense_layers for st in rank_plans):
        widest = model.ffn_size / cfg.tp
    if any(st.moe_layers for st in rank_plans):
        widest = max(widest, routed_rows(model, 1.0, cfg.ep) * (model.moe_ffn_hidden_size or 0) / cfg.tp)
    return widest


def _loss_vocab(model: ModelSpec, cfg: ParallelConfig, variant: ActivationVariant) -> float:
    """Vocabulary entries per token the loss's working tensors span on a rank: V/tp where the loss
    runs over vocabulary shards (``ActivationVariant.vocab_parallel_loss``: Megatron's
    ``_VocabParallelCrossEntropy``), all V where the logits are gathered first (ppplan's runtime: its
    backward holds the log-softmax's and the NLL's gradients over the whole vocabulary, measured with
    the torch profiler's allocation events on tiny-gpt tp 4: 2 x 2 MiB at mbs 4, not 2 x 0.5)."""
    return model.vocab_size / (cfg.tp if variant.vocab_parallel_loss else 1)


def _zero3_gathered_bytes(model: ModelSpec, cfg: ParallelConfig, stack: StackSpec, rank_plans: list[StagePlan],
                          bytes_per_param: int) -> float:
    """Unsharded parameters a ZeRO-3 rank holds at its peak. FSDP2 on its own keeps the unit in use
    and the prefetched one (``ZERO3_GATHERED_UNITS``). Under torch.distributed.pipelining every
    backward runs with ``set_reshard_after_backward(False)`` until the stage's REDUCE_GRAD action, which
    reshards it (torch/distributed/pipelining/stage.py ``perform_reduce_grad``), so a stage a backward gathered
    stays unsharded until a forward of it reshards it (ppplan's runtime, and the torchtitan configs ppplan
    emits, ``fsdp_reshard_after_forward = "always"``, reshard after each forward at ZeRO 3) or REDUCE_GRAD does
    (``costmodels.schedules.fsdp_lowering`` counts the gathers that follow). Counted for the rank's whole
    parameters: a rank of one stage peaks during a backward, which holds them all; an upper bound for a rank of
    several stages, not per stage as the gradients are (``costmodels.memory.gradients_held_per_stage``), which
    ``_rank_memory_gib`` takes down to the stages the runtime keeps unsharded where it evicts (``_unsharded_weights_share``)."""
    if cfg.zero != 3:
        return 0.0
    if stack.pipeline_runtime == "torch" and not microbatch_grad_sync(stack, cfg.pp, cfg.dp * cfg.cp, cfg.zero):
        return sum(st.params.total for st in rank_plans) * bytes_per_param
    return ZERO3_GATHERED_UNITS * _largest_unit_params(model, cfg, rank_plans) * bytes_per_param


def _unsharded_weights_share(stack: StackSpec, train: TrainSpec, cfg: ParallelConfig, rank_plans: list[StagePlan]) -> float:
    """The share of a rank's unsharded weights it holds at once: 1, or where torch's runtime evicts unsharded stages
    (``costmodels.memory.evicts_unsharded_stages``) the largest ``MAX_ACTIVE_STAGES`` stages' share
    (``unsharded_weights_share``). The unsharded weights are FSDP2's all-gather outputs, apart from its shards in
    every precision (``_fp32_param_shard_bytes``), and the reshard frees them (measured on the runtime:
    tests/launch/runtime/test_fsdp_gathers_dist.py)."""
    if not evicts_unsharded_stages(stack, cfg.pp, cfg.v, cfg.dp * cfg.cp, cfg.zero, train.precision):
        return 1.0
    return unsharded_weights_share([st.params.total for st in rank_plans])


def _fp32_param_shard_bytes(stack: StackSpec, train: TrainSpec, cfg: ParallelConfig, dense: float, experts: float) -> float:
    """The fp32 shard an FSDP2-wrapped fp32 run keeps beside its unsharded weights below ZeRO 3
    (``costmodels.memory.fp32_shard_bytes``): the sharded parameter (a DTensor's local tensor) is its own storage,
    apart from the all-gather outputs that hold the unsharded parameter. Measured on ppplan's runtime (tiny-llama,
    pp 2 x dp 2, fp32): 12,853,248 B of shards at ZeRO 0 and 6,426,624 at ZeRO 1 beside 12,853,248 B unsharded on
    the first pipeline rank. A mixed-precision run's fp32 shard is its master copy, in the optimizer state (12 B);
    at ZeRO 3 the static weights are the shards already."""
    if train.precision != "fp32" or cfg.zero >= 3 or not stack.fsdp_wraps(cfg.dp * cfg.cp, cfg.zero, train.precision):
        return 0.0
    return fp32_shard_bytes(dense, experts, cfg.dp * cfg.cp, cfg.zero, cfg.expert_data_ranks)


def p2p_buffer_count(stack: StackSpec, cfg: ParallelConfig, rank_plans: list[StagePlan]) -> int:
    """Boundary tensors a pipeline rank keeps for p2p. torch.distributed.pipelining's ``PipelineStage``
    allocates once, and keeps across steps, one receive buffer per microbatch for the activations
    (every stage but the first) and one for their gradients (every stage but the last)
    (torch/distributed/pipelining/stage.py: ``_setup_forward_recv_info`` and
    ``_create_grad_recv_info`` per ``chunk_id``; measured on the runtime: tiny-llama pp4 v2 M8
    holds 24, 32, 32, 24 such buffers on its ranks); sends go from the tensors themselves.
    Megatron's p2p allocates per transfer: ``P2P_BUFFERS`` in flight."""
    if stack.pipeline_runtime != "torch":
        return P2P_BUFFERS
    last = cfg.num_stages - 1
    return sum(cfg.num_microbatches * ((st.layout.stage > 0) + (st.layout.stage < last)) for st in rank_plans)


def _rank_memory_gib(
    model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig,
    rank_plans: list[StagePlan], activation_peak: float, stack: StackSpec, variant: ActivationVariant,
    part: str = "peak", held_peak: float | None = None, weights_share: float | None = None,
) -> dict[str, float]:
    """Per-rank memory in GiB by category: static state under ZeRO (dense parameters sharded over the
    dp x cp ranks, routed experts over the dp x cp / ep ranks holding them; gradients as the stack
    keeps them), activations of the microbatches in flight (from the schedule), the larger of the two backward
    phases' working tensors (a layer's: the MLP intermediate and its gradient, and a fully recomputed layer's re-run
    set; the head's loss: what it holds beside its kept tensor), p2p and DP bucket buffers, the optimizer step's excess over all that
    (``_optimizer_step_bytes``), allocator fragmentation, the runtime's own reserve and the buffers of
    the NCCL communicators the rank uses (``costmodels.communicators``). ``part``:
    "peak" (that), "backward" (without the step's excess) or "step" (the step's peak alone). Where each
    stage's gradients live per stage (``costmodels.memory.gradients_held_per_stage``) the gradients are
    ``held_peak``, what of them the schedule keeps alive at the rank's peak (``PipelineResult.peak_held_bytes``;
    None: all of them), and the step holds only their reduce-scattered shards. Where torch's runtime evicts
    unsharded stages (``_unsharded_weights_share``) the unsharded weights, and at ZeRO 3 the gathered ones, are the
    largest stages' it keeps unsharded at once; ``weights_share`` replaces that share (the search's memory lines:
    the share of equal stages)."""
    dense = sum(st.params.dense for st in rank_plans)
    experts = sum(st.params.expert for st in rank_plans)
    data_ranks = cfg.dp * cfg.cp
    static = stack_static_memory(stack, dense, experts, train.precision, cfg.pp, data_ranks, cfg.ep, cfg.zero,
                                 schedule_spec(cfg.schedule).split_backward, cfg.expert_data_ranks)
    step_static = static
    if gradients_held_per_stage(stack, cfg.pp, data_ranks, cfg.zero, train.precision):
        # the step runs after every stage's REDUCE_GRAD: only the reduce-scattered shards are left
        kept = held_gradient_bytes(static.gradients_bytes, dense, experts, data_ranks, cfg.ep, cfg.zero,
                                   cfg.expert_data_ranks)[1]
        step_static = replace(static, gradients_bytes=kept)
        if held_peak is not None:
            static = replace(static, gradients_bytes=held_peak)
    step = _optimizer_step_bytes(cluster, train, stack, step_static, cfg.zero, data_ranks)
    if part == "step":
        allocated = {"optimizer_step": step}
    else:
        allocated = _allocated_before_step(model, cluster, train, cfg, rank_plans, activation_peak, stack, variant, static,
                                           weights_share)
        if part == "peak" and step > sum(allocated.values()):
            # the step holds the static state and its temporaries while the activations are freed (the caching
            # allocator reuses their blocks): only its excess over the backward's peak counts
            allocated["optimizer_step"] = step - sum(allocated.values())
    allocated_bytes = sum(allocated.values())
    allocated["fragmentation"] = allocated_bytes * allocator_share(cluster, stack)
    out = {k: v / GIB for k, v in allocated.items()}
    if heap := heap_reserve_gib(cluster, cfg.tp, cfg.pp, cfg.dp * cfg.cp, cfg.zero, allocated_bytes / GIB,
                                cfg.num_microbatches):
        out["heap_reserve"] = heap
    out["runtime_reserved"] = cluster.runtime_reserved_gib
    if nccl := nccl_buffers_gib(cluster, model, cfg, rank_plans[0].rank):
        out["nccl_buffers"] = nccl
    return out


def _allocated_before_step(
    model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig, rank_plans: list[StagePlan],
    activation_peak: float, stack: StackSpec, variant: ActivationVariant, static: StaticMemory,
    weights_share: float | None,
) -> dict[str, float]:
    """What a rank has allocated at its backward's peak, by category, in bytes (``_rank_memory_gib``): all but the
    optimizer step's excess, the allocator's share and what lives outside the allocator."""
    dense = sum(st.params.dense for st in rank_plans)
    experts = sum(st.params.expert for st in rank_plans)
    p, held = bytes_per_element(train.precision), bytes_per_element(stack.held_precision(train.precision))
    tokens = train.seq_len // cfg.cp * cfg.mbs
    # the unsharded copies alive at once: the weights' below ZeRO 3, the gathered ones at ZeRO 3
    unsharded = weights_share if weights_share is not None else _unsharded_weights_share(stack, train, cfg, rank_plans)
    gathered = _zero3_gathered_bytes(model, cfg, stack, rank_plans, held) * unsharded
    # transient: a layer's backward holds the MLP intermediate and its gradient beside a fully recomputed layer's
    # re-run set; the head stage's loss backward, before any layer's, holds what the loss keeps beside its kept
    # tensor. One stream runs them one after the other, so the larger phase is the rank's peak. The layer phase
    # is priced with the head's kept tensors still counted in the activations (freed by then in torchtitan,
    # Megatron and ppplan's runtime; Composer keeps its outputs through the backward), so where the two are
    # close this can price above both phases, never below.
    transient = TRANSIENT_COPIES * p * tokens * _widest_per_token(model, cfg, rank_plans)
    working = _recompute_working_terms(model, train, cfg, rank_plans, variant)
    if any(st.layout.has_head for st in rank_plans):
        loss = loss_bytes_per_logit(variant, cfg.tp)[1] * tokens * _loss_vocab(model, cfg, variant)
        if loss > transient + sum(working.values()):
            transient, working = loss, {}
    p2p_buffers = (p2p_buffer_count(stack, cfg, rank_plans) * variant.residual_stream_bytes * tokens * model.hidden_size
                   / cfg.tp if cfg.pp > 1 else 0.0)
    bucket = min(dense + experts, bucket_params(stack.overlap, cfg.dp * cfg.cp))
    dp_buckets = DP_BUCKETS_IN_FLIGHT * bucket * stack.grad_reduce_bytes_per_param(train.precision) if syncs_gradients(cfg) else 0.0
    allocated = {
        "weights": static.weights_bytes * (unsharded if cfg.zero < 3 else 1.0) + gathered
                   + _fp32_param_shard_bytes(stack, train, cfg, dense, experts),
        "gradients": static.gradients_bytes,
        "optimizer": static.optimizer_bytes,
        "activations": activation_peak,
        "transient": transient,
        "comm_buffers": p2p_buffers + dp_buckets,
    }
    allocated.update(working)
    allocated.update(_cpu_heap_terms(cluster, cfg, dense + experts))
    return allocated


def heap_reserve_kinds(tp: int, pp: int, data_ranks: int, zero: int) -> tuple[str, ...]:
    """What a rank exchanges with other ranks during its step, as ``HeapReserve`` names it: tensor-parallel
    collectives (``tp``), pipeline sends kept to the step's end (``pp``), ZeRO-3 gathers (``zero3``)."""
    kinds = (("tp", tp > 1), ("pp", pp > 1), ("zero3", zero == 3 and data_ranks > 1))
    return tuple(kind for kind, on in kinds if on)


def heap_reserve_gib(cluster: ClusterSpec, tp: int, pp: int, data_ranks: int, zero: int, allocated_gib: float,
                     microbatches: int) -> float:
    """What a rank's allocator keeps resident on top of its fragmentation share for what it exchanges with
    other ranks (``ClusterSpec.heap_reserve``; the largest of its kinds, since one heap holds them all).

    On cpu-local (bench/cpu_heap.py, tiny-gpt fitted, tiny-llama and tiny-moe held out) glibc's heap grows
    past the live tensors by a near-constant number of bytes on tensor-parallel ranks (tiny-gpt at mbs 1:
    41.6, 41.2 and 41.1 MiB above the allocated bytes at tp 2, 4 and 8) and on pipeline ranks (most on the
    head's: 26.6 MiB of live tensors at the peak of a pp 8 1F1B run, 51.4 MiB resident), and under ZeRO 3
    by more the more microbatches the step runs (tiny-gpt dp 2 mbs 1: 1.4-1.6x the allocated bytes at 4
    microbatches, 2.1-2.5x at 16; the freed blocks stay in glibc's arenas). Those figures are the first fit's,
    under glibc's trimming; since the ranks keep freed memory (``launch/runtime/heap.py``) the refit's are in
    ``profiles/clusters/cpu-local.yaml``."""
    reserve = cluster.heap_reserve
    zero3 = reserve.zero3_share_per_microbatch * microbatches * allocated_gib
    sizes = {"tp": reserve.tp_gib, "pp": reserve.pp_gib, "zero3": zero3}
    return max((sizes[kind] for kind in heap_reserve_kinds(tp, pp, data_ranks, zero)), default=0.0)


def _optimizer_step_bytes(cluster: ClusterSpec, train: TrainSpec, stack: StackSpec, static: StaticMemory,
                          zero: int, data_ranks: int) -> float:
    """What a GPU rank holds while its optimizer steps: the static state and the step's temporaries
    (``optimizer_step_temp_bytes``); 0 where the step allocates nothing, and on CPU ranks, which count
    foreach Adam's temporary in full already (``_cpu_heap_terms``)."""
    if runs_on_cpu(cluster):
        return 0.0
    temp = optimizer_step_temp_bytes(stack, stack.held_precision(train.precision), static.updated_params, zero)
    if not temp:
        return 0.0
    return _step_weights_bytes(stack, static, train.precision, zero, data_ranks) + static.gradients_bytes \
        + static.optimizer_bytes + temp


def _step_weights_bytes(stack: StackSpec, static: StaticMemory, precision: str, zero: int, data_ranks: int) -> float:
    """The weights a rank holds while its optimizer steps. Where FSDP2 wraps the stages (``StackSpec.fsdp_wraps``)
    every unit is resharded before the step: under torch's pipeline by each stage's REDUCE_GRAD (its post-backward
    with ``set_reshard_after_backward(True)``, torch 2.13 ``pipelining/stage.py``) or the runtime's RESHARD actions,
    and without it by FSDP2's own post-backward (``reshard_after_backward`` defaults to True). What remains is the
    sharded parameter: under bf16's mixed precision the fp32 shard, counted among Adam's 12 B in the optimizer
    state, so none here; in fp32 the 4 B shard, over the data ranks where FSDP2 shards (ZeRO >= 1), whole where it
    does not. Elsewhere the weights as the static state counts them."""
    if not stack.fsdp_wraps(data_ranks, zero, precision):
        return static.weights_bytes
    if precision != "fp32":
        return 0.0
    return static.weights_bytes / data_ranks if zero in (1, 2) else static.weights_bytes


def _recompute_working_terms(
    model: ModelSpec, train: TrainSpec, cfg: ParallelConfig, rank_plans: list[StagePlan], variant: ActivationVariant,
) -> dict[str, float]:
    """Full recompute's re-run layer (``costmodels.memory.recompute_working_bytes``), on every device: a rank with
    a fully recomputed stage holds it beside its in-flight checkpoints while the layer's backward runs (on the
    head stage, unless the loss's backward holds more: ``_rank_memory_gib``)."""
    if not any(st.recompute == "full" for st in rank_plans):
        return {}
    moe = any(st.moe_layers for st in rank_plans)
    rerun = replace(variant, sp_keeps_gathered_inputs=variant.sp_recompute_keeps_gathered_inputs)
    layer = [layer_activation_bytes(model, train.seq_len, cfg.mbs, cfg.tp, cfg.sequence_parallel, k, v,
                                    cp=cfg.cp, ep=cfg.ep, moe=moe, etp=cfg.etp) for k, v in (("none", rerun), ("full", variant))]
    working = recompute_working_bytes(*layer)
    return {"recompute_working": working} if working else {}


def _cpu_heap_terms(cluster: ClusterSpec, cfg: ParallelConfig, params: float) -> dict[str, float]:
    """What glibc's heap keeps on CPU ranks on top (``costmodels.runtime_costs``): foreach AdamW's
    temporary over the rank's optimizer shard; none on GPUs."""
    temp = optimizer_temp_bytes(cluster, params / (cfg.dp * cfg.cp if cfg.zero >= 1 else 1))
    return {"optimizer_temp": temp} if temp else {}


def ranks_per_core(cluster: ClusterSpec, cfg: ParallelConfig) -> float:
    """Processes per core on the fullest node where ranks share a node's cores (``concurrent_ranks_per_node``,
    CPU nodes); 1 where every rank has its own device."""
    cores = cluster.concurrent_ranks_per_node
    if cores is None:
        return 1.0
    return min(cfg.world_size, cluster.gpus_per_node) / cores


def _node_loads(cluster: ClusterSpec, cfg: ParallelConfig, cores: float) -> list[list[float]]:
    """``load[n][r]``: cores pipeline rank r wants on node n while it computes, ``min(tp, C) / tp``
    per process the rank grid puts there (a TP group larger than ``C`` already time-shares:
    ``RooflineTimes`` and a ``--tp-group`` profile include it, ``costmodels.rank_grid``)."""
    grid = RankGrid(cfg.tp, cfg.pp, cfg.dp, cfg.cp)
    share = min(cfg.tp, cores) / cfg.tp
    load = [[0.0] * cfg.pp for _ in range(-(-grid.world_size // cluster.gpus_per_node))]
    for rank in range(grid.world_size):
        load[rank // cluster.gpus_per_node][grid.coord(rank).pp] += share
    return load


def timeshared_work_bound_s(cluster: ClusterSpec, cfg: ParallelConfig, busy_s: tuple[float, ...], tail_s: list[float]) -> float:
    """A lower bound of ``timeshared_step_s`` for pricers that bound the pipeline rather than simulate
    it (``costmodels.pipeline_bound``): work is conserved, so the first node needs at least its ranks'
    total work (busy time plus tails, each weighted by the cores it wants, ``_node_loads``) over its
    ``C`` cores."""
    cores = cluster.concurrent_ranks_per_node
    if cores is None:
        return 0.0
    first = _node_loads(cluster, cfg, cores)[0]
    work_s = sum(wants * (busy + tail) for wants, busy, tail in zip(first, busy_s, tail_s))
    # to the picosecond: plans with the same work (pp4 and pp2 x dp2) tie exactly, whatever the
    # summation order, and the search's canonical tie-break decides between them
    return round(work_s / cores, 12)


def timeshared_step_s(
    cluster: ClusterSpec, cfg: ParallelConfig, schedule: Schedule, times: StageTimes, tails_s: list[float],
    efficiency: tuple[tuple[float, float], ...] = (),
) -> float:
    """The step where a node's ranks time-share fewer cores (0 when every rank has its own device):
    the pipeline's action lists under processor sharing (``costmodels.processor_sharing``).

    ``C = concurrent_ranks_per_node`` cores serve each node's ranks (CPU cores; torchrun runs one
    OMP thread per process, and Linux shares a core fairly among the ranks that want it); each
    computing pipeline rank wants the cores ``_node_loads`` gives it on each node. ``tails_s``
    (optimizer step and exposed data-parallel traffic per pipeline rank, in full-speed seconds) run
    after each rank's list. When no node is ever asked for more cores than it has, nothing is
    shared: 0. ``efficiency``: the measured time-sharing loss (``RuntimeCosts.timeshare_efficiency``)."""
    cores = cluster.concurrent_ranks_per_node
    if cores is None:
        return 0.0
    load = _node_loads(cluster, cfg, cores)
    if all(sum(wants) <= cores for wants in load):
        return 0.0
    return round(timeshared_makespan_s(schedule, times, tails_s, cores, load, efficiency), 12)  # ties: as the work bound


# the parts of a rank's memory breakdown (``_rank_memory_gib``) that no tensor allocates: the allocator's share on
# top of the allocated bytes, the heap a CPU rank keeps beyond it, and what the rank holds outside the allocator
NOT_ALLOCATED_PARTS = ("fragmentation", "heap_reserve", "runtime_reserved", "nccl_buffers")


def allocator_share(cluster: ClusterSpec, stack: StackSpec) -> float:
    """Share of a rank's allocated bytes its allocator holds beyond them: the stack's fitted
    ``allocator_fragmentation`` where its ranks are GPUs and it has one (the CUDA caching allocator as the
    stack drives it), else the cluster's (a CPU rank's heap is glibc's, whatever the stack)."""
    if stack.allocator_fragmentation is not None and not runs_on_cpu(cluster):
        return stack.allocator_fragmentation
    return cluster.allocator_fragmentation


def memory_limit_gib(cluster: ClusterSpec) -> float:
    """HBM the fit check allows: capacity less the documented safety margin."""
    return cluster.gpu.memory_gib * (1.0 - cluster.memory_safety_margin)


def _sum_passes(items: list[PassTimes]) -> PassTimes:
    total = ZERO_PASS
    for item in items:
        total = total.plus(item)
    return total


def _rank_work(
    cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig, stack: StackSpec, network: Network,
    plans: list[StagePlan], costs: list[PassTimes], hidden: list[dict[str, float]], result: PipelineResult, rank: int,
    runtime: RuntimeCosts = NO_RUNTIME_COSTS,
) -> RankWork:
    """Pipeline rank ``rank``'s passes, hidden time, once-per-step DP traffic (over its stages'
    simulated windows, ``costmodels.data_parallel``; none where the stack syncs every microbatch,
    which the passes already hold) and optimizer step (ZeRO >= 1: its 1/(dp·cp) shard of the
    dense parameters and 1/``expert_data_ranks`` of its experts)."""
    mine = [j for j, st in enumerate(plans) if st.rank == rank]
    passes = _sum_passes([costs[j] for j in mine])
    hides: dict[str, float] = {}
    for j in mine:
        for key, value in hidden[j].items():
            hides[key] = hides.get(key, 0.0) + value
    dense = sum(plans[j].params.dense for j in mine)
    experts = sum(plans[j].params.expert for j in mine)
    sync = RankSync()
    if syncs_gradients(cfg) and not microbatch_grad_sync(stack, cfg.pp, cfg.dp * cfg.cp, cfg.zero):
        windows = []
        for chunk, j in enumerate(mine):
            first_forward, last_backward = result.stage_span_s(j, rank)
            windows.append(StageWindow(plans[j].params.dense, first_forward, costs[j].forward_s, last_backward,
                                       costs[j].backward_input_s + costs[j].backward_weight_s, plans[j].params.expert,
                                       fsdp_units_of(plans[j].layout, plans[j].moe_layers), chunk))
        sync = rank_sync(cluster, cfg, stack.overlap, network, rank, windows, result.rank_span_s(rank)[1],
                         bytes_per_element(stack.held_precision(train.precision)), stack.grad_reduce_bytes_per_param(train.precision),
                         timing_known=bool(result.stage_last_backward_s))
    host = fsdp_host_s(runtime, stack.fsdp_wraps(cfg.dp * cfg.cp, cfg.zero, train.precision), sum(plans[j].layout.num_layers for j in mine), len(mine))
    if host:  # FSDP2's copies and hooks on the cores that compute (CPU ranks), after the backward
        sync = replace(sync, grad_reduce_s=sync.grad_reduce_s + host, grad_reduce_exposed_s=sync.grad_reduce_exposed_s + host)
    shard = cfg.dp * cfg.cp if cfg.zero >= 1 else 1
    expert_shard = cfg.expert_data_ranks if cfg.zero >= 1 else 1
    updated = dense / shard + experts / expert_shard
    optimizer = (updated * runtime.optimizer_s_per_param if runtime.optimizer_s_per_param is not None
                 else memory_bound_time_s(cluster, updated * ADAM_STEP_BYTES_PER_PARAM))
    return RankWork(passes=passes, hidden=hides, sync=sync, optimizer_s=optimizer)


def estimate(
    model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, cfg: ParallelConfig, layers: LayerTimes | None = None,
    pricer: PipelinePricer = price_pipeline, *, stack: StackSpec,
) -> Estimate:
    """Price one configuration on ``stack`` (the rules are checked by the caller: ``costmodels.rules``).

    ``pricer`` is the event simulator over the exact action list; the search passes the
    bounds (``costmodels.pipeline_bound.bound_pipeline``) to prune candidates."""
    overlap = stack.overlap
    layers = layers or RooflineTimes(model, cluster, train.precision, stack=stack)
    runtime = runtime_costs_of(layers, cluster)
    network = pricing_network(cluster, runtime)
    exact = pricer is price_pipeline or cfg.schedule == "custom"  # else a bounding pricer: no action list
    plans, costs, times, hidden = _pipeline_inputs(model, cluster, train, cfg, layers, stack, overlap, network,
                                                   regathers=exact)
    if cfg.schedule == "custom":
        schedule = schedule_of("custom", cfg.pp, cfg.v, cfg.num_microbatches, cfg.schedule_csv)
        result = price_actions(schedule, times)
    else:
        schedule = None
        result = pricer(cfg.schedule, cfg.pp, cfg.v, cfg.num_microbatches, times)
    ranks = [_rank_work(cluster, train, cfg, stack, network, plans, costs, hidden, result, r, runtime) for r in range(cfg.pp)]
    tails = [w.optimizer_s + w.sync.grad_reduce_exposed_s + w.sync.param_gather_exposed_s for w in ranks]
    bounding = schedule is None and pricer is not price_pipeline  # a bounding pricer: work bounds stay lower bounds
    if cluster.concurrent_ranks_per_node is None:
        timeshared = 0.0
    elif bounding:
        timeshared = timeshared_work_bound_s(cluster, cfg, result.busy_s, tails)
    else:
        schedule = schedule or generate_schedule(cfg.schedule, cfg.pp, cfg.v, cfg.num_microbatches)
        timeshared = timeshared_step_s(cluster, cfg, schedule, times, tails, runtime.timeshare_efficiency)
    overhead_s = cluster.efficiency.step_overhead_s
    period = None
    if stack.steps_overlap(cfg.schedule, train.precision):  # no barrier between steps: the steady-state period
        gaps = [step_gap_s(w, overhead_s) for w in ranks]
        period = work_bound_period_s(result.busy_s, gaps)
        if not bounding:  # never below the work bound, rounding included
            schedule = schedule or generate_schedule(cfg.schedule, cfg.pp, cfg.v, cfg.num_microbatches)
            period = max(period, steady_state_period_s(schedule, times, gaps))
    step = compose_step(result, ranks, cfg.num_microbatches, overhead_s, timeshared, period)
    per_rank = [[st for st in plans if st.rank == r] for r in range(cfg.pp)]
    variant = activation_variant(cluster, train, stack, cfg)
    memory = [
        _rank_memory_gib(model, cluster, train, cfg, per_rank[r], result.peak_activation_bytes[r], stack, variant,
                         held_peak=result.peak_held_bytes[r] if result.peak_held_bytes else None)
        for r in range(cfg.pp)
    ]
    peak = [round(sum(m.values()), 4) for m in memory]
    gpus = cfg.world_size
    # every layer's recompute kind, then the multi-token prediction modules' layers (the last stage's kind)
    all_layers = [st.recompute for st in plans for _ in range(st.layout.num_layers)]
    all_layers += [st.recompute for st in plans if st.layout.has_head] * model.mtp_layers
    model_flops = model_flops_per_iteration(model, train.global_batch, train.seq_len)
    hw_flops = hardware_flops_per_iteration(model, train.global_batch, train.seq_len, all_layers, stack.kernels.selective_recompute,
                                            early_stop=stops_early(stack.kernels))
    peak_tflops = peak_flops(cluster, train.precision) / 1e12
    model_tflops = model_flops / step.step_s / gpus / 1e12
    hw_tflops = hw_flops / step.step_s / gpus / 1e12
    limit = memory_limit_gib(cluster)
    parameters = model_parameters(model)
    return Estimate(
        step_time_s=step.step_s,
        tokens_per_s=train.global_batch * train.seq_len / step.step_s,
        model_tflops_per_gpu=model_tflops,
        hw_tflops_per_gpu=hw_tflops,
        mfu=model_tflops / peak_tflops,
        hfu=hw_tflops / peak_tflops,
        bubble_fraction=result.bubble_fraction,
        peak_memory_gib=peak,
        memory_limit_gib=limit,
        fits=max(peak) <= limit,
        breakdown=step.breakdown,
        memory_breakdown_gib=[{k: round(v, 4) for k, v in m.items()} for m in memory],
        params_total=float(parameters.total),
        params_active=float(parameters.active),
    )
