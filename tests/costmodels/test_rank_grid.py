"""The rank grid with context and expert parallelism, by hand from
rank = ((pp * dp + dp_idx) * cp + cp_idx) * tp + tp_idx (Megatron-LM's order tp-cp-ep-dp-pp)."""

from __future__ import annotations

from costmodels.rank_grid import RankCoord, RankGrid


def test_cp_sits_between_tp_and_dp() -> None:
    grid = RankGrid(tp=2, pp=2, dp=2, cp=2)  # 16 ranks
    assert grid.world_size == 16
    # (pp=1, dp=0, cp=1, tp=1) -> ((1*2 + 0)*2 + 1)*2 + 1 = 11
    assert grid.rank(RankCoord(dp=0, pp=1, tp=1, cp=1)) == 11
    assert grid.coord(11) == RankCoord(dp=0, pp=1, tp=1, cp=1)
    assert all(grid.rank(grid.coord(r)) == r for r in range(16))
    assert grid.tp_group(0, 0, 1) == [2, 3]
    assert grid.cp_group(dp=1, pp=0, tp=0) == [4, 6]
    assert grid.dp_group(pp=0, tp=1, cp=1) == [3, 7]
    assert grid.pp_group(dp=0, tp=0, cp=1) == [2, 10]


def test_default_cp_keeps_the_old_grid() -> None:
    grid = RankGrid(tp=2, pp=2, dp=2)
    assert grid.rank(RankCoord(dp=0, pp=1, tp=1)) == 5  # (1*2 + 0)*2 + 1


def test_expert_groups_fold_over_data_and_context_ranks() -> None:
    grid = RankGrid(tp=1, pp=1, dp=2, cp=2)  # data-context index j = dp * 2 + cp = rank
    assert grid.data_context_group(0, 0) == [0, 1, 2, 3]
    assert [grid.ep_group(0, 0, b, ep=2) for b in range(2)] == [[0, 1], [2, 3]]
    assert [grid.edp_group(0, 0, e, ep=2) for e in range(2)] == [[0, 2], [1, 3]]
    with_tp = RankGrid(tp=2, pp=1, dp=4)
    assert with_tp.ep_group(0, 1, 1, ep=2) == [5, 7]  # tp rank 1 of dp 2 and 3
    assert with_tp.edp_group(0, 1, 0, ep=2) == [1, 5]
