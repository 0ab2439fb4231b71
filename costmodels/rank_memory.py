"""A pipeline rank's memory, by category, from its stages' plans (``costmodels.stage_plan``): static state under
ZeRO as the stack keeps it, the schedule's in-flight activations, the working tensors of the backward's phases,
p2p and data-parallel buffers, the optimizer step's excess, the allocator's share and what lives outside the
allocator. ``costmodels.estimate`` calls it with the simulator's activation peaks; the search's memory lines
(``uniform_rank_memory``) with uniform stages."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from costmodels.communicators import nccl_buffers_gib
from costmodels.data_parallel import (
    bucket_params,
    syncs_gradients,
)
from costmodels.experts import routed_rows
from costmodels.layer_costs import (
    bytes_per_element,
    runs_on_cpu,
)
from costmodels.layout import layouts_of
from costmodels.memory import (
    GIB,
    ActivationVariant,
    StaticMemory,
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
    stack_static_memory,
    unsharded_weights_share,
)
from costmodels.runtime_costs import (
    optimizer_temp_bytes,
)
from costmodels.schedules.registry import schedule_spec
from costmodels.stage_plan import StagePlan, activation_variant, plan_stage
from profiles.schema import ClusterSpec, ModelSpec, ParallelConfig, TrainSpec
from profiles.stack_schema import StackSpec

# Buffer counts (each a multiple of one buffer's bytes):
ZERO3_GATHERED_UNITS = 2  # FSDP2 with resharding: the unit in use and the one prefetched (torch FSDP2 implicit prefetch)
TRANSIENT_COPIES = 2  # the widest activation (the MLP intermediate) and its gradient, alive together in backward
P2P_BUFFERS = 4  # Megatron's p2p: forward receive and send, backward receive and send of the boundary tensor
DP_BUCKETS_IN_FLIGHT = 2  # one bucket being reduced while the next fills (double buffering)


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
        plan_stage(model, train, cfg, None, layout, variant, kind)
        for layout in layouts_of([layers_per_stage] * cfg.num_stages, cfg.pp, cfg.v, cfg.schedule)
        if layout.pipeline_rank == rank
    ]
    activation = max(st.activation_bytes for st in plans)
    held = None  # None: all of the rank's gradients
    if not held_gradients and gradients_held_per_stage(stack, cfg.pp, cfg.dp * cfg.cp, cfg.zero, train.precision):
        held = 0.0

    def gib(inflight_stage_microbatches: float, part: str = "peak") -> float:
        return sum(rank_memory_gib(model, cluster, train, cfg, plans, inflight_stage_microbatches * activation, stack,
                                    variant, part, held, weights_share).values())

    return gib


def _one_stage_held_bytes(train: TrainSpec, cfg: ParallelConfig, stack: StackSpec, st: StagePlan) -> tuple[float, float]:
    """(held, kept) gradient bytes of one stage whose gradients live per stage (``costmodels.memory.
    held_gradient_bytes``)."""
    data_ranks = cfg.dp * cfg.cp
    static = stack_static_memory(stack, st.params.dense, st.params.expert, train.precision, cfg.pp, data_ranks, cfg.ep,
                                 cfg.zero, schedule_spec(cfg.schedule).split_backward, cfg.expert_data_ranks)
    return held_gradient_bytes(static.gradients_bytes, st.params.dense, st.params.expert, data_ranks, cfg.ep, cfg.zero,
                               cfg.expert_data_ranks)


def stage_held_bytes(train: TrainSpec, cfg: ParallelConfig, stack: StackSpec, plans: list[StagePlan]) -> dict[str, tuple[float, ...]]:
    """``StageTimes.held_bytes`` and ``held_kept_bytes`` where each stage's gradients live only from its first
    weight-gradient pass to its last (``costmodels.memory.gradients_held_per_stage``); none otherwise, where
    ``rank_memory_gib`` counts them through the whole step."""
    if not gradients_held_per_stage(stack, cfg.pp, cfg.dp * cfg.cp, cfg.zero, train.precision):
        return {}
    held = [_one_stage_held_bytes(train, cfg, stack, st) for st in plans]
    return {"held_bytes": tuple(h for h, _ in held), "held_kept_bytes": tuple(k for _, k in held)}


def stage_retained_bytes(cfg: ParallelConfig, stack: StackSpec, plans: list[StagePlan]) -> tuple[float, ...]:
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
    ``rank_memory_gib`` takes down to the stages the runtime keeps unsharded where it evicts (``_unsharded_weights_share``)."""
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


def rank_memory_gib(
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
    """What a rank has allocated at its backward's peak, by category, in bytes (``rank_memory_gib``): all but the
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
    head stage, unless the loss's backward holds more: ``rank_memory_gib``)."""
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


# the parts of a rank's memory breakdown (``rank_memory_gib``) that no tensor allocates: the allocator's share on
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
