"""The runtime's placement facts beyond the stage layout (``costmodels.layout``, shared
with the estimate): which ranks write metrics and which share the tied embedding.
Pure functions over the plan's ``ParallelConfig`` and the one rank grid
(``costmodels.rank_grid``); no torch, so the launcher and the tests use them
without starting a process.
"""

from __future__ import annotations

from costmodels.layout import loss_pipeline_rank
from costmodels.rank_grid import RankCoord, RankGrid, stage_to_rank
from profiles.schema import ModelSpec, ParallelConfig


def grid_of(cfg: ParallelConfig) -> RankGrid:
    return RankGrid(tp=cfg.tp, pp=cfg.pp, dp=cfg.dp, cp=cfg.cp)


def writes_metrics(coord: RankCoord) -> bool:
    """Each pipeline rank's first rank (dp = 0, cp = 0, tp = 0) writes its metrics line."""
    return coord.dp == 0 and coord.cp == 0 and coord.tp == 0


def metrics_ranks(cfg: ParallelConfig) -> list[int]:
    """Global ranks that write metrics, one per pipeline rank, in pipeline order."""
    grid = grid_of(cfg)
    return [grid.rank(RankCoord(dp=0, pp=p, tp=0)) for p in range(cfg.pp)]


def tied_embedding_pairs(model: ModelSpec, cfg: ParallelConfig) -> list[tuple[int, int]]:
    """Rank pairs (embedding holder, logits holder) whose tied-weight copies
    must sum their gradients: one pair per (dp, cp, tp) when the first and last
    virtual stages sit on different pipeline ranks (Megatron-LM's embedding
    group); empty when the embeddings are untied or share a rank."""
    first_rank = stage_to_rank(0, cfg.pp, cfg.v, cfg.schedule)
    last_rank = loss_pipeline_rank(cfg)
    if not model.tie_embeddings or first_rank == last_rank:
        return []
    grid = grid_of(cfg)
    return [
        (grid.rank(RankCoord(dp=d, pp=first_rank, tp=t, cp=c)), grid.rank(RankCoord(dp=d, pp=last_rank, tp=t, cp=c)))
        for d in range(cfg.dp)
        for c in range(cfg.cp)
        for t in range(cfg.tp)
    ]
