"""The device meshes with context and expert parallelism are the rank grid's groups."""

from __future__ import annotations

from launch.runtime.layout import grid_of
from launch.runtime.parallel import dp_split, expert_mesh_ranks, mesh_ranks
from tests.launch.runtime.runtime_plans import make_plan


def test_dense_mesh_spans_the_data_context_ranks() -> None:
    cfg = make_plan("tiny-moe", tp=2, dp=2, cp=2, ep=2, zero=1, global_batch=4).config
    grid = grid_of(cfg)
    assert dp_split(cfg) == (1, 4)
    mesh = mesh_ranks(grid, 1).reshape(cfg.pp, 4, cfg.tp)
    for t in range(cfg.tp):
        assert mesh[0, :, t].tolist() == grid.data_context_group(0, t)
    assert mesh[0, 1, :].tolist() == grid.tp_group(dp=0, pp=0, cp=1) == [2, 3]


def test_expert_mesh_has_the_expert_and_expert_data_groups() -> None:
    cfg = make_plan("tiny-moe", tp=2, dp=4, ep=2, zero=0, global_batch=4).config
    grid = grid_of(cfg)
    assert dp_split(cfg, 2) == (2, 1)  # zero 0: the 2 ranks holding the same experts replicate them
    mesh = expert_mesh_ranks(grid, cfg.ep, 2).reshape(cfg.pp, 2, cfg.ep, cfg.tp)  # [pp][edp][ep][tp]
    for t in range(cfg.tp):
        for b in range(2):
            assert mesh[0, b, :, t].tolist() == grid.ep_group(0, t, b, cfg.ep)
        for e in range(cfg.ep):
            assert mesh[0, :, e, t].tolist() == grid.edp_group(0, t, e, cfg.ep)
    assert mesh[0, 1, :, 1].tolist() == [5, 7]  # tp rank 1 of dp 2 and 3
