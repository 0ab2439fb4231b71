"""The host floor of a mixture-of-experts layer (``StackOverlap.moe_host_s_per_operator``): a layer whose
dispatch synchronizes host and device takes max(GPU, operators x host seconds) per pass; dense layers and
stacks without the constant are unchanged."""

from __future__ import annotations

import pytest

from costmodels.layer_costs import PassTimes, RooflineTimes, host_bound, host_operator_count, host_operator_counts
from costmodels.operators import AllToAll, FlashAttention, Gemm, LayerOps, MemoryBound, RingAttention
from planner.trust.published_runs import PublishedRow, read_published_runs
from profiles.loader import load_cluster, load_model, load_stack
from profiles.stack_schema import StackSpec

GEMM, COPY, A2A = Gemm("g", 8, 8, 8, batch=16), MemoryBound("m", 64.0), AllToAll("a", 64.0)


def _with_host(stack: StackSpec, seconds: float) -> StackSpec:
    return stack.with_changes({"overlap": {"moe_host_s_per_operator": seconds}})


def test_operators_are_counted_once_a_grouped_gemm_once_and_a_ring_per_step() -> None:
    ring = RingAttention("ring", steps=4, first=(FlashAttention("f", 1.0), COPY), other=(FlashAttention("o", 1.0),),
                         exchange_bytes=1.0, exchange="p2p")
    assert host_operator_count((GEMM, COPY, A2A)) == 3
    assert host_operator_count((ring,)) == 2 + 3 * 1
    assert host_operator_count(()) == 0


def test_a_host_bound_pass_takes_the_host_time_and_labels_the_excess() -> None:
    """F: 10 operators x 0.2 ms = 2 ms > 1 ms of GPU; B + W: 30 operators = 6 ms > 2 + 1 ms: B grows by 3 ms."""
    ops = LayerOps(forward=(COPY,) * 10, backward_input=(COPY,) * 15, backward_weight=(GEMM,) * 15)
    got = host_bound(PassTimes(1e-3, 2e-3, 1e-3), ops, 2e-4)
    assert (got.forward_s, got.backward_input_s, got.backward_weight_s) == pytest.approx((2e-3, 5e-3, 1e-3))
    assert got.overhead_s == pytest.approx(1e-3 + 3e-3)


def test_a_gpu_bound_pass_and_a_stack_without_the_constant_are_unchanged() -> None:
    ops = LayerOps(forward=(COPY,) * 10, backward_input=(COPY,) * 15, backward_weight=(GEMM,) * 15)
    passes = PassTimes(5e-3, 6e-3, 1e-3)
    assert host_bound(passes, ops, 2e-4) == passes  # 2 ms and 6 ms of host under 5 ms and 7 ms of GPU
    assert host_bound(PassTimes(1e-6, 1e-6, 1e-6), ops, 0.0) == PassTimes(1e-6, 1e-6, 1e-6)


def test_roofline_prices_the_floor_on_moe_layers_only() -> None:
    """Qwen3-30B-A3B on DGX-B200, mbs 1, ep 8, under megatron-core with a 1 ms floor per operator: every MoE
    pass is host-bound at its operator count; the same stack prices a dense layer as without the floor."""
    model, cluster = load_model("qwen3-30b-a3b"), load_cluster("dgx-b200")
    stack = load_stack("megatron-core")
    slow = RooflineTimes(model, cluster, "bf16", stack=_with_host(stack, 1e-3))
    bare = RooflineTimes(model, cluster, "bf16", stack=_with_host(stack, 0.0))
    ops = slow.operators("transformer", 1, 1, 4096, False, "none", ep=8, moe=True)
    moe = slow.transformer(1, 1, 4096, False, "none", ep=8, moe=True)
    assert moe.forward_s == pytest.approx(host_operator_count(ops.forward) * 1e-3)
    assert moe.backward_input_s + moe.backward_weight_s == pytest.approx(host_operator_counts(ops)[1] * 1e-3)
    gpu = bare.transformer(1, 1, 4096, False, "none", ep=8, moe=True)
    assert moe.overhead_s == pytest.approx(moe.total_s - gpu.total_s)
    assert slow.transformer(1, 1, 4096, False, "none") == bare.transformer(1, 1, 4096, False, "none")


def test_megatron_core_states_its_floor_and_the_rows_it_was_fitted_on() -> None:
    """The preset's constant is fitted on published rows that the corpus prices, each flagged in sample."""
    overlap = load_stack("megatron-core").overlap
    assert overlap.moe_host_s_per_operator == pytest.approx(235e-6)
    rows = {f"{r.source_id}: {r.run}": r for r in read_published_runs() if isinstance(r, PublishedRow)}
    assert len(overlap.moe_host_fit_rows) == 2
    for name in overlap.moe_host_fit_rows:
        assert rows[name].stack_fit_row and rows[name].has_metric and rows[name].stack == "megatron-core"
    assert sum(r.stack_fit_row for r in rows.values()) == 2
    for name in ("ppplan-torch", "torchtitan", "megatron-lm-2021"):
        assert load_stack(name).overlap.moe_host_s_per_operator == 0.0
