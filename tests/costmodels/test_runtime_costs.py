"""``costmodels/runtime_costs.py``: the runtime's measured costs around the layers, priced on CPU
ranks only (host overhead, FSDP host work, the heap's optimizer temporary and recompute working
set) and the measured links wherever given. Expected values are hand-derived."""

from __future__ import annotations

import pytest

from costmodels.comm import Link
from costmodels.compute import memory_bound_time_s
from costmodels.estimate import ADAM_STEP_BYTES_PER_PARAM, estimate
from costmodels.flops import parameter_counts
from costmodels.memory import STEP_TEMP_BYTES_PER_PARAM
from costmodels.processor_sharing import ranks_per_core
from costmodels.runtime_costs import (
    RuntimeCosts,
    compute_factor,
    crowded_factor,
    fsdp_host_s,
    measured_runtime_costs,
    optimizer_temp_bytes,
    runtime_costs_of,
)
from profiles.loader import load_stack
from profiles.profile_schema import RuntimeMeasurement
from profiles.schema import ClusterSpec, ModelSpec, ParallelConfig, TrainSpec
from tests.costmodels.neutral_stack import neutral_stack
from tests.costmodels.unit_layers import UnitLayers

MODEL = ModelSpec(name="t", num_layers=8, hidden_size=256, num_attention_heads=8, vocab_size=1024, seq_len=128)
TRAIN = TrainSpec(global_batch=4, seq_len=128, precision="fp32")


STACK = neutral_stack()


def cluster(device: str) -> ClusterSpec:
    """Free links, no time-sharing: only what the runtime costs add shows."""
    return ClusterSpec(
        name="t", gpu={"name": device, "memory_gib": 64, "peak_tflops": {"fp32": 0.1}, "hbm_bandwidth_gbs": 1e12},
        gpus_per_node=8, intra_node={"bandwidth_gbs": 1e12, "latency_us": 0}, inter_node={"bandwidth_gbs": 1e12, "latency_us": 0},
    )  # fmt: skip


def config(pp: int, dp: int = 1, schedule: str = "1f1b", zero: int = 0) -> ParallelConfig:
    m = TRAIN.global_batch // dp
    return ParallelConfig(tp=1, pp=pp, dp=dp, mbs=1, num_microbatches=m, schedule=schedule, zero=zero,
                          stage_layers=[8 // pp] * pp)  # fmt: skip


def test_host_overhead_lengthens_a_cpu_pipeline_and_not_a_gpu_one() -> None:
    # 1F1B, pp=2, M=4, each stage 4 layers: F = 4 s, B(+W) = 8 s -> makespan (M + P - 1)(F + B) = 5 x 12 = 60 s;
    # 0.1 s per action adds 0.2 s per (F, B) pair: 5 x 12.2 = 61 s
    cfg = config(pp=2)
    costs = RuntimeCosts(host_overhead_per_action_s=0.1)
    base = estimate(MODEL, cluster("cpu"), TRAIN, cfg, UnitLayers(), stack=STACK).step_time_s
    assert base == pytest.approx(60.0)
    assert estimate(MODEL, cluster("cpu"), TRAIN, cfg, UnitLayers(costs), stack=STACK).step_time_s == pytest.approx(61.0)
    assert estimate(MODEL, cluster("H100"), TRAIN, cfg, UnitLayers(costs), stack=STACK).step_time_s == pytest.approx(60.0)
    assert runtime_costs_of(UnitLayers(costs), cluster("H100")).host_overhead_per_action_s is None


def test_fsdp_host_work_per_unit_and_step() -> None:
    costs = RuntimeCosts(fsdp_overhead_per_unit_step_s=0.01)
    assert fsdp_host_s(costs, wrapped=False, layers_on_rank=8, stages_on_rank=1) == 0.0
    assert fsdp_host_s(costs, wrapped=True, layers_on_rank=8, stages_on_rank=1) == pytest.approx(0.09)  # 8 layers + the root
    # pp=1 dp=2, M=2: 2 x (8 + 16) = 48 s of layers, free links, +0.09 s of FSDP host work on CPU only
    cfg = config(pp=1, dp=2)
    assert estimate(MODEL, cluster("cpu"), TRAIN, cfg, UnitLayers(costs), stack=STACK).step_time_s == pytest.approx(48.09)
    assert estimate(MODEL, cluster("H100"), TRAIN, cfg, UnitLayers(costs), stack=STACK).step_time_s == pytest.approx(48.0)
    # one data rank: no FSDP, unless the stack wraps every bf16 plan for FSDP2's mixed precision (ppplan's runtime)
    one, bf16 = config(pp=1), TrainSpec(global_batch=4, seq_len=128, precision="bf16")
    base = cluster("cpu").model_dump()
    cpu = ClusterSpec.model_validate(base | {"gpu": base["gpu"] | {"peak_tflops": {"fp32": 0.1, "bf16": 0.1}}})
    plain, always = (STACK.with_changes({"fsdp_mixed_precision_always": flag}) for flag in (False, True))
    assert estimate(MODEL, cpu, bf16, one, UnitLayers(costs), stack=plain).step_time_s == pytest.approx(96.0)
    assert estimate(MODEL, cpu, bf16, one, UnitLayers(costs), stack=always).step_time_s == pytest.approx(96.09)
    assert estimate(MODEL, cpu, TRAIN, one, UnitLayers(costs), stack=always).step_time_s == pytest.approx(96.0)
    # FSDP2 wraps only where the stack's data parallelism is FSDP and it shards (StackSpec.fsdp_wraps): torchtitan's
    # ZeRO 0 is DDP, Megatron's ZeRO 1 is its distributed optimizer; neither pays FSDP2's host work
    for name, zero, seconds in (("torchtitan", 0, 48.0), ("torchtitan", 1, 48.09), ("megatron-core", 1, 48.0)):
        cfg = config(pp=1, dp=2, zero=zero)
        assert estimate(MODEL, cluster("cpu"), TRAIN, cfg, UnitLayers(costs),
                        stack=load_stack(name)).step_time_s == pytest.approx(seconds)


def test_a_measured_optimizer_rate_prices_the_parameters_each_rank_updates() -> None:
    """The optimizer step at the profile's seconds per parameter, on CPU ranks only (a GPU keeps the
    bytes at the cluster's bandwidth); ZeRO >= 1 shards it over dp."""
    params = parameter_counts(MODEL).total(MODEL.num_layers)  # one pipeline rank: the whole model
    costs = RuntimeCosts(optimizer_s_per_param=1e-6)
    for zero, shard in ((0, 1), (1, 2)):
        cfg = config(pp=1, dp=2, zero=zero)
        cpu = estimate(MODEL, cluster("cpu"), TRAIN, cfg, UnitLayers(costs), stack=STACK).breakdown
        assert cpu.optimizer_s == pytest.approx(params / shard * 1e-6, rel=1e-9)
        gpu = estimate(MODEL, cluster("H100"), TRAIN, cfg, UnitLayers(costs), stack=STACK).breakdown
        assert gpu.optimizer_s == pytest.approx(
            memory_bound_time_s(cluster("H100"), params / shard * ADAM_STEP_BYTES_PER_PARAM), rel=1e-9)
    assert runtime_costs_of(UnitLayers(costs), cluster("H100")).optimizer_s_per_param is None
    measured = RuntimeMeasurement(pipeline_action_overhead_s=0.0, optimizer_s_per_param=3e-9)
    assert measured_runtime_costs(None, measured).optimizer_s_per_param == 3e-9
    assert measured_runtime_costs(None, None).optimizer_s_per_param is None


def test_measured_p2p_link_prices_the_pipeline_transfers() -> None:
    # boundary tensor 128 x 256 x 4 B = 131072 B over 1 MB/s + 1 ms = c = 0.132072 s per send; sends
    # block the sender (the default overlap: p2p exposed), so stage 0's F and stage 1's B take c longer.
    # 1F1B pp=2, M=4, F = 4 s, B = 8 s, by hand: rank 0 runs F0 F1 B0 F2 B1 F3 B2 B3 and ends B3 at
    # 60 + 5c (its F0, F1, F2, F3 and rank 1's B3 are on the critical path)
    cfg = config(pp=2)
    slow = RuntimeCosts(p2p_link=Link(bandwidth_bytes_per_s=1e6, latency_s=1e-3))
    base = estimate(MODEL, cluster("cpu"), TRAIN, cfg, UnitLayers(), stack=STACK).step_time_s
    with_p2p = estimate(MODEL, cluster("cpu"), TRAIN, cfg, UnitLayers(slow), stack=STACK).step_time_s
    assert with_p2p - base == pytest.approx(5 * 0.132072, rel=1e-6)


def test_cpu_memory_terms() -> None:
    assert optimizer_temp_bytes(cluster("cpu"), 1e6) == STEP_TEMP_BYTES_PER_PARAM * 1e6 == 4e6
    assert optimizer_temp_bytes(cluster("H100"), 1e6) == 0.0
    cpu = estimate(MODEL, cluster("cpu"), TRAIN, config(pp=1, dp=2, zero=1), UnitLayers(), stack=STACK).memory_breakdown_gib[0]
    gpu = estimate(MODEL, cluster("H100"), TRAIN, config(pp=1, dp=2, zero=1), UnitLayers(), stack=STACK).memory_breakdown_gib[0]
    # the temporary covers the optimizer's own shard (zero 1: params / dp): a quarter of Adam's m + v of that shard
    assert cpu["optimizer_temp"] == pytest.approx(cpu["optimizer"] / 2, rel=1e-3)
    assert "optimizer_temp" not in gpu
    # full recompute's re-run layer is held on every device (costmodels.memory.recompute_working_bytes): on the first
    # of two stages, which holds no loss whose backward could be the larger phase
    full = ParallelConfig(**{**config(pp=2).model_dump(), "recompute": "full"})
    on_cpu = estimate(MODEL, cluster("cpu"), TRAIN, full, UnitLayers(), stack=STACK).memory_breakdown_gib[0]
    on_gpu = estimate(MODEL, cluster("H100"), TRAIN, full, UnitLayers(), stack=STACK).memory_breakdown_gib[0]
    assert on_cpu["recompute_working"] > 0 and on_gpu["recompute_working"] == pytest.approx(on_cpu["recompute_working"])


def test_a_pipeline_pays_the_two_rank_measurement_and_one_stage_the_one_rank_one() -> None:
    """Measured on two ranks (``launch/profiler/pipelined.py``): actions 1.5x slower than alone and
    0.3 s of host time each; on one rank 0.1 s per action and nothing slower.
    1F1B pp=2, M=4, 4 layers a stage: F = 1.5 x 4 + 0.3 = 6.3 s, B(+W) = 1.5 x 8 + 0.3 = 12.3 s ->
    (M + P - 1)(F + B) = 5 x 18.6 = 93 s (60 s unmeasured, 61 s with the one-rank figure alone).
    pp=1, M=4, 8 layers: 4 x (8 + 16 + 2 x 0.1) = 96.8 s: no pipeline, no factor."""
    costs = RuntimeCosts(host_overhead_per_action_s=0.1, host_overhead_per_pipelined_action_s=0.3, pipelined_compute_factor=1.5)
    est = estimate(MODEL, cluster("cpu"), TRAIN, config(pp=2), UnitLayers(costs), stack=STACK)
    assert est.step_time_s == pytest.approx(93.0)
    # the critical rank's own four (F, B) pairs: 2 x 0.3 s of host time and 0.5 x 12 s of slower compute each
    assert est.breakdown.overhead_s == pytest.approx(4 * (2 * 0.3 + 0.5 * 12.0))
    assert estimate(MODEL, cluster("cpu"), TRAIN, config(pp=1), UnitLayers(costs), stack=STACK).step_time_s == pytest.approx(96.8)
    assert estimate(MODEL, cluster("H100"), TRAIN, config(pp=2), UnitLayers(costs), stack=STACK).step_time_s == pytest.approx(60.0)


def test_a_profile_taken_before_the_two_rank_measurement_keeps_the_one_rank_figure() -> None:
    old = measured_runtime_costs(None, RuntimeMeasurement(pipeline_action_overhead_s=0.1))
    assert old.host_overhead_per_pipelined_action_s is None and old.pipelined_compute_factor == 1.0
    assert estimate(MODEL, cluster("cpu"), TRAIN, config(pp=2), UnitLayers(old), stack=STACK).step_time_s == pytest.approx(61.0)
    new = measured_runtime_costs(None, RuntimeMeasurement(pipeline_action_overhead_s=0.1, pipelined_action_overhead_s=0.3,
                                                          pipelined_compute_factor=1.5))  # fmt: skip
    assert (new.host_overhead_per_pipelined_action_s, new.pipelined_compute_factor) == (0.3, 1.5)


CROWDED = ((2.0, 1, 1.2), (2.0, 4, 1.1), (4.0, 1, 1.6))  # (ranks per core, mbs, factor)


def test_the_crowded_factor_is_interpolated_in_log_mbs_then_in_ranks_per_core_and_never_extrapolated() -> None:
    """Base (two-rank pipeline) 1.05 at one rank per core. At 2 per core: mbs 1 -> 1.2, mbs 4 -> 1.1, so
    mbs 2 (log2 halfway) -> 1.15. At 4 per core only mbs 1 was measured: 1.6 whatever the mbs."""
    assert crowded_factor(CROWDED, 1.05, 2.0, 2) == pytest.approx(1.15)
    assert crowded_factor(CROWDED, 1.05, 3.0, 1) == pytest.approx(1.4)  # halfway from 1.2 (2 per core) to 1.6 (4)
    assert crowded_factor(CROWDED, 1.05, 1.5, 4) == pytest.approx(1.075)  # halfway from 1.05 (1 per core) to 1.1
    assert crowded_factor(CROWDED, 1.05, 8.0, 8) == pytest.approx(1.6)  # beyond both ends: the last point
    assert crowded_factor(CROWDED, 1.05, 2.0, 16) == pytest.approx(1.1)
    assert crowded_factor(CROWDED, 1.05, 1.0, 1) == crowded_factor((), 1.05, 4.0, 1) == 1.05
    # no pipeline: no factor; a crowded figure below the two-rank one (noise) does not lower it
    assert compute_factor(RuntimeCosts(pipelined_compute_factor=1.3, crowded_pipeline=CROWDED), 1, 4.0, 1) == 1.0
    assert compute_factor(RuntimeCosts(pipelined_compute_factor=1.3, crowded_pipeline=CROWDED), 2, 2.0, 4) == 1.3
    assert compute_factor(RuntimeCosts(pipelined_compute_factor=1.05, crowded_pipeline=CROWDED), 2, 4.0, 1) == 1.6


def test_a_crowded_cpu_pipeline_prices_its_actions_at_the_crowded_factor() -> None:
    """One core (``concurrent_ranks_per_node`` 1) and GPipe pp 2 over one microbatch: two ranks per core,
    and the stages never compute at once, so nothing is time-shared. F = 4 s and B = 8 s per stage:
    2 x (4 + 8) = 24 s, at the crowded factor measured at two ranks per core (1.6) 38.4 s;
    a GPU cluster never applies it (no cores to crowd)."""
    one_core = ClusterSpec(**{**cluster("cpu").model_dump(), "concurrent_ranks_per_node": 1})
    train = TrainSpec(global_batch=1, seq_len=128, precision="fp32")
    cfg = ParallelConfig(tp=1, pp=2, dp=1, mbs=1, num_microbatches=1, schedule="gpipe", stage_layers=[4, 4])
    assert ranks_per_core(one_core, cfg) == 2.0 and ranks_per_core(cluster("cpu"), cfg) == 1.0
    costs = RuntimeCosts(crowded_pipeline=((2.0, 1, 1.6),))
    assert estimate(MODEL, one_core, train, cfg, UnitLayers(), stack=STACK).step_time_s == pytest.approx(24.0)
    assert estimate(MODEL, one_core, train, cfg, UnitLayers(costs), stack=STACK).step_time_s == pytest.approx(38.4)
    assert estimate(MODEL, cluster("H100"), train, cfg, UnitLayers(costs), stack=STACK).step_time_s == pytest.approx(24.0)
