"""Gradient accumulation: each microbatch's weight gradients added into the step's, priced by bytes.

Over a step of M microbatches every parameter's gradient is summed M times. How a stack does it
(``StackSpec.grad_accumulation``):

- ``fused``: the weight-gradient GEMM accumulates into the fp32 main-gradient buffer itself (beta = 1):
  Megatron-Core's ``gradient_accumulation_fusion``, on by default (``--no-gradient-accumulation-fusion``
  turns it off; ``fused_weight_gradient_mlp_cuda.wgrad_gemm_accum_fp32``, Transformer Engine's
  ``fuse_wgrad_accumulation``). No pass of its own.
- ``main_grad``: after each microbatch's backward the gradient is added into the main-gradient buffer,
  which the step zeroes: Megatron-LM v2.6's DDP hook, ``param.main_grad.add_(param.grad.data)``
  (megatron/model/distributed.py). A memory-bound pass per microbatch: read the buffer and the
  gradient, write the buffer.
- ``autograd``: torch's ``AccumulateGrad`` adds each new gradient into ``.grad`` in place, from the second
  microbatch on (the first is stored as it comes): (M - 1) of every M microbatches pay the pass.

The buffer holds fp32 where the stack accumulates bf16/fp8 runs' gradients in fp32
(``grad_accumulation_fp32``, or FSDP2's unsharded fp32 accumulation, ``fsdp_unsharded_grads_fp32``), else
the parameters' dtype (fp16 runs: Megatron-LM's main_grad is fp16 unless accumulate_allreduce_grads_in_fp32,
and it fused fp16 accumulation into the GEMM only from 07916bf245, 2022-09-27). A stack that reduce-scatters after every microbatch (FSDP without a pipeline)
accumulates the rank's shard only. A measured profile already times the pass inside W (the profiler
leaves each iteration's gradients in ``.grad``), so it is priced only on the roofline.
"""

from __future__ import annotations

from costmodels.compute import memory_bound_time_s
from costmodels.layer_costs import bytes_per_element
from costmodels.memory import microbatch_grad_sync
from costmodels.operators import FP32_BYTES
from profiles.schema import ClusterSpec, ParallelConfig
from profiles.stack_schema import StackSpec


def accumulation_bytes_per_param(stack: StackSpec, precision: str) -> int:
    """HBM bytes one accumulation moves per parameter: read the buffer and the new gradient, write the
    buffer (0 where the GEMM accumulates: ``fused``)."""
    if stack.grad_accumulation == "fused":
        return 0
    grad = bytes_per_element(precision)
    fp32_buffer = precision in ("bf16", "fp8") and (stack.grad_accumulation_fp32 or stack.fsdp_unsharded_grads_fp32)
    buffer = FP32_BYTES if fp32_buffer else grad
    return 2 * buffer + grad


def accumulated_share(stack: StackSpec, num_microbatches: int) -> float:
    """Share of the microbatches whose backward pays an accumulation: all under ``main_grad``, all but
    the first under ``autograd``."""
    if stack.grad_accumulation == "main_grad":
        return 1.0
    if stack.grad_accumulation == "autograd":
        return (num_microbatches - 1) / num_microbatches
    return 0.0


def grad_accumulation_s(cluster: ClusterSpec, stack: StackSpec, precision: str, cfg: ParallelConfig,
                        stage_params: float) -> float:
    """Seconds one microbatch's backward of a stage spends on average adding its ``stage_params`` weight
    gradients (the rank's share) into the step's."""
    share = accumulated_share(stack, cfg.num_microbatches)
    per_param = accumulation_bytes_per_param(stack, precision)
    if not share or not per_param:
        return 0.0
    data_ranks = cfg.dp * cfg.cp
    params = stage_params / data_ranks if microbatch_grad_sync(stack, cfg.pp, data_ranks, cfg.zero) else stage_params
    return share * memory_bound_time_s(cluster, per_param * params)
