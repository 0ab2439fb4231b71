"""``estimate(model, cluster, train, config, stack=...) -> Estimate``: one configuration, priced.

Per virtual stage, the F/B/W times of its layers (``costmodels.stage_plan``, from ``costmodels.layer_costs``: the
stack's operators by roofline, or a measured profile) plus what the stack's runtime adds to each
pipeline action: ZeRO-3 parameter gathers beyond what compute hides, blocking p2p sends,
and a fixed overhead per action (``_stage_costs``). The event simulator runs the schedule's
exact action list over them (``costmodels.pipeline.price_pipeline``); the data-parallel
traffic each rank leaves exposed (``costmodels.data_parallel``), the optimizer step and a
per-step overhead complete the step, composed explicitly with a breakdown whose exposed
parts add up to it (``costmodels.step_time``). Memory is per pipeline rank (``costmodels.rank_memory``).

The stack (``StackSpec``) decides kernels, overlaps and overheads; every caller names it (there
is no default: a plan is priced as one stack runs it).
"""


from __future__ import annotations

from dataclasses import replace
from typing import Callable

from costmodels.comm import FP32_BYTES, GroupPlacement, Network, collective_s
from costmodels.compute import memory_bound_time_s, peak_flops
from costmodels.data_parallel import (
    RankSync,
    StageWindow,
    fsdp_units_of,
    rank_sync,
    syncs_gradients,
)
from costmodels.flops import hardware_flops_per_iteration, model_flops_per_iteration
from costmodels.grad_accumulation import grad_accumulation_s
from costmodels.layer_costs import (
    ZERO_PASS,
    LayerTimes,
    PassTimes,
    RooflineTimes,
    bytes_per_element,
)
from costmodels.layer_ops import stops_early
from costmodels.layout import stage_layouts
from costmodels.memory import (
    microbatch_grad_sync,
)
from costmodels.microbatch_dp import (
    dp_traffic_extra_s,
    evicted_regathers,
    fsdp_copy_s,
    microbatch_dp_traffic,
    regather_traffic,
    zero3_gathers_per_microbatch,
)
from costmodels.offload import exposed_copy_s
from costmodels.params import model_parameters
from costmodels.pipeline import PipelineResult, price_actions, price_pipeline
from costmodels.processor_sharing import ranks_per_core, timeshared_step_s, timeshared_work_bound_s
from costmodels.rank_grid import RankCoord, RankGrid
from costmodels.rank_memory import memory_limit_gib, rank_memory_gib, stage_held_bytes, stage_retained_bytes
from costmodels.runtime_costs import (
    NO_RUNTIME_COSTS,
    RuntimeCosts,
    compute_factor,
    fsdp_host_s,
    host_overhead_per_action_s,
    pricing_network,
    runtime_costs_of,
)
from costmodels.schedules.generate import generate_schedule, schedule_of
from costmodels.schedules.registry import schedule_spec
from costmodels.simulator import StageTimes
from costmodels.stage_plan import StagePlan, activation_variant, plan_stages, sp_regather_passes
from costmodels.steady_state import steady_state_period_s, work_bound_period_s
from costmodels.step_time import RankWork, compose_step, step_gap_s
from profiles.schema import ClusterSpec, Estimate, ModelSpec, ParallelConfig, TrainSpec
from profiles.stack_schema import StackOverlap, StackSpec

__all__ = ["action_overhead_s", "estimate", "stage_times"]


PipelinePricer = Callable[[str, int, int, int, StageTimes], PipelineResult]


# AdamW step traffic per parameter, one fused multi-tensor kernel: read the fp32 weight, gradient,
# m and v (16 B), write weight, m and v (12 B) and the 2-byte copy the forward uses.
ADAM_STEP_BYTES_PER_PARAM = 30


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
    (``costmodels.runtime_costs``). Zero where the stack replays the whole step as one CUDA graph
    (``StackOverlap.cuda_graphs`` full_iteration): the host issues no action."""
    if overlap.cuda_graphs == "full_iteration":
        return 0.0
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

    plans = plan_stages(model, train, cfg, layers, stage_layouts(cfg), variant, regather)
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
        retained_bytes=stage_retained_bytes(cfg, stack, plans),
        **stage_held_bytes(train, cfg, stack, plans),
    )
    return plans, costs, times, hidden


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
        rank_memory_gib(model, cluster, train, cfg, per_rank[r], result.peak_activation_bytes[r], stack, variant,
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
