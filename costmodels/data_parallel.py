"""Data-parallel traffic of one pipeline rank and how much of it its stack hides.

Once per step a rank reduces its gradients over its DP group (an all-reduce, or a
reduce-scatter under ZeRO >= 1) and, under ZeRO-1/2, gathers its updated parameters back
(Rajbhandari et al. 2020, Sec. 5); under ZeRO-3 the parameters are gathered per microbatch
instead (``zero3_gather_s``). The group is hierarchical over the node boundary
(``costmodels.comm.collective_s``) and shares its nodes' NICs with the other DP groups of
the same stage, which reduce at the same time.

How much is exposed is the stack's (``StackSpec.overlap``):

- ``dp_grad_reduce: bucketed`` (Megatron-Core ``--overlap-grad-reduce``): buckets of
  ``max(dp_bucket_params, dp_bucket_params_per_dp_rank * dp)`` parameters are reduced as
  the last microbatch's backward produces them; the last bucket cannot overlap, and
  whatever does not fit in that backward shows: ``min(R, max(R_last, R - backward))``.
- ``dp_grad_reduce: after_backward`` (Megatron-LM 2021 ``allreduce_gradients`` after the
  schedule; torch pipelining's REDUCE_GRAD after the stage's last backward): all of it, from
  the end of the rank's last action (a rank that finishes before the pipeline drains reduces
  while the others still compute: ``costmodels.step_time``).
- ``param_gather: overlapped`` (``--overlap-param-gather``, FSDP2 prefetch): the gather
  streams under the next step's first forward, the first bucket exposed; ``after_step``
  (Megatron-LM 2022 distributed optimizer): all of it.

On a node whose cores both compute and move the bytes (``comm_overlaps_compute`` false)
nothing hides.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodels.comm import Collective, GroupPlacement, Network, collective_s, placement_of
from costmodels.rank_grid import RankGrid
from profiles.schema import ClusterSpec, ParallelConfig
from profiles.stack_schema import StackOverlap


def grad_reduce_bytes_per_param(precision: str) -> int:
    """Gradients are reduced in fp32 (Megatron-LM sets ``accumulate_allreduce_grads_in_fp32`` for
    bf16, megatron/training/arguments.py; FSDP2's ``reduce_dtype`` fp32 in torchtitan), in fp16
    for fp16 runs (Megatron's default without that flag)."""
    return 2 if precision == "fp16" else 4


def comm_overlaps_compute(cluster: ClusterSpec) -> bool:
    """Whether data-parallel traffic can hide behind compute: yes on accelerators (a copy
    engine / NIC moves the bytes while the SMs compute); no on a CPU node
    (``concurrent_ranks_per_node`` set), where gloo's loopback copies and reductions run on
    the same cores as the compute, and FSDP2 reduces synchronously in its post-backward hook
    (torch.profiler on cpu-local: ``FSDP::post_backward_reduce`` 4-10 ms per layer inside the
    step, nothing running beside it)."""
    return cluster.concurrent_ranks_per_node is None


def dp_placement(cluster: ClusterSpec, cfg: ParallelConfig, pipeline_rank: int) -> GroupPlacement:
    """The DP group of (pipeline rank, tp rank 0) on the rank grid; every rank of a node it spans
    belongs to a DP group of the same stage that reduces at the same time (they share the NICs)."""
    grid = RankGrid(cfg.tp, cfg.pp, cfg.dp)
    senders = min(cluster.gpus_per_node, cfg.tp * cfg.dp)
    return placement_of(grid.dp_group(pipeline_rank, 0), cluster.gpus_per_node, senders)


def bucket_params(overlap: StackOverlap, dp: int) -> float:
    """Parameters per DP bucket (Megatron-Core: max(40M, 1M x dp x cp), training.py get_model)."""
    return float(max(overlap.dp_bucket_params, overlap.dp_bucket_params_per_dp_rank * dp))


def zero3_gather_s(params: float, bytes_per_element: int, placement: GroupPlacement, network: Network) -> float:
    """One all-gather of a stage's ZeRO-3 parameters (per microbatch in F, again in B: FSDP2 with
    ``reshard_after_forward=True`` frees them after each forward; Rajbhandari et al. 2020, Sec. 5.3)."""
    return collective_s("all_gather", params * bytes_per_element, placement, network)


@dataclass(frozen=True)
class RankSync:
    """Once-per-step data-parallel traffic of one pipeline rank (seconds): the gradient reduce
    and the parameter gather, each in total and the part its stack leaves exposed."""

    grad_reduce_s: float = 0.0
    grad_reduce_exposed_s: float = 0.0
    param_gather_s: float = 0.0
    param_gather_exposed_s: float = 0.0


def _exposed_s(total_s: float, first_or_last_bucket_s: float, window_s: float) -> float:
    """Bucketed overlap: all but one bucket can hide in ``window_s``."""
    return min(total_s, max(first_or_last_bucket_s, total_s - window_s))


def rank_sync(
    cluster: ClusterSpec, cfg: ParallelConfig, overlap: StackOverlap, network: Network, pipeline_rank: int,
    params: float, precision_bytes: int, grad_bytes: int, backward_window_s: float, forward_window_s: float,
) -> RankSync:
    """The rank's gradient reduce and parameter gather, and what of them ``overlap`` exposes
    (module docstring). ``params`` are the rank's parameters per TP rank; the windows are its
    last microbatch's backward and its first microbatch's forward."""
    if cfg.dp == 1:
        return RankSync()
    if not comm_overlaps_compute(cluster):
        backward_window_s = forward_window_s = 0.0
    placement = dp_placement(cluster, cfg, pipeline_rank)
    bucket = min(params, bucket_params(overlap, cfg.dp))
    kind: Collective = "all_reduce" if cfg.zero == 0 else "reduce_scatter"
    reduce_s = collective_s(kind, params * grad_bytes, placement, network)
    if overlap.dp_grad_reduce == "bucketed":
        reduce_exposed = _exposed_s(reduce_s, collective_s(kind, bucket * grad_bytes, placement, network), backward_window_s)
    else:
        reduce_exposed = reduce_s
    if cfg.zero not in (1, 2):
        return RankSync(reduce_s, reduce_exposed)
    gather_s = collective_s("all_gather", params * precision_bytes, placement, network)
    if overlap.param_gather == "overlapped":
        first = collective_s("all_gather", bucket * precision_bytes, placement, network)
        gather_exposed = _exposed_s(gather_s, first, forward_window_s)
    else:
        gather_exposed = gather_s
    return RankSync(reduce_s, reduce_exposed, gather_s, gather_exposed)
