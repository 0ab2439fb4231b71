"""Expert TP 1 under tp > 1 (Megatron-Core's MoE parallel folding, ``--expert-tensor-parallel-size 1``),
derived by hand: whole experts per rank, ep carved out of the tp x dp x cp ranks, the tp rank's 1/tp of
the routed rows at full FFN width, no tp collective on them.

tiny-moe: h = 256, 8 experts of FFN 512, top-2, SwiGLU, seq 128, no shared experts. Mixtral-8x7B: an
expert has 3 x 4096 x 14336 = 176,160,768 parameters; a layer's attention and norms 41,951,232, its
router 32,768.
"""

from __future__ import annotations

import pytest

from costmodels.comm import collective_s, network_for
from costmodels.data_parallel import edp_placement, experts_reduced_apart
from costmodels.experts import ep_group_placement, moe_activation_bytes, moe_tp_collectives, routed_rows
from costmodels.layer_costs import RooflineTimes
from costmodels.layer_ops import transformer_layer_ops
from costmodels.memory import StageParams, layer_params, split_static_memory
from costmodels.operators import Gemm, LayerShape
from costmodels.rank_grid import RankGrid
from costmodels.rules import config_violations, expert_overlap_violations
from launch.emit.experts import megatron_parallel_args, torchtitan_parallel_entries
from planner.search.space import expert_layouts
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ParallelConfig, TrainSpec
from profiles.stack_schema import StackKernels

TINY = load_model("tiny-moe")
MIXTRAL = load_model("mixtral-8x7b")
SPLIT = StackKernels(expert_dispatch="tp_split")
MEGATRON = load_stack("megatron-core")
TRAIN = TrainSpec(global_batch=64, seq_len=128, precision="bf16")


def _config(tp: int, dp: int, ep: int, etp: int | None, stack: str = "megatron-core", sp: bool = True) -> ParallelConfig:
    return ParallelConfig(stack=stack, tp=tp, dp=dp, ep=ep, etp=etp, pp=1, mbs=1, num_microbatches=TRAIN.global_batch // dp,
                          sequence_parallel=sp, zero=1, stage_layers=[TINY.num_layers])


def _fc1(etp: int | None) -> Gemm:
    shape = LayerShape(2, 1, 128, True, "none", 2, ep=4, moe=True, etp=etp)
    return next(op for op in transformer_layer_ops(TINY, shape, SPLIT).forward if op.name == "moe.expert.fc1")


def test_expert_gemms_are_taller_and_wider_with_the_same_flops() -> None:
    """tp 2, ep 4: the busiest rank's routed rows are 288.72 (``routed_rows``), over E / ep = 2 experts.
    Expert TP 2: 144.36 rows per expert, FC1 (gate and up) 2·512 / 2 = 512 wide. Expert TP 1: the tp
    rank's half of the rows, 72.18 per expert, at the full 1,024. FLOPs 2·M·N·K·2 agree."""
    rows = routed_rows(TINY, 128, 4)
    assert rows == pytest.approx(288.72, abs=0.03)
    split, whole = _fc1(None), _fc1(1)
    assert (split.m, split.n, split.k, split.batch) == (pytest.approx(rows / 2), 512, 256, 2)
    assert (whole.m, whole.n, whole.k, whole.batch) == (pytest.approx(rows / 4), 1024, 256, 2)
    assert whole.flops == pytest.approx(split.flops) == pytest.approx(2 * (rows / 2) * 512 * 256 * 2)


def test_no_tp_collective_on_the_routed_rows() -> None:
    """Expert TP 2 all-gathers the dispatched rows over tp and reduce-scatters the outputs (the rows
    of one all-reduce); expert TP 1 has none (tiny-moe has no shared expert)."""
    routed = (("all_reduce", pytest.approx(routed_rows(TINY, 128, 4))),)
    assert moe_tp_collectives(TINY, 128, 2, 4, True, SPLIT, bytes_per_elem=2) == (routed, routed)
    assert moe_tp_collectives(TINY, 128, 2, 4, True, SPLIT, etp=1, bytes_per_elem=2) == ((), ())


def test_whole_experts_per_rank_and_their_data_parallel_group() -> None:
    """Mixtral, tp 2, ep 8: with expert TP 1 a rank holds one whole expert (176,160,768), the dense part
    split as before. The expert-data-parallel group is tp·dp·cp / (ep·etp): 2·4 / 8 = 1 rank with etp 1
    (Adam's state of the expert unsharded), 2·8 / (4·2) = 2 with etp = tp and ep 4."""
    assert layer_params(MIXTRAL, 2, 8, True, etp=1) == StageParams(dense=41_951_232 / 2 + 32_768, expert=176_160_768)
    assert layer_params(MIXTRAL, 2, 8, True).expert == 176_160_768 / 2
    assert _config(2, 4, 8, 1).expert_data_ranks == 1
    assert _config(2, 8, 4, None).expert_data_ranks == 2
    assert _config(2, 8, 4, 1).expert_data_ranks == 4
    state = split_static_memory(0.0, 176_160_768, "bf16", 4, 8, 1, expert_data_ranks=1)
    assert state.optimizer_bytes == 12 * 176_160_768


def test_activation_bytes_keep_the_ffn_tensors_and_halve_the_routed_rows() -> None:
    """tiny-moe, T = 128, tp 2, ep 1, bf16, 4 FFN tensors: expert TP 2 keeps 512 rows of h (256 routed +
    256 weighted copies), 4·256·512/2 FFN values and 256·20 B of routing; expert TP 1 keeps half of the
    rows and the routing (the tp rank's own tokens) and the same FFN bytes."""
    rows_h, ffn, routing = 512 * 256 * 2, 4 * 256 * 512 / 2 * 2, 256 * 20
    assert moe_activation_bytes(TINY, 128, 2, 1, 2, 4) == rows_h + ffn + routing
    assert moe_activation_bytes(TINY, 128, 2, 1, 2, 4, etp=1) == rows_h / 2 + ffn + routing / 2


def test_rank_grid_expert_groups_fold_over_tp() -> None:
    """tp 4, dp 2, pp 2: pipeline stage 1 holds ranks 8-15. Expert TP 4, ep 2: the expert-parallel group at
    tp position 0 is ranks 8 and 12 (the data-parallel ranks). Expert TP 1, ep 4: four consecutive ranks,
    block 1 = 12-15; the ranks holding position 2's experts are 10 and 14."""
    grid = RankGrid(tp=4, pp=2, dp=2)
    assert grid.ep_group(1, 0, 0, 2) == [8, 12] == grid.data_context_group(1, 0)
    assert grid.ep_group(1, 0, 1, 4, etp=1) == [12, 13, 14, 15]
    assert grid.edp_group(1, 0, 2, 4, etp=1) == [10, 14]


def test_all_to_all_over_consecutive_ranks_stays_in_the_node() -> None:
    """tp 2, ep 8 on 8-GPU nodes: expert TP 2 spaces the group's ranks 2 apart (4 per node, 2 nodes);
    expert TP 1 takes 8 consecutive ranks (one node). A layer's EP time is its four all-to-alls of the
    tp rank's 1/2 of the busiest rank's 320 rows (``tp_split``) at that placement."""
    assert (ep_group_placement(2, 8, 8).nodes, ep_group_placement(1, 8, 8).nodes) == (2, 1)
    cluster = load_cluster("dgx-h100")
    roof = RooflineTimes(TINY, cluster, "bf16", stack=MEGATRON)
    payload = 320 / 2 * 256 * 2
    expected = 4 * collective_s("all_to_all", payload, ep_group_placement(1, 8, 8), network_for(cluster))
    assert roof.transformer(2, 1, 128, True, "none", ep=8, moe=True, etp=1).ep_comm_s == pytest.approx(expected)


def test_expert_gradients_reduce_over_their_own_group_even_without_ep() -> None:
    """Expert TP 1 with ep 1 under tp 2, dp 4: every tp rank holds all experts whole, so their gradients
    average over the 2·4 = 8 ranks of the stage, not the dense dp group of 4."""
    cfg = _config(2, 4, 1, 1)
    assert experts_reduced_apart(cfg) and not experts_reduced_apart(_config(2, 4, 1, None))
    assert edp_placement(load_cluster("dgx-h100"), cfg, 0).size == 8


def test_the_rules_say_where_expert_tp_1_runs() -> None:
    problems = config_violations(TINY, TRAIN, 8, _config(2, 4, 8, 1), MEGATRON)
    assert problems == []
    assert any("ep=8 does not divide dp*cp = 4*1" in p for p in config_violations(TINY, TRAIN, 8, _config(2, 4, 8, None), MEGATRON))
    assert any("needs sequence parallelism" in p
               for p in config_violations(TINY, TRAIN, 8, _config(2, 4, 8, 1, sp=False), MEGATRON))
    torch_problems = config_violations(TINY, TRAIN, 8, _config(2, 4, 8, 1, stack="ppplan-torch", sp=False), load_stack("ppplan-torch"))
    assert any("splits every expert over the tp ranks" in p for p in torch_problems)
    wide = ParallelConfig(stack="megatron-core", tp=4, dp=2, ep=2, etp=2, pp=1, mbs=1, num_microbatches=32,
                          sequence_parallel=True, zero=1, stage_layers=[8])
    assert any("expert TP = tp or 1" in p for p in config_violations(TINY, TRAIN, 8, wide, MEGATRON))


def test_search_space_offers_expert_tp_1_where_the_stack_folds_it() -> None:
    """tiny-moe on tp 2, dp 2: ep divides dp·cp = 2 with expert TP 2, tp·dp·cp = 4 with expert TP 1;
    not on ppplan's runtime, nor where the layer times cannot price it (a measured profile)."""
    assert expert_layouts(TINY, TRAIN, 2, 2, 1, MEGATRON, True) == [(1, 2), (2, 2), (1, 1), (2, 1), (4, 1)]
    assert expert_layouts(TINY, TRAIN, 2, 2, 1, MEGATRON, False) == [(1, 2), (2, 2)]
    assert expert_layouts(TINY, TRAIN, 2, 2, 1, load_stack("ppplan-torch"), True) == [(1, 2), (2, 2)]
    assert expert_layouts(TINY, TRAIN, 1, 4, 1, MEGATRON, True) == [(1, 1), (2, 1), (4, 1)]


def test_emitters_write_the_expert_tp() -> None:
    args, _, _ = megatron_parallel_args(_config(2, 4, 8, 1))
    assert ("--expert-tensor-parallel-size", "1") in args
    assert all(flag != "--expert-tensor-parallel-size" for flag, _ in megatron_parallel_args(_config(2, 8, 4, None))[0])
    assert torchtitan_parallel_entries(TINY, _config(2, 8, 4, None))["expert_tensor_parallel_degree"] == 2


def test_the_combined_1f1b_needs_experts_to_overlap_and_no_full_recompute() -> None:
    """Megatron-Core's --overlap-moe-expert-parallel-comm (transformer_config.py @23e00ed0): ep > 1, no full
    recompute, a bf16/fp16 model (fp8 runs on one)."""
    assert expert_overlap_violations("combined-1f1b", 8, "selective", "fp8") == []
    assert expert_overlap_violations("interleaved-1f1b", 1, "full", "fp32") == []
    problems = expert_overlap_violations("combined-1f1b", 1, ["none", "full"], "fp32")
    assert len(problems) == 3 and "needs ep > 1" in problems[0] and "full recompute" in problems[1]
