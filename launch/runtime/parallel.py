"""Process groups and the device mesh, all built from the one rank grid.

The mesh is ``("pp", "dp_replicate", "dp_shard", "tp")``: the rank grid's
("pp", "dp", "tp") with dp split in two so that FSDP2 can run ZeRO-0 as HSDP
with a shard degree of 1 (see ``fsdp.py``). Every rank in it comes from
``RankGrid.rank``; a test checks that the groups equal the grid's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from costmodels.rank_grid import RankCoord, RankGrid
from launch.job_files import PG_TIMEOUT_ENV
from launch.runtime.layout import grid_of, tied_embedding_pairs
from profiles.schema import ModelSpec, ParallelConfig

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")
# A rank stuck waiting for a dead or stopped peer raises after this. gloo: 60 s, far above
# any collective of a CPU plan (ppplan launch --hang-timeout-s); NCCL: torch's own default
# (torch.distributed.constants.default_pg_nccl_timeout, 10 minutes).
DEFAULT_PG_TIMEOUT_S = {"gloo": 60.0, "nccl": 600.0}


def pg_timeout_s(backend: str) -> float:
    """Collective timeout of ``backend``: ``$PPPLAN_PG_TIMEOUT_S`` (set by ppplan launch) or the default."""
    value = os.environ.get(PG_TIMEOUT_ENV)
    return float(value) if value else DEFAULT_PG_TIMEOUT_S[backend]


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
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=pg_timeout_s(backend)))
    return device


def dp_split(cfg: ParallelConfig) -> tuple[int, int]:
    """(dp_replicate, dp_shard): all replicas for ZeRO-0, all shards for ZeRO 1-3."""
    return (cfg.dp, 1) if cfg.zero == 0 else (1, cfg.dp)


def mesh_ranks(grid: RankGrid, dp_replicate: int) -> torch.Tensor:
    """Global ranks laid out ``[pp][dp_replicate][dp_shard][tp]`` by ``RankGrid.rank``."""
    dp_shard = grid.dp // dp_replicate
    return torch.tensor(
        [
            [
                [[grid.rank(RankCoord(dp=r * dp_shard + s, pp=p, tp=t)) for t in range(grid.tp)] for s in range(dp_shard)]
                for r in range(dp_replicate)
            ]
            for p in range(grid.pp)
        ],
        dtype=torch.int,
    )


def build_mesh(cfg: ParallelConfig, device: torch.device) -> DeviceMesh:
    """The 4-D device mesh of this plan (every rank must call this, in the same order)."""
    replicate, _ = dp_split(cfg)
    return DeviceMesh(device.type, mesh_ranks(grid_of(cfg), replicate), mesh_dim_names=MESH_DIMS)


@dataclass
class Groups:
    """The groups the training loop uses beyond the mesh."""

    dp: dist.ProcessGroup | None
    tied: dist.ProcessGroup | None


def build_groups(model: ModelSpec, cfg: ParallelConfig, rank: int) -> Groups:
    """Data-parallel group (loss averaging) and the tied-embedding pair group of ``rank``.

    ``new_group`` is collective over the world, so every rank creates every group.
    """
    grid = grid_of(cfg)
    my_dp = None
    for p in range(cfg.pp):
        for t in range(cfg.tp):
            ranks = grid.dp_group(p, t)
            group = dist.new_group(ranks) if cfg.dp > 1 else None
            if rank in ranks:
                my_dp = group
    my_tied = None
    for pair in tied_embedding_pairs(model, cfg):
        group = dist.new_group(list(pair))
        if rank in pair:
            my_tied = group
    return Groups(dp=my_dp, tied=my_tied)
