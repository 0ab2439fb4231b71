"""Tensor parallelism with DTensor (Megatron-LM's split, Shoeybi et al. 2019, Sec. 3).

Per layer: q/k/v and the first MLP projections are column-parallel (heads and
ffn split over tp ranks), the attention output and the second MLP projection
row-parallel. The token embedding is vocabulary-parallel (row-wise) and the
logits column-parallel over the vocabulary, gathered back before the loss.

With ``sequence_parallel`` (Korthikanti et al. 2022, Sec. 4.2) the norms run on
sequence shards: activations between layers (and between pipeline stages) are
``[batch, seq / tp, hidden]`` local shards; the all-reduces become an
all-gather before the column-parallel projections and a reduce-scatter after
the row-parallel ones. Without it, activations are replicated on the tp ranks. The all-gathered
input of the attention and of the MLP is one replicated DTensor read by all their projections, which keep
it for the backward, every position on every tp rank (``StackKernels.sequence_parallel_keeps_gathered_inputs``,
measured by ``ppplan profile --tp-group``); a plan's ``sp_regather`` keeps this rank's shard instead and
gathers it again in the backward, as Megatron-LM does (``launch.runtime.regather``), except under full
recompute, whose checkpoint keeps the layer's input only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from launch.runtime.model import StageModule, TransformerLayer
from launch.runtime.moe import MoEFeedForward
from launch.runtime.regather import RegatherSaved


def _activation_layout(sequence_parallel: bool) -> Shard | Replicate:
    return Shard(1) if sequence_parallel else Replicate()


def layer_plan(sequence_parallel: bool, gather_inputs: bool = True) -> dict[str, object]:
    """The parallel style of each submodule of a ``TransformerLayer``; ``gather_inputs`` False leaves the attention's
    and the MLP's input to hooks of their own (``gather_block_input``)."""
    between = _activation_layout(sequence_parallel)
    plan: dict[str, object] = {
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=between),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=between),
    }
    # The block's input becomes one replicated DTensor shared by its column-parallel projections, so the backward
    # sums their input gradients locally and reduces them once (one all-reduce, or with sequence parallelism one
    # reduce-scatter), as Megatron's fused QKV and fc1 do and costmodels.comm.tp_layer_comm_s prices; converted per
    # projection, each of q, k, v, w1 (and w3) all-reduced its own gradient. Where a plan keeps the sequence-parallel
    # inputs as shards the gather is gather_block_input's instead (parallelize_layer).
    if gather_inputs:
        plan.update(
            {
                "attention": PrepareModuleInput(input_layouts=(between,), desired_input_layouts=(Replicate(),)),
                "feed_forward": PrepareModuleInput(input_layouts=(between,), desired_input_layouts=(Replicate(),)),
            }
        )
    if sequence_parallel:
        plan.update({"attention_norm": SequenceParallel(), "ffn_norm": SequenceParallel()})
    return plan


def gather_block_input(block: nn.Module, tp_mesh: DeviceMesh, regather: Callable[[], bool]) -> None:
    """Hooks on ``block`` (a layer's attention or dense MLP, under sequence parallelism): its input, this rank's
    sequence shard, is all-gathered to one replicated DTensor (the backward reduce-scatters its gradient), and while
    ``regather()`` its forward runs under ``RegatherSaved``, which keeps the shard for the backward in place of what
    the projections save and gathers it again there."""
    group = tp_mesh.get_group()
    open_: list[RegatherSaved] = []

    def enter(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        shard = args[0] if isinstance(args[0], DTensor) else DTensor.from_local(args[0], tp_mesh, [Shard(1)], run_check=False)
        whole = shard.redistribute(tp_mesh, [Replicate()])
        if torch.is_grad_enabled() and regather():
            saving = RegatherSaved(whole, shard, group)
            saving.__enter__()
            open_.append(saving)
        return (whole, *args[1:])

    def leave(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if open_:
            open_.pop().__exit__()

    block.register_forward_pre_hook(enter)
    block.register_forward_hook(leave, always_call=True)


def _add_w3(plan: dict[str, object], layer: TransformerLayer) -> dict[str, object]:
    if isinstance(layer.feed_forward, MoEFeedForward):
        return _moe_plan(plan)
    if layer.feed_forward.w3 is not None:
        plan = {**plan, "feed_forward.w3": ColwiseParallel()}
    return plan


def _moe_plan(plan: dict[str, object]) -> dict[str, object]:
    """An MoE layer shards its experts itself (``MoEFeedForward.set_parallel``, expert TP = tp) and computes on
    local tensors: with sequence parallelism it takes its input as this rank's sequence shard, gathers it on entry
    and reduce-scatters its partial output back to sequence shards on exit (``MoEFeedForward._enter`` and
    ``_exit``; ``costmodels.experts.moe_tp_collectives``)."""
    plan = {k: v for k, v in plan.items() if not k.startswith("feed_forward")}
    if "ffn_norm" in plan:  # sequence parallel
        plan["feed_forward"] = PrepareModuleInput(
            input_layouts=(Shard(1),), desired_input_layouts=(Shard(1),), use_local_output=True
        )
    return plan


def parallelize_layer(layer: TransformerLayer, tp_mesh: DeviceMesh, sequence_parallel: bool, sp_regather: bool = False) -> None:
    """Shard one transformer layer in place over ``tp_mesh`` (``layer_plan``); with sequence parallelism and
    ``sp_regather`` (``ParallelConfig.sp_regather``) its blocks keep their gathered inputs as shards for the backward
    unless the layer is recomputed whole (``gather_block_input``; an MoE block's gather is its own,
    ``MoEFeedForward.regather_input``)."""
    regathers = sequence_parallel and sp_regather
    parallelize_module(layer, tp_mesh, _add_w3(layer_plan(sequence_parallel, gather_inputs=not regathers), layer))
    if not regathers:
        return

    def regather() -> bool:
        return layer.recompute != "full"

    gather_block_input(layer.attention, tp_mesh, regather)
    if isinstance(layer.feed_forward, MoEFeedForward):
        layer.feed_forward.regather_input = regather
    else:
        gather_block_input(layer.feed_forward, tp_mesh, regather)


def apply_tensor_parallel(stage: StageModule, tp_mesh: DeviceMesh, sequence_parallel: bool, layers_done: bool = False,
                          sp_regather: bool = False) -> None:
    """Shard ``stage`` in place over ``tp_mesh``; re-ties a shared embedding/logits weight.
    ``layers_done``: its transformer layers were sharded as they were built (``parallelize_layer``)."""
    between = _activation_layout(sequence_parallel)
    for layer in () if layers_done else stage.layers.values():
        parallelize_layer(layer, tp_mesh, sequence_parallel, sp_regather)
    if stage.embedding is not None:
        plan: dict[str, object] = {"tok": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())}
        parallelize_module(stage.embedding, tp_mesh, plan)
        if sequence_parallel:
            # positions are added on the full sequence, then each rank keeps its shard
            parallelize_module(
                stage.embedding,
                tp_mesh,
                PrepareModuleOutput(output_layouts=Replicate(), desired_output_layouts=between, use_local_output=True),
            )
    if stage.head is not None:
        head_plan: dict[str, object] = {
            "proj": ColwiseParallel(input_layouts=between, output_layouts=Replicate(), use_local_output=True)
        }
        if sequence_parallel:
            head_plan["norm"] = SequenceParallel()
        parallelize_module(stage.head, tp_mesh, head_plan)
    if stage.tied:
        stage.tie_embeddings()
