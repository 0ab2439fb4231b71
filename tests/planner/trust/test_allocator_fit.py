"""A stack's caching-allocator share (``StackSpec.allocator_fragmentation``): the fit, its use in the estimate,
and the shipped megatron-deepspeed value against BigScience's readings."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from costmodels.estimate import estimate
from costmodels.rank_memory import allocator_share
from planner.trust.allocator_fit import (
    MemoryReading,
    fit_share,
    heldout_memory_gib,
    leave_one_group_out,
    reading_of,
    row_reading,
    stack_readings,
    under_counts,
)
from planner.trust.published_runs import PublishedRow, read_published_runs
from planner.trust.validation import _apriori_estimate
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ParallelConfig, TrainSpec

UNDER_TARGET_PCT = 5.0


def _reading(measured: float, *ranks: tuple[float, float], group: str = "g") -> MemoryReading:
    return MemoryReading("row", group, measured, tuple(ranks))


def test_fit_recovers_the_share_the_readings_were_made_with() -> None:
    # 10 GiB allocated, 2 beside: 10 x 1.15 + 2 = 13.5; 20 x 1.15 + 1 = 24
    readings = [_reading(13.5, (10.0, 2.0)), _reading(24.0, (20.0, 1.0))]
    assert fit_share(readings) == pytest.approx(0.15)
    assert readings[0].under_pct(0.15) == pytest.approx(0.0)
    assert readings[0].under_pct(0.0) == pytest.approx((13.5 - 12.0) / 13.5 * 100)


def test_the_busiest_rank_is_the_prediction() -> None:
    reading = _reading(20.0, (10.0, 2.0), (5.0, 10.0))
    assert reading.predicted_gib(0.2) == pytest.approx(max(10 * 1.2 + 2, 5 * 1.2 + 10))  # 16.0
    assert reading.predicted_gib(0.0) == pytest.approx(15.0)  # the other rank is busiest without a share


def test_fit_minimises_the_squared_relative_error() -> None:
    # one reading wants 0.1 (12 = 10 x 1.1 + 1), the other 0.3 (14 = 10 x 1.3 + 1): the least-squares
    # share weighs each by 1/measured^2, so it lies nearer the smaller reading's 0.1
    a, b = _reading(12.0, (10.0, 1.0)), _reading(14.0, (10.0, 1.0))
    share = fit_share([a, b])
    expected = 1 / (10 / 12**2 + 10 / 14**2) * ((12 - 11) / 12**2 + (14 - 11) / 14**2)  # d/ds of the loss = 0
    assert share == pytest.approx(expected, abs=5e-4)
    assert 0.1 < share < 0.2


def test_leave_one_group_out_fits_each_group_on_the_others() -> None:
    readings = [_reading(13.5, (10.0, 2.0), group="a"), _reading(13.0, (10.0, 2.0), group="b")]
    assert leave_one_group_out(readings) == {"a": pytest.approx(0.1), "b": pytest.approx(0.15)}
    assert under_counts([(readings[0], 0.0), (readings[1], 0.1)], 5.0) == (1, 2)


def test_no_readings_is_an_error() -> None:
    with pytest.raises(ValueError, match="no memory readings"):
        fit_share([])


def test_a_reading_splits_each_rank_into_allocated_and_what_the_reader_sees_beside() -> None:
    parts = {"weights": 4.0, "activations": 6.0, "fragmentation": 0.8, "runtime_reserved": 1.5, "nccl_buffers": 2.0}
    est = SimpleNamespace(memory_breakdown_gib=[parts])
    assert reading_of("r", "g", 14.0, est, allocator_reserved=False).ranks == ((10.0, 3.5),)
    # a reading of the allocator's own reserved peak sees nothing outside it
    assert reading_of("r", "g", 14.0, est, allocator_reserved=True).ranks == ((10.0, 0.0),)


def test_the_estimate_takes_the_stacks_share_on_gpus_and_the_clusters_on_cpus() -> None:
    model = load_model("tiny-gpt")
    train = TrainSpec(global_batch=4, seq_len=model.seq_len, precision="bf16")
    cfg = ParallelConfig(stack="megatron-lm-2021", tp=1, pp=2, dp=1, v=1, mbs=1, num_microbatches=4, schedule="1f1b",
                         recompute="full", stage_layers=[model.num_layers // 2] * 2)
    gpu = load_cluster("dgx-a100-80g")
    plain, shared = load_stack("megatron-lm-2021"), load_stack("megatron-lm-2021").with_changes({"allocator_fragmentation": 0.25})
    assert plain.allocator_fragmentation is None and allocator_share(gpu, plain) == gpu.allocator_fragmentation == 0.08
    assert allocator_share(gpu, shared) == 0.25
    parts = estimate(model, gpu, train, cfg, stack=shared).memory_breakdown_gib[0]
    allocated = sum(v for k, v in parts.items() if k not in ("fragmentation", "runtime_reserved", "nccl_buffers"))
    assert parts["fragmentation"] == pytest.approx(0.25 * allocated, rel=1e-9)
    cpu = load_cluster("cpu-local")
    assert allocator_share(cpu, shared) == cpu.allocator_fragmentation  # glibc's heap, whatever the stack


def test_megatron_deepspeed_ships_the_share_its_readings_fit() -> None:
    """The preset's share is the least-squares fit on BigScience's 69 tr11 nvidia-smi readings; the five tr8-104B
    (V100) readings it never saw stay within the issue's 5 % under-prediction."""
    fit, held_out = stack_readings("megatron-deepspeed", _apriori_estimate)
    assert len(fit) == 69 and len(held_out) == 5
    share = load_stack("megatron-deepspeed").allocator_fragmentation
    assert share == fit_share(fit) == pytest.approx(0.1655)
    assert under_counts(((r, share) for r in fit), UNDER_TARGET_PCT) == (7, 69)  # 48 at the clusters' 8 %
    assert under_counts(((r, 0.08) for r in fit), UNDER_TARGET_PCT) == (48, 69)
    assert max(r.under_pct(share) for r in held_out) <= UNDER_TARGET_PCT


def test_torchtitan_ships_the_share_fitted_on_its_own_report() -> None:
    """torchtitan's December 2024 report reads max_reserved: 18 readings fit 0.143, which leaves 1 of them under by
    more than 5 % in sample (13 at the clusters' 8 %) and 1 with each sweep at the share fitted without it; Trainy's
    two H200 readings, held out, come within 5 %. (0.149 while Llama 3's output layer was priced tied to its
    embedding; 0.1595, 3 and 2 before its sequence-parallel layers kept their gathered inputs,
    ``StackKernels.sequence_parallel_keeps_gathered_inputs``.)"""
    fit, held_out = stack_readings("torchtitan", _apriori_estimate)
    assert len(fit) == 18 and len(held_out) == 2
    share = load_stack("torchtitan").allocator_fragmentation
    assert share == fit_share(fit) == pytest.approx(0.143)
    assert under_counts(((r, share) for r in fit), UNDER_TARGET_PCT) == (1, 18)
    assert under_counts(((r, 0.08) for r in fit), UNDER_TARGET_PCT) == (13, 18)
    assert max(abs(r.under_pct(share)) for r in held_out) <= UNDER_TARGET_PCT
    loso = leave_one_group_out(fit)  # each sweep at the share fitted without it, as validate prices them
    assert (min(loso.values()), max(loso.values())) == pytest.approx((0.1375, 0.1575))
    assert under_counts(((r, loso[r.group]) for r in fit), UNDER_TARGET_PCT) == (1, 18)


def test_validate_prices_each_fitted_reading_at_the_share_fitted_without_its_sweep() -> None:
    rows = [r for r in read_published_runs() if isinstance(r, PublishedRow) and r.allocator_fit_row and not r.oom]
    estimates = {r.id: _apriori_estimate(r) for r in rows}
    memory = heldout_memory_gib(rows, estimates)
    assert len(memory) == len(rows) == 69 + 18  # megatron-deepspeed's tr11 readings, torchtitan's Dec 2024 report
    assert sum(r.stack_spec.name == "torchtitan" for r in rows) == 18
    sweep = "bigscience-tr11_h14336_L72_fp16"  # 31 of the 69 readings: its share moves most when it is left out
    deepspeed = [r for r in rows if r.stack_spec.name == "megatron-deepspeed"]  # each stack's share is its own
    others = fit_share([row_reading(r, estimates[r.id]) for r in deepspeed if r.sweep != sweep])
    assert others == pytest.approx(0.177)
    for row in (r for r in rows if r.sweep == sweep):
        assert memory[row.id] == pytest.approx(row_reading(row, estimates[row.id]).predicted_gib(others))


def test_an_allocated_peak_holds_no_allocator_share() -> None:
    """Megatron-LM's allocated peaks (``memory_reading`` allocated_last_rank) count no cached bytes: no share is
    fitted on them or prices them; megatron-core's only readings are those, so it has no allocator reading."""
    rows = [r for r in read_published_runs() if isinstance(r, PublishedRow) and r.memory_reading == "allocated_last_rank"]
    assert len(rows) == 6 and {r.stack for r in rows} == {"megatron-core"}
    with pytest.raises(ValueError, match="allocated peak"):
        row_reading(rows[0], _apriori_estimate(rows[0]))
    assert stack_readings("megatron-core", _apriori_estimate) == ([], [])


def test_a_sweep_with_no_other_reading_of_its_stack_keeps_the_shipped_share() -> None:
    """A CSV holding one sweep's readings (a user's own runs): nothing to hold the sweep out against, so its rows
    are left out of the held-out prices (validate keeps their a-priori peak, at the stack's shipped share) instead
    of failing; each of two sweeps is priced at the other's share."""
    rows = [r for r in read_published_runs() if isinstance(r, PublishedRow) and r.allocator_fit_row and not r.oom]
    one = [r for r in rows if r.sweep == "bigscience-tr11_h14336_L72_fp16"][:2]
    estimates = {r.id: _apriori_estimate(r) for r in rows}
    assert heldout_memory_gib(one, estimates) == {}
    other = next(r for r in rows if r.sweep == "bigscience-tr11_h13824_L78_fp16")
    two = heldout_memory_gib([one[0], other], estimates)
    share_of_other = fit_share([row_reading(other, estimates[other.id])])
    assert two[one[0].id] == pytest.approx(row_reading(one[0], estimates[one[0].id]).predicted_gib(share_of_other))
