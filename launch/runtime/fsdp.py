"""Data parallelism and ZeRO with FSDP2 ``fully_shard`` (one group per
transformer layer, plus the stage root for embedding / head / norms).

How ``zero`` (Rajbhandari et al. 2020) maps onto FSDP2:

=====  ===============================================  ===================================
zero   FSDP2 call                                       what is sharded over dp
=====  ===============================================  ===================================
0      ``fully_shard`` on the 2-D mesh (dp_replicate =  nothing: HSDP with one shard is
       dp, dp_shard = 1), ``reshard_after_forward=      DDP; gradients all-reduced once
       False``                                          per step
1, 2   ``fully_shard`` over dp,                         optimizer states and gradients;
       ``reshard_after_forward=False``                  parameters gathered for forward
                                                        and kept through backward
3      ``fully_shard`` over dp,                         parameters too: freed after
       ``reshard_after_forward=True``                   forward, re-gathered in backward
=====  ===============================================  ===================================

FSDP2 has no optimizer-only sharding, so zero 1 runs as zero 2 (gradients
sharded as well): it never uses more memory than zero 1 is priced at and moves
the same bytes (reduce-scatter + all-gather = one all-reduce). Under pipeline
parallelism torch's schedules keep gradients unsharded while microbatches
accumulate and reduce-scatter them once after the last backward of the step.
Gradients are averaged over the data-context ranks, dp x cp (FSDP's default divide
factor; a context-parallel rank's loss is the mean over its share of the sequence,
as torchtitan's ``dp_shard_cp``), so with the pipeline's division by the microbatch
count the result is the gradient of the mean loss over the global batch.

bf16 is FSDP2's mixed precision, as torchtitan runs it: ``MixedPrecisionPolicy(param_dtype=bf16,
reduce_dtype=fp32)``. The sharded parameters stay fp32 (the optimizer's master weights); each unit's
all-gather casts them to one bf16 unsharded copy that forward and backward use, whatever the number of
microbatches in flight; gradients come out bf16, FSDP2 accumulates the unsharded ones in fp32 while the
pipeline keeps the sync off (``FSDPParam.to_accumulated_grad_if_needed``) and reduce-scatters them in fp32.
So every bf16 stage is wrapped, on a one-rank mesh where dp x cp = 1 (ppplan-torch's
``StackSpec.fsdp_wraps``, the rule the cost model prices too). The
alternative, ``torch.autocast`` over fp32 parameters (ppplan's runtime until 2026-12), saves a bf16 cast of
every GEMM weight per microbatch in flight and keeps an fp32 residual stream.

A mixture-of-experts layer adds two FSDP units inside the layer's: the routed experts,
sharded or replicated over the ranks holding the same experts (the expert mesh's
``edp`` dims), and the router with the shared experts over the data-context ranks.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from launch.runtime.model import StageModule
from launch.runtime.moe import MoEFeedForward

EXPERT_DIMS = {("dp_replicate", "dp_shard"): ("edp_replicate", "edp_shard"), ("dp_shard",): ("edp_shard",)}


MIXED_PRECISION = {"bf16": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)}


def zero_policy(zero: int) -> tuple[tuple[str, ...], bool]:
    """(mesh dims to shard/replicate over, reshard_after_forward) for ``zero``."""
    if zero == 0:
        return ("dp_replicate", "dp_shard"), False
    if zero in (1, 2):
        return ("dp_shard",), False
    if zero == 3:
        return ("dp_shard",), True
    raise ValueError(f"zero must be 0-3, got {zero}")


def _sub_mesh(mesh: DeviceMesh, dims: tuple[str, ...]) -> DeviceMesh:
    return mesh[dims] if len(dims) > 1 else mesh[dims[0]]


def apply_data_parallel(stage: StageModule, mesh: DeviceMesh, zero: int, expert_mesh: DeviceMesh | None = None,
                        precision: str = "fp32") -> None:
    """Wrap each layer (and an MoE layer's experts and router first), then the stage, with
    ``fully_shard`` per ``zero_policy``, in ``precision``'s mixed precision (``MIXED_PRECISION``)."""
    dims, reshard = zero_policy(zero)
    dp_mesh = _sub_mesh(mesh, dims)
    policy = MIXED_PRECISION.get(precision, MixedPrecisionPolicy())
    for layer in stage.layers.values():
        if isinstance(layer.feed_forward, MoEFeedForward):
            assert expert_mesh is not None  # build_runtime makes it for an MoE model
            fully_shard(layer.feed_forward.experts, mesh=_sub_mesh(expert_mesh, EXPERT_DIMS[dims]), reshard_after_forward=reshard,
                        mp_policy=policy)
            fully_shard(layer.feed_forward, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=policy)
        fully_shard(layer, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=policy)
    fully_shard(stage, mesh=dp_mesh, reshard_after_forward=reshard, mp_policy=policy)
