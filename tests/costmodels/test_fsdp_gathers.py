"""All-gathers of FSDP2-wrapped stages under torch's pipelining, hand-derived, and where they apply: the gathers
again of stages the runtime evicted (``costmodels.microbatch_dp.evicted_regathers``, ``regather_traffic``) and the
ZeRO-3 gathers counted on the action list (``zero3_gathers_per_microbatch``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from costmodels.comm import network_for
from costmodels.compute import memory_bound_time_s
from costmodels.estimate import estimate
from costmodels.layout import layouts_of
from costmodels.memory import GIB, StageParams, stage_param_split, unsharded_weights_share
from costmodels.microbatch_dp import (
    evicted_regathers,
    mean_gathering_pass_extra_s,
    microbatch_dp_traffic,
    regather_traffic,
    zero3_gathers_per_microbatch,
)
from costmodels.overlap import OVERLAPPED_COMPUTE_SLOWDOWN
from profiles.loader import load_model, load_stack
from profiles.schema import ClusterSpec, ParallelConfig, TrainSpec

CLUSTER = ClusterSpec(
    name="test", gpu={"name": "TEST", "memory_gib": 80, "peak_tflops": {"bf16": 312, "fp32": 19.5}, "hbm_bandwidth_gbs": 2000},
    gpus_per_node=8, intra_node={"bandwidth_gbs": 300, "latency_us": 8}, inter_node={"bandwidth_gbs": 25, "latency_us": 15},
    efficiency={"intra_node_collective": 1.0, "inter_node_collective": 1.0},
)  # fmt: skip


ROUNDED_GIB = 5e-5  # the memory breakdown is rounded to 1e-4 GiB


def _cfg(**fields: object) -> ParallelConfig:
    base = {"tp": 1, "pp": 2, "dp": 4, "v": 6, "mbs": 1, "num_microbatches": 16, "schedule": "interleaved-1f1b",
            "zero": 1, "stage_layers": [2] * 12}
    return ParallelConfig.model_validate({**base, **fields})


def test_ppplan_torch_gathers_an_evicted_stage_again_each_time_its_rank_comes_back_to_it() -> None:
    """pp 2, v 6, M 16 gathers the stages 10, 10, 10, 9, ... 8 times a step (tests/costmodels/schedules/
    test_fsdp_lowering.py): 9, 9, 9, 8, ... 7 beyond the first."""
    torch_stack = load_stack("ppplan-torch")
    assert evicted_regathers(_cfg(), torch_stack, "bf16") == (9, 9, 9, 8, 8, 8, 8, 8, 8, 7, 7, 7)
    assert evicted_regathers(_cfg(zero=0), torch_stack, "bf16") == (9, 9, 9, 8, 8, 8, 8, 8, 8, 7, 7, 7)
    # three stages a rank or fewer: each gathered once; ZeRO 3 gathers every pass already; Megatron does not
    # reshard between actions
    assert evicted_regathers(_cfg(v=3, stage_layers=[4] * 6), torch_stack, "bf16") == ()
    assert evicted_regathers(_cfg(zero=3), torch_stack, "bf16") == ()
    assert evicted_regathers(_cfg(), load_stack("megatron-core"), "bf16") == ()


def test_a_regather_is_the_stages_all_gather_over_its_data_ranks_and_its_copy_out() -> None:
    """Stage 0 of pp 2 x v 6 (2 layers, the embedding's root: 3 FSDP2 units), 100 M bf16 parameters, dp 4 on one
    node: each gather is 3 ring all-gathers of a third of 200 MB, 3 NVLink steps of 8 us each and 3/4 of the bytes
    at 300 GB/s; the copy out of the gather buffer reads and writes the 200 MB. 9 of them spread over 16
    forwards."""
    cfg = _cfg()
    layout = layouts_of(cfg.stage_layers, cfg.pp, cfg.v, cfg.schedule)[0]
    stage = SimpleNamespace(rank=0, params=StageParams(100e6), layout=layout, moe_layers=0)
    train = TrainSpec(global_batch=64, seq_len=2048, precision="bf16")
    traffic, copy_s = regather_traffic(cfg, CLUSTER, train, stage, load_stack("ppplan-torch"), network_for(CLUSTER), 9)
    one_gather = 3 * (3 * 8e-6 + 3 / 4 * (200e6 / 3) / 300e9)
    assert traffic.gather_s == pytest.approx(one_gather)
    assert (traffic.gathers_per_f, traffic.gathers_per_b) == (9 / 16, 0.0)
    assert traffic.gather_f_s == pytest.approx(9 / 16 * one_gather)
    assert copy_s == pytest.approx(9 / 16 * memory_bound_time_s(CLUSTER, 2 * 200e6))
    # ZeRO 0: ppplan's runtime shards each replica over one rank, so nothing crosses a link; the copy stays
    traffic0, copy0 = regather_traffic(cfg.model_copy(update={"zero": 0}), CLUSTER, train, stage,
                                       load_stack("ppplan-torch"), network_for(CLUSTER), 9)
    assert (traffic0.gather_f_s, copy0) == (0.0, pytest.approx(copy_s))


def test_the_estimate_charges_the_regathers_to_the_data_parallel_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiny-llama's 8 layers on pp 2 x v 4 (interleaved 1F1B, M 8, dp 4, ZeRO 1): the step with the regathers
    against the same step priced as if every stage stayed unsharded: more data-parallel time, the same compute."""
    model, train = load_model("tiny-llama"), TrainSpec(global_batch=32, seq_len=128, precision="bf16")
    cfg = _cfg(v=4, num_microbatches=8, stage_layers=[1] * 8)
    stack = load_stack("ppplan-torch")
    assert evicted_regathers(cfg, stack, "bf16")
    priced = estimate(model, CLUSTER, train, cfg, stack=stack)
    monkeypatch.setattr("costmodels.estimate.evicted_regathers", lambda *_: ())
    kept = estimate(model, CLUSTER, train, cfg, stack=stack)
    assert priced.breakdown.dp_comm_s > kept.breakdown.dp_comm_s
    assert priced.step_time_s > kept.step_time_s
    assert priced.breakdown.compute_s == pytest.approx(kept.breakdown.compute_s)


def test_zero3_under_torchs_pipelining_gathers_as_the_action_list_says() -> None:
    """1F1B, pp 2, M 8 at ZeRO 3 (tests/costmodels/schedules/test_fsdp_lowering.py: 2 + 7 and 1 + 8 gathers):
    per microbatch 2/8 in F and 7/8 in B on stage 0, where ZeRO 3 without the list charged one in each; a
    bounding pricer's lower bound keeps the first forward's and the backward's after the last forward. Stage 0 of 100 M bf16 parameters, dp 4 on one
    node: its F carries 2/8 of one 3-unit all-gather."""
    cfg = _cfg(v=1, zero=3, schedule="1f1b", num_microbatches=8, stage_layers=[4, 4])
    stack = load_stack("ppplan-torch")
    assert zero3_gathers_per_microbatch(cfg, stack, "bf16") == ((2 / 8, 7 / 8), (1 / 8, 8 / 8))
    assert zero3_gathers_per_microbatch(cfg, stack, "bf16", exact=False) == ((1 / 8, 1 / 8), (1 / 8, 1 / 8))
    assert zero3_gathers_per_microbatch(cfg.model_copy(update={"zero": 1}), stack, "bf16") == ()
    assert zero3_gathers_per_microbatch(cfg, load_stack("megatron-core"), "bf16") == ()
    layout = layouts_of(cfg.stage_layers, cfg.pp, cfg.v, cfg.schedule)[0]
    stage = SimpleNamespace(rank=0, params=StageParams(100e6), layout=layout, moe_layers=0)
    train = TrainSpec(global_batch=32, seq_len=2048, precision="bf16")
    units = 5  # four blocks and the stage root with the embedding
    one_gather = units * (3 * 8e-6 + 3 / 4 * (200e6 / units) / 300e9)
    traffic = microbatch_dp_traffic(cfg, CLUSTER, train, stage, stack, network_for(CLUSTER), (2 / 8, 7 / 8))
    assert traffic.gather_f_s == pytest.approx(2 / 8 * one_gather)
    assert traffic.gather_b_s == pytest.approx(7 / 8 * one_gather)
    assert microbatch_dp_traffic(cfg, CLUSTER, train, stage, stack, network_for(CLUSTER)).gather_b_s == pytest.approx(one_gather)


def test_a_gathering_pass_pays_its_whole_gather_not_an_average_share() -> None:
    """Two of eight forwards of 70 ms each run a whole 123 ms gather (the warm-up of llama3-70b's first stage at
    ZeRO 3 on 32 H100): those two wait 53 ms each for it, the other six run alone, 13.25 ms a forward on average;
    spread evenly, 2/8 of the gather (31 ms) would hide under every forward and cost only its contention. Below
    the pass time a gather costs its contention, sigma / (1 + sigma) of it, in the passes that run one."""
    sigma = OVERLAPPED_COMPUTE_SLOWDOWN
    assert mean_gathering_pass_extra_s(0.070, 0.123, 2 / 8) == pytest.approx(2 / 8 * (0.123 - 0.070))
    assert mean_gathering_pass_extra_s(0.070, 0.030, 2 / 8) == pytest.approx(2 / 8 * 0.030 * sigma / (1 + sigma))
    assert mean_gathering_pass_extra_s(0.070, 0.030, 1.0) == pytest.approx(0.030 * sigma / (1 + sigma))
    assert mean_gathering_pass_extra_s(0.070, 0.030, 3.0) == pytest.approx(0.090 - 0.070)  # three a pass
    # the reduce-scatter every backward runs beside them (FSDP without a pipeline) is paid in every pass
    assert mean_gathering_pass_extra_s(0.070, 0.0, 0.0, 0.100) == pytest.approx(0.100 - 0.070)


def test_an_evicting_rank_holds_its_three_largest_stages_unsharded_at_once() -> None:
    """tiny-llama's 8 layers on pp 2 x v 4 (interleaved 1F1B, dp 4, ZeRO 1, bf16): rank 0 holds stages 0, 2, 4, 6,
    stage 0 with the embedding. The lowering keeps 3 of them unsharded at a time and FSDP2's reshard frees the
    others' bf16 copies: its weights are the three largest stages', 2 B x (3 layers + the embedding), not all four;
    in fp32 the same three stages' fp32 copies beside every stage's fp32 shard (``fp32_shard_bytes``). Megatron-Core
    (which does not reshard between actions) keeps all four;
    at ZeRO 3 every stage keeps its shard and three hold their gathered copies; at v 3 (stages 0, 2, 4 on rank 0:
    1 + 1 + 1 layers and the embedding) nothing is evicted."""
    model, train = load_model("tiny-llama"), TrainSpec(global_batch=32, seq_len=128, precision="bf16")
    cfg = _cfg(v=4, num_microbatches=8, stage_layers=[1] * 8)
    layer = stage_param_split(model, 0, 1, False, False, 1).total
    embedding = stage_param_split(model, 0, 0, True, False, 1).total
    assert unsharded_weights_share([layer + embedding, layer, layer, layer]) == pytest.approx(
        (3 * layer + embedding) / (4 * layer + embedding))
    assert unsharded_weights_share([1.0, 2.0, 3.0]) == 1.0  # three stages or fewer: all of them
    est = estimate(model, CLUSTER, train, cfg, stack=load_stack("ppplan-torch"))
    assert est.memory_breakdown_gib[0]["weights"] == pytest.approx(2 * (3 * layer + embedding) / GIB, abs=ROUNDED_GIB)
    whole = 2 * (4 * layer + embedding) / GIB
    # fp32: the unsharded fp32 copies of three stages and the fp32 shards (a quarter over dp 4) of all four
    fp32 = estimate(model, CLUSTER, train.model_copy(update={"precision": "fp32"}), cfg, stack=load_stack("ppplan-torch"))
    assert fp32.memory_breakdown_gib[0]["weights"] == pytest.approx(
        (4 * (3 * layer + embedding) + 4 * (4 * layer + embedding) / 4) / GIB, abs=ROUNDED_GIB)
    core = estimate(model, CLUSTER, train, cfg.model_copy(update={"stack": "megatron-core"}), stack=load_stack("megatron-core"))
    assert core.memory_breakdown_gib[0]["weights"] == pytest.approx(whole, abs=ROUNDED_GIB)
    # ZeRO 3: the shards of all four stages (2 B over dp 4) and the gathered copies of three
    zero3 = estimate(model, CLUSTER, train, _cfg(v=4, num_microbatches=8, stage_layers=[1] * 8, zero=3),
                     stack=load_stack("ppplan-torch"))
    assert zero3.memory_breakdown_gib[0]["weights"] == pytest.approx(
        (2 * (4 * layer + embedding) / 4 + 2 * (3 * layer + embedding)) / GIB, abs=ROUNDED_GIB)
    kept = estimate(model, CLUSTER, train, _cfg(v=3, num_microbatches=8, stage_layers=[1, 1, 1, 1, 1, 3]),
                    stack=load_stack("ppplan-torch"))
    assert kept.memory_breakdown_gib[0]["weights"] == pytest.approx(2 * (3 * layer + embedding) / GIB, abs=ROUNDED_GIB)


def test_an_fp32_fsdp_run_keeps_its_shards_beside_its_unsharded_weights() -> None:
    """FSDP2's sharded parameter is its own storage beside the all-gather outputs (measured on ppplan's runtime,
    tiny-llama pp 2 x dp 2 fp32: 12,853,248 B of shards at ZeRO 0 and 6,426,624 at ZeRO 1 beside 12,853,248 B
    unsharded). tiny-llama's 8 layers on one stage, dp 2, fp32: 4 B x P unsharded, plus 4 B x P of shards at ZeRO 0
    (one shard), 4 B x P / 2 at ZeRO 1; at ZeRO 3 the static weights are the shards; bf16's shard is its master copy,
    in the optimizer state; Megatron-Core does not run FSDP."""
    model, train = load_model("tiny-llama"), TrainSpec(global_batch=16, seq_len=128, precision="fp32")
    params = stage_param_split(model, 0, 8, True, True, 1).total
    base = {"pp": 1, "dp": 2, "v": 1, "num_microbatches": 8, "schedule": "1f1b", "stage_layers": [8]}
    torch_stack = load_stack("ppplan-torch")
    for zero, shards in ((0, 1.0), (1, 0.5)):
        est = estimate(model, CLUSTER, train, _cfg(**base, zero=zero), stack=torch_stack)
        assert est.memory_breakdown_gib[0]["weights"] == pytest.approx(4 * params * (1 + shards) / GIB, abs=ROUNDED_GIB)
    zero3 = estimate(model, CLUSTER, train, _cfg(**base, zero=3), stack=torch_stack)  # the shards and the gathered copy
    assert zero3.memory_breakdown_gib[0]["weights"] == pytest.approx(4 * params * (1 + 0.5) / GIB, abs=ROUNDED_GIB)
    bf16 = estimate(model, CLUSTER, train.model_copy(update={"precision": "bf16"}), _cfg(**base, zero=1), stack=torch_stack)
    assert bf16.memory_breakdown_gib[0]["weights"] == pytest.approx(2 * params / GIB, abs=ROUNDED_GIB)
    core = estimate(model, CLUSTER, train, _cfg(**base, zero=1).model_copy(update={"stack": "megatron-core"}),
                    stack=load_stack("megatron-core"))
    assert core.memory_breakdown_gib[0]["weights"] == pytest.approx(4 * params / GIB, abs=ROUNDED_GIB)
