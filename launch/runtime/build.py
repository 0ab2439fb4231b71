"""Assemble one rank's share of a plan: stage modules, TP, FSDP, pipeline schedule, optimizer.

Order follows torchtitan: build the stage's pieces (only this rank's layers and,
of each MoE layer, its experts; seeded per piece), set recompute per stage, apply
tensor parallelism, join the expert- and context-parallel groups, then data
parallelism (FSDP2, which also runs bf16 mixed precision), then wrap the stages in the pipeline schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from costmodels.layout import StageLayout, local_stages, loss_pipeline_rank
from costmodels.rank_grid import RankCoord
from launch.runtime.checks import apply_build_mutations
from launch.runtime.cp import ContextParallel
from launch.runtime.fsdp import apply_data_parallel
from launch.runtime.layout import grid_of
from launch.runtime.model import StageModule, TransformerLayer, build_stage_module, lm_loss
from launch.runtime.moe import ExpertGroups, ExpertShard, MoEFeedForward, expert_shard_of
from launch.runtime.optim import build_optimizer
from launch.runtime.parallel import Groups, build_expert_mesh, build_groups, build_mesh
from launch.runtime.pp import build_schedule, build_stages
from launch.runtime.tp import apply_tensor_parallel, parallelize_layer
from profiles.loader import DEFAULT_STACK, load_stack
from profiles.schema import Plan


@dataclass
class Runtime:
    """Everything one rank needs to run training steps of a plan."""

    plan: Plan
    rank: int
    coord: RankCoord
    device: torch.device
    layouts: list[StageLayout]
    modules: dict[int, StageModule]
    schedule: object
    optimizer: torch.optim.Optimizer
    groups: Groups

    @property
    def has_first_stage(self) -> bool:
        return any(lay.has_embedding for lay in self.layouts)

    @property
    def has_loss(self) -> bool:
        return self.coord.pp == loss_pipeline_rank(self.plan.config)


def _build_module(plan: Plan, layout: StageLayout, seed: int, device: torch.device, experts: ExpertShard | None,
                  tp_mesh: DeviceMesh | None) -> StageModule:
    """The stage on ``device``, each layer moved there and sharded over ``tp_mesh`` as soon as it is built,
    then the embedding and the head. Building the whole stage first and sharding it after put every
    layer's unsharded fp32 weights on the device at once: a stage of 8 Llama-3-405B layers (3.2 B
    parameters each) is 102 GB in fp32 before tp 8 splits it, more than any GPU holds, for a plan
    priced at its shards. (On cpu-local the measured peak does not move: glibc reuses the freed heap
    during training either way.)"""
    cfg = plan.config

    def prepare(layer: TransformerLayer) -> TransformerLayer:
        layer = layer.to(device)
        layer.set_recompute(cfg.recompute_of_stage(layout.stage))
        if tp_mesh is not None:
            parallelize_layer(layer, tp_mesh, cfg.sequence_parallel, cfg.sp_regather)
        return layer

    module = build_stage_module(
        plan.model, layout.first_layer, layout.num_layers, layout.has_embedding, layout.has_head, seed, experts, prepare
    ).to(device)
    if tp_mesh is not None:
        apply_tensor_parallel(module, tp_mesh, cfg.sequence_parallel, layers_done=True)
    return module


def _join_groups(module: StageModule, plan: Plan, coord: RankCoord, mesh: DeviceMesh, expert_mesh: DeviceMesh | None, groups: Groups) -> None:
    """Hook the MoE layers to the expert-parallel and tensor-parallel groups and the attention and
    embedding to the context-parallel ring."""
    cfg = plan.config
    context = ContextParallel(groups.cp, cfg.cp, coord.cp) if groups.cp is not None else None
    if module.embedding is not None:
        module.embedding.context = context
    for layer in module.layers.values():
        layer.attention.context = context
        if isinstance(layer.feed_forward, MoEFeedForward):
            assert expert_mesh is not None  # made for every MoE model
            expert_groups = ExpertGroups(
                ep=expert_mesh["ep"].get_group() if cfg.ep > 1 else None,
                ep_size=cfg.ep,
                tp=mesh["tp"].get_group() if cfg.tp > 1 else None,
            )
            layer.feed_forward.set_parallel(expert_groups, coord.tp, cfg.tp, cfg.sequence_parallel)


def build_runtime(
    plan: Plan, device: torch.device, seed: int, lr: float, custom_csv: str | None = None, optimizer: str = "adamw"
) -> Runtime:
    """Build this rank's stages of ``plan`` (collective: every rank calls it); ``optimizer``
    is AdamW for training, plain SGD for the first-step checks (``checks.py``)."""
    cfg = plan.config
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != cfg.world_size:
        raise ValueError(
            f"the plan needs tp*cp*pp*dp = {cfg.world_size} ranks but torchrun started {world}: "
            "launch it with ppplan launch, or fix --nnodes/--nproc-per-node"
        )
    coord = grid_of(cfg).coord(rank)
    mesh = build_mesh(cfg, device)
    expert_mesh = build_expert_mesh(cfg, device) if plan.model.is_moe else None
    groups = build_groups(plan.model, cfg, rank)
    layouts = local_stages(cfg, coord.pp)
    stack = load_stack(DEFAULT_STACK)  # the runtime is ppplan-torch's job, whatever stack the plan was priced on
    experts = expert_shard_of(plan.model, cfg.ep, coord.dp * cfg.cp + coord.cp)
    modules: dict[int, StageModule] = {}
    for layout in layouts:
        module = _build_module(plan, layout, seed, device, experts, mesh["tp"] if cfg.tp > 1 else None)
        _join_groups(module, plan, coord, mesh, expert_mesh, groups)
        if stack.fsdp_wraps(cfg.dp * cfg.cp, cfg.zero, plan.train.precision):  # the rule the cost model prices
            apply_data_parallel(module, mesh, cfg.zero if cfg.dp * cfg.cp > 1 else 0, expert_mesh, plan.train.precision)
        modules[layout.stage] = module
    apply_build_mutations(modules)
    stages = build_stages(modules, layouts, cfg.num_stages, device, mesh["pp"].get_group())
    schedule = build_schedule(cfg, stages, lm_loss, custom_csv)
    params = [p for m in modules.values() for p in m.parameters()]
    return Runtime(plan, rank, coord, device, layouts, modules, schedule, build_optimizer(params, lr, optimizer), groups)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _align_grad_placement(param: torch.nn.Parameter) -> None:
    """DTensor autograd may leave a gradient in another layout than its parameter (the
    vocab-parallel embedding's backward yields a replicated gradient of a row-sharded
    weight); bring it back to the parameter's layout so both tied copies hold the same
    local shard before they are summed."""
    grad = param.grad
    if isinstance(grad, DTensor) and isinstance(param, DTensor) and grad.placements != param.placements:
        param.grad = grad.redistribute(param.device_mesh, param.placements)


def _tied_copies(rt: Runtime) -> list[torch.nn.Parameter]:
    """This rank's untied copies of a tied embedding/logits weight."""
    copies: list[torch.nn.Parameter] = []
    for module in rt.modules.values():
        if module.tied:
            continue
        if module.embedding is not None:
            copies.append(module.embedding.tok.weight)
        if module.head is not None:
            copies.append(module.head.proj.weight)
    return copies


@torch.no_grad()
def sync_tied_gradients(rt: Runtime) -> None:
    """Sum the gradients of the copies of a tied weight so they take the same
    update (Megatron-LM's embedding all-reduce between first and last stage)."""
    if not rt.plan.model.tie_embeddings:
        return
    copies = [p for p in _tied_copies(rt) if p.grad is not None]
    for p in copies:
        _align_grad_placement(p)
    if len(copies) == 2:
        total = _local(copies[0].grad) + _local(copies[1].grad)
        for p in copies:
            _local(p.grad).copy_(total)
    elif len(copies) == 1 and rt.groups.tied is not None:
        dist.all_reduce(_local(copies[0].grad), group=rt.groups.tied)
