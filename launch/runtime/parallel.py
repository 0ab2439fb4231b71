"""Process groups and the device meshes, all built from the one rank grid.

The mesh is ``("pp", "dp_replicate", "dp_shard", "tp")``: the rank grid's
("pp", dp x cp, "tp") with the data-context ranks (dp x cp, over which dense
gradients are averaged, torchtitan's ``dp_shard_cp``) split in two so that FSDP2
can run ZeRO-0 as HSDP with a shard degree of 1 (see ``fsdp.py``). Expert weights
have their own mesh ``("pp", "edp_replicate", "edp_shard", "ep", "tp")`` over the
same ranks (``expert_mesh_ranks``). Every rank in them comes from ``RankGrid``; a
test checks that the groups equal the grid's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from costmodels.rank_grid import RankGrid
from launch.runtime.layout import grid_of, tied_embedding_pairs
from profiles.schema import ModelSpec, ParallelConfig

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")
EXPERT_MESH_DIMS = ("pp", "edp_replicate", "edp_shard", "ep", "tp")
DEFAULT_PG_TIMEOUT_S = 180.0


def pg_timeout_s() -> float:
    """Collective timeout: a rank stuck waiting for a dead peer raises after this."""
    return float(os.environ.get("PPPLAN_PG_TIMEOUT_S", DEFAULT_PG_TIMEOUT_S))


def init_distributed() -> torch.device:
    """Join the torchrun job: NCCL on one GPU per process if CUDA is there, else gloo on CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=pg_timeout_s()))
    return device


def dp_split(cfg: ParallelConfig, ranks: int | None = None) -> tuple[int, int]:
    """(replicate, shard) of the ``ranks`` data-context ranks (default dp x cp): all replicas
    for ZeRO-0, all shards for ZeRO 1-3."""
    ranks = cfg.dp * cfg.cp if ranks is None else ranks
    return (ranks, 1) if cfg.zero == 0 else (1, ranks)


def mesh_ranks(grid: RankGrid, dp_replicate: int) -> torch.Tensor:
    """Global ranks laid out ``[pp][dp_replicate][dp_shard][tp]``, the data-context index
    ``j = r * dp_shard + s`` running over ``RankGrid.data_context_group``."""
    dp_shard = grid.dp * grid.cp // dp_replicate
    return torch.tensor(
        [
            [
                [[grid.data_context_group(p, t)[r * dp_shard + s] for t in range(grid.tp)] for s in range(dp_shard)]
                for r in range(dp_replicate)
            ]
            for p in range(grid.pp)
        ],
        dtype=torch.int,
    )


def expert_mesh_ranks(grid: RankGrid, ep: int, edp_replicate: int) -> torch.Tensor:
    """Global ranks laid out ``[pp][edp_replicate][edp_shard][ep][tp]``: position ``e`` of
    expert-parallel group ``b`` is ``RankGrid.ep_group(p, t, b, ep)[e]``."""
    edp = grid.dp * grid.cp // ep
    edp_shard = edp // edp_replicate
    return torch.tensor(
        [
            [
                [
                    [[grid.ep_group(p, t, r * edp_shard + s, ep)[e] for t in range(grid.tp)] for e in range(ep)]
                    for s in range(edp_shard)
                ]
                for r in range(edp_replicate)
            ]
            for p in range(grid.pp)
        ],
        dtype=torch.int,
    )


def build_mesh(cfg: ParallelConfig, device: torch.device) -> DeviceMesh:
    """The 4-D device mesh of this plan (every rank must call this, in the same order)."""
    replicate, _ = dp_split(cfg)
    return DeviceMesh(device.type, mesh_ranks(grid_of(cfg), replicate), mesh_dim_names=MESH_DIMS)


def build_expert_mesh(cfg: ParallelConfig, device: torch.device) -> DeviceMesh:
    """The mesh of the expert weights: ``ep`` ranks share a layer's experts, the ``edp`` ranks
    holding the same experts average their gradients (collective: every rank calls it)."""
    replicate, _ = dp_split(cfg, cfg.dp * cfg.cp // cfg.ep)
    return DeviceMesh(device.type, expert_mesh_ranks(grid_of(cfg), cfg.ep, replicate), mesh_dim_names=EXPERT_MESH_DIMS)


@dataclass
class Groups:
    """The groups the training loop uses beyond the mesh."""

    dp: dist.ProcessGroup | None  # the dp x cp ranks of this (pp, tp): loss averaging
    tied: dist.ProcessGroup | None
    cp: dist.ProcessGroup | None = None


def _new_groups(all_groups: list[list[int]], rank: int, needed: bool) -> dist.ProcessGroup | None:
    """Create every group (``new_group`` is collective over the world) and return ``rank``'s."""
    mine = None
    for ranks in all_groups:
        group = dist.new_group(ranks) if needed else None
        if rank in ranks:
            mine = group
    return mine


def build_groups(model: ModelSpec, cfg: ParallelConfig, rank: int) -> Groups:
    """Data-context group (loss averaging), context-parallel group and the tied-embedding pair group of ``rank``."""
    grid = grid_of(cfg)
    dp = _new_groups([grid.data_context_group(p, t) for p in range(cfg.pp) for t in range(cfg.tp)], rank, cfg.dp * cfg.cp > 1)
    cp = _new_groups(
        [grid.cp_group(d, p, t) for p in range(cfg.pp) for d in range(cfg.dp) for t in range(cfg.tp)], rank, cfg.cp > 1
    )
    tied = _new_groups([list(pair) for pair in tied_embedding_pairs(model, cfg)], rank, True)
    return Groups(dp=dp, tied=tied, cp=cp)
