"""NCCL communicators a rank uses, and the device memory their buffers hold.

Every NCCL communicator a rank has run a collective or a send on keeps its own buffers in device
memory, outside PyTorch's caching allocator: for each channel, a buffer per protocol (Simple's
``NCCL_BUFFSIZE``, 4 MiB by default, LL's and LL128's) per connected peer. NVIDIA/nccl#964
measured what one more process group costs on 4 x A100 with NVLink through PyTorch, after one
4 MB all-reduce: 544 MB for a 2-rank group, 688 MB for a larger one; NVIDIA/nccl#986 (NCCL's
maintainer): "More communicators = more memory used", linear in the channels, and for a ring
independent of the group's size beyond two nodes. Neither ``torch.cuda.max_memory_reserved``
nor ``max_memory_allocated`` counts them; ``nvidia-smi`` does, and so does the device when it
runs out of memory.

The communicators counted are the ones the parallel layout makes a rank use, as Megatron-LM
(``megatron/core/parallel_state.py``), DeepSpeed and torchtitan's ``DeviceMesh`` build them:
the default group (initialisation barriers, loss and timer reductions), one per parallel
dimension of more than one rank (tensor, context, data x context for the gradients, expert and
expert-data), the pipeline group (gradient norm and overflow checks over the model's stages),
the two-rank group tying the embedding to the head where they sit on different ranks, and one
per pipeline peer: PyTorch's ``ProcessGroupNCCL`` gives each send/recv pair a communicator of
its own (``getKeySendRecv``).
"""

from __future__ import annotations

from functools import lru_cache

from costmodels.layer_costs import runs_on_cpu
from costmodels.rank_grid import stage_to_rank, stages_of_rank
from profiles.schema import ClusterSpec, ModelSpec, ParallelConfig

# NVIDIA/nccl#964: 688 MB per process group of more than two ranks on 4 x A100 (NVLink, PyTorch
# frontend); 2-rank groups measured 544 MB. One figure for all: the larger, in GiB.
NCCL_COMMUNICATOR_GIB = 688 / 1024


# ``Estimate.memory_breakdown_gib`` rows a rank holds outside the caching allocator: neither
# ``torch.cuda.max_memory_reserved`` nor a CPU rank's resident-set growth counts them
OUTSIDE_ALLOCATOR = ("runtime_reserved", "nccl_buffers")


def outside_allocator_gib(breakdown_gib: dict[str, float]) -> float:
    """GiB of one rank's memory breakdown held outside the caching allocator (``OUTSIDE_ALLOCATOR``)."""
    return sum(breakdown_gib.get(k, 0.0) for k in OUTSIDE_ALLOCATOR)


def communicator_gib(cluster: ClusterSpec) -> float:
    """Device GiB one NCCL communicator holds on ``cluster``: its file's ``nccl_communicator_gib``,
    else ``NCCL_COMMUNICATOR_GIB`` on GPUs and 0 where ranks are CPU processes (gloo keeps its
    buffers in the heap, which ``heap_reserve`` measures)."""
    if cluster.nccl_communicator_gib is not None:
        return cluster.nccl_communicator_gib
    return 0.0 if runs_on_cpu(cluster) else NCCL_COMMUNICATOR_GIB


@lru_cache(maxsize=4096)
def pipeline_peers(pp: int, v: int, schedule: str, rank: int) -> int:
    """Pipeline ranks ``rank`` sends to or receives from: the ranks holding the stages next to its own
    (``costmodels.rank_grid.stage_to_rank``; under interleaving the last rank feeds the first)."""
    stages = pp * v
    peers = {stage_to_rank(s + d, pp, v, schedule)
             for s in stages_of_rank(rank, pp, v, schedule) for d in (-1, 1) if 0 <= s + d < stages}
    return len(peers - {rank})


def _non_pipeline_communicators(tp: int, cp: int, dp: int, ep: int, expert_data: int) -> int:
    """The default group and one per parallel dimension of more than one rank (module docstring)."""
    groups = 1 + sum(n > 1 for n in (tp, cp, dp * cp))
    if ep > 1:
        groups += 1 + (expert_data > 1)
    return groups


@lru_cache(maxsize=65536)
def pipeline_communicators(tie_embeddings: bool, pp: int, v: int, schedule: str, rank: int) -> int:
    """Pipeline rank ``rank``'s communicators for the pipeline: its group, the tied embedding's two-rank group where
    the first and the last stage sit on different ranks and ``rank`` holds one of them, one per peer."""
    if pp == 1:
        return 0
    first, last = (stage_to_rank(s, pp, v, schedule) for s in (0, pp * v - 1))
    tied = tie_embeddings and first != last and rank in (first, last)
    return 1 + tied + pipeline_peers(pp, v, schedule, rank)


@lru_cache(maxsize=4096)
def fewest_pipeline_communicators(tie_embeddings: bool, pp: int, v: int, schedule: str) -> int:
    """The fewest ``pipeline_communicators`` any pipeline rank has."""
    return min(pipeline_communicators(tie_embeddings, pp, v, schedule, r) for r in range(pp))


def communicators_of_rank(tie_embeddings: bool, *, tp: int, cp: int, dp: int, ep: int, expert_data: int, pp: int,
                          v: int, schedule: str, rank: int | None) -> int:
    """NCCL communicators pipeline rank ``rank`` uses during a step (module docstring), or (``rank`` None) the fewest
    any pipeline rank uses; ``expert_data``: the expert-data-parallel ranks (``profiles.schema.expert_data_ranks``)."""
    if tp * cp * dp * pp == 1:
        return 0
    pipeline = (fewest_pipeline_communicators(tie_embeddings, pp, v, schedule) if rank is None
                else pipeline_communicators(tie_embeddings, pp, v, schedule, rank))
    return _non_pipeline_communicators(tp, cp, dp, ep, expert_data) + pipeline


def nccl_buffers_gib(cluster: ClusterSpec, model: ModelSpec, cfg: ParallelConfig, rank: int) -> float:
    """Device GiB the NCCL communicators of pipeline rank ``rank`` of ``cfg`` hold."""
    per = communicator_gib(cluster)
    if not per:
        return 0.0
    return per * communicators_of_rank(model.tie_embeddings, tp=cfg.tp, cp=cfg.cp, dp=cfg.dp, ep=cfg.ep,
                                       expert_data=cfg.expert_data_ranks, pp=cfg.pp, v=cfg.v, schedule=cfg.schedule,
                                       rank=rank)
