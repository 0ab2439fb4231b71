"""Where things sit: which layers each virtual stage holds, which ranks write
metrics, which ranks share the tied embedding. Pure functions over the plan's
``ParallelConfig`` and the one rank grid (``costmodels.rank_grid``); no torch,
so the launcher and the tests use them without starting a process.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodels.rank_grid import RankCoord, RankGrid, stage_to_rank, stages_of_rank
from profiles.schema import ModelSpec, ParallelConfig


@dataclass(frozen=True)
class StageLayout:
    """One virtual stage: layers ``[first_layer, first_layer + num_layers)`` and its extras."""

    stage: int
    first_layer: int
    num_layers: int
    has_embedding: bool
    has_head: bool
    pipeline_rank: int


def grid_of(cfg: ParallelConfig) -> RankGrid:
    return RankGrid(tp=cfg.tp, pp=cfg.pp, dp=cfg.dp)


def stage_layouts(cfg: ParallelConfig) -> list[StageLayout]:
    """Every virtual stage in pipeline order, from ``stage_layers`` (embedding on
    the first, final norm + logits + loss on the last)."""
    layouts: list[StageLayout] = []
    first = 0
    last_stage = cfg.num_stages - 1
    for stage, count in enumerate(cfg.stage_layers):
        layouts.append(
            StageLayout(
                stage=stage,
                first_layer=first,
                num_layers=count,
                has_embedding=stage == 0,
                has_head=stage == last_stage,
                pipeline_rank=stage_to_rank(stage, cfg.pp, cfg.v, cfg.schedule),
            )
        )
        first += count
    return layouts


def local_stages(cfg: ParallelConfig, pipeline_rank: int) -> list[StageLayout]:
    """The virtual stages pipeline rank ``pipeline_rank`` holds, in stage order."""
    layouts = stage_layouts(cfg)
    return [layouts[s] for s in stages_of_rank(pipeline_rank, cfg.pp, cfg.v, cfg.schedule)]


def loss_pipeline_rank(cfg: ParallelConfig) -> int:
    """The pipeline rank that computes the loss (holds the last virtual stage;
    rank 0 for the V-shaped ZBV / DualPipeV placement)."""
    return stage_to_rank(cfg.num_stages - 1, cfg.pp, cfg.v, cfg.schedule)


def writes_metrics(coord: RankCoord) -> bool:
    """Each pipeline rank's first rank (dp = 0, tp = 0) writes its metrics line."""
    return coord.dp == 0 and coord.tp == 0


def metrics_ranks(cfg: ParallelConfig) -> list[int]:
    """Global ranks that write metrics, one per pipeline rank, in pipeline order."""
    grid = grid_of(cfg)
    return [grid.rank(RankCoord(dp=0, pp=p, tp=0)) for p in range(cfg.pp)]


def tied_embedding_pairs(model: ModelSpec, cfg: ParallelConfig) -> list[tuple[int, int]]:
    """Rank pairs (embedding holder, logits holder) whose tied-weight copies
    must sum their gradients: one pair per (dp, tp) when the first and last
    virtual stages sit on different pipeline ranks (Megatron-LM's embedding
    group); empty when the embeddings are untied or share a rank."""
    first_rank = stage_to_rank(0, cfg.pp, cfg.v, cfg.schedule)
    last_rank = loss_pipeline_rank(cfg)
    if not model.tie_embeddings or first_rank == last_rank:
        return []
    grid = grid_of(cfg)
    return [
        (grid.rank(RankCoord(dp=d, pp=first_rank, tp=t)), grid.rank(RankCoord(dp=d, pp=last_rank, tp=t)))
        for d in range(cfg.dp)
        for t in range(cfg.tp)
    ]
