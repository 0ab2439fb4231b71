"""What one virtual stage costs, planned once per kind of stage: its layers' pass times (``costmodels.layer_costs``),
the activations it keeps per microbatch in flight, its parameters and what it retains between a split backward's
halves (``costmodels.memory``). ``costmodels.estimate`` prices the pipeline over these plans and
``costmodels.rank_memory`` adds up a pipeline rank's memory from them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from costmodels.comm import Network, sequence_parallel_gather_s
from costmodels.layer_costs import (
    ZERO_PASS,
    LayerTimes,
    PassTimes,
    bytes_per_element,
    runs_on_cpu,
    tp_group_timeshare,
)
from costmodels.layout import StageLayout
from costmodels.memory import (
    ActivationVariant,
    StageParams,
    embedding_activation_bytes,
    end_weight_grad_input_bytes,
    layer_activation_bytes,
    saved_weight_copy_bytes,
    stage_output_bytes,
    stage_param_split,
    weight_grad_input_bytes,
)
from costmodels.mtp import head_with_mtp_activation_bytes, head_with_mtp_times
from costmodels.offload import OffloadPlan, peak_resident_layers
from costmodels.params import moe_layers_in
from costmodels.schedules.registry import schedule_spec
from costmodels.schedules.torch_order import combined_paired_share
from profiles.schema import ClusterSpec, ModelSpec, ParallelConfig, TrainSpec
from profiles.stack_schema import StackSpec


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


def plan_stage(
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


def plan_stages(
    model: ModelSpec, train: TrainSpec, cfg: ParallelConfig, layers: LayerTimes, layouts: list[StageLayout],
    variant: ActivationVariant, regather: Callable[[str], PassTimes],
) -> list[StagePlan]:
    """``plan_stage`` of each of ``layouts`` (``regather``: the layer's re-gather for a recompute kind), planned once
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
            plan = planned[key] = plan_stage(model, train, cfg, layers, layout, variant, regather=regather(recompute))
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
