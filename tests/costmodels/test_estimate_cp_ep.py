"""``costmodels.estimate`` with context and expert parallelism: the world is tp·cp·pp·dp, dense gradients
go over the dp x cp ranks and experts over dp x cp / ep, the breakdown's exposed parts (with its CP
and EP communication) still add up to the step, and memory per rank follows the hand arithmetic."""

from __future__ import annotations

import pytest

from costmodels.data_parallel import dp_placement, edp_placement
from costmodels.estimate import estimate
from costmodels.flops import model_flops_per_iteration
from costmodels.layout import uniform_split
from costmodels.memory import GIB
from costmodels.step_time import exposed_sum_s
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ParallelConfig, TrainSpec


def config(stack: str, tp: int, cp: int, ep: int, pp: int, dp: int, layers: int, batch: int, **extra) -> ParallelConfig:
    mbs = extra.pop("mbs", 1)
    return ParallelConfig(stack=stack, tp=tp, cp=cp, ep=ep, pp=pp, dp=dp, mbs=mbs, num_microbatches=batch // (dp * mbs),
                          stage_layers=uniform_split(layers, pp * extra.get("v", 1)), **extra)


@pytest.mark.parametrize(("model", "stack", "tp", "cp", "ep", "pp", "dp", "extra"), [
    ("mixtral-8x7b", "megatron-core", 2, 2, 4, 2, 4, {"sequence_parallel": True, "zero": 1}),
    ("mixtral-8x7b", "ppplan-torch", 1, 1, 8, 4, 16, {"zero": 3}),
    ("llama3-8b", "ppplan-torch", 4, 4, 1, 2, 8, {"recompute": "selective", "zero": 1}),
    ("llama3-8b", "torchtitan", 2, 4, 1, 2, 8, {"zero": 1, "schedule": "zb-h1"}),
    ("deepseek-v3", "megatron-core", 2, 2, 8, 8, 8, {"sequence_parallel": True, "zero": 1, "recompute": "full"}),
])
def test_breakdown_adds_up_to_the_step(model: str, stack: str, tp: int, cp: int, ep: int, pp: int, dp: int,
                                       extra: dict) -> None:
    m, cluster = load_model(model), load_cluster("dgx-h100")
    train = TrainSpec(global_batch=64, seq_len=4096, precision="bf16")
    cfg = config(stack, tp, cp, ep, pp, dp, m.num_layers, 64, **extra)
    est = estimate(m, cluster, train, cfg, stack=load_stack(stack))
    assert exposed_sum_s(est.breakdown) == pytest.approx(est.step_time_s, rel=1e-9)
    world = tp * cp * pp * dp
    assert est.model_tflops_per_gpu == pytest.approx(model_flops_per_iteration(m, 64, 4096) / est.step_time_s / world / 1e12)
    assert est.breakdown.ep_comm_s > 0 if ep > 1 else est.breakdown.ep_comm_s == 0
    if cp > 1 and stack == "ppplan-torch":
        assert est.breakdown.cp_comm_s > 0  # its ring's shifts are blocking


def test_gradient_groups_span_dp_times_cp() -> None:
    """cp = 4, dp = 2, tp = 2 on 8-GPU nodes: the dense gradients of a pipeline rank go over its 8 dp x cp
    ranks, tp = 2 apart over 16 GPUs (two nodes); the experts (ep = 4) over the 2 ranks holding the same
    experts, data-context indices 0 and 4 (GPUs 0 and 8)."""
    cluster = load_cluster("dgx-h100")
    cfg = config("megatron-core", 2, 4, 4, 2, 2, 32, 64)
    dense, experts = dp_placement(cluster, cfg, 0), edp_placement(cluster, cfg, 0)
    assert (dense.size, dense.nodes) == (8, 2)
    assert (experts.size, experts.nodes) == (2, 2)


def test_dp_traffic_with_cp_and_no_dp() -> None:
    """dp = 1, cp = 2: the two context-parallel ranks still average their gradients."""
    m, cluster = load_model("llama3-8b"), load_cluster("dgx-h100")
    train = TrainSpec(global_batch=8, seq_len=8192, precision="bf16")
    cfg = config("megatron-core", 4, 2, 1, 1, 1, 32, 8, sequence_parallel=True)
    est = estimate(m, cluster, train, cfg, stack=load_stack("megatron-core"))
    assert est.breakdown.overlapped.get("dp_comm_s", 0.0) + est.breakdown.dp_comm_s > 0


def test_mixtral_memory_per_rank_with_ep() -> None:
    """Mixtral-8x7B, tp 1, ep 8, pp 2, dp 32, ZeRO-1 on Megatron-Core, pipeline rank 0 (16 layers and the
    embedding): weights 2·(802,816,000 + 2,818,572,288) B = 6.745 GiB, gradients accumulated in fp32
    (Megatron's main_grad buffer, ``grad_accumulation_fp32``) 4 B each = 13.49 GiB, Adam's
    12·802,816,000/32 + 12·2,818,572,288/4 B = 8.155 GiB (tests/costmodels/test_experts.py)."""
    m, cluster = load_model("mixtral-8x7b"), load_cluster("dgx-h100")
    train = TrainSpec(global_batch=256, seq_len=4096, precision="bf16")
    cfg = config("megatron-core", 1, 1, 8, 2, 32, 32, 256, zero=1, v=4, schedule="interleaved-1f1b")
    rank0 = estimate(m, cluster, train, cfg, stack=load_stack("megatron-core")).memory_breakdown_gib[0]
    assert rank0["weights"] == pytest.approx(2 * 3_621_388_288 / GIB, abs=1e-4)
    assert rank0["gradients"] == pytest.approx(4 * 3_621_388_288 / GIB, abs=1e-4)
    assert rank0["optimizer"] == pytest.approx((12 * 802_816_000 / 32 + 12 * 2_818_572_288 / 4) / GIB, abs=1e-4)
