"""Fit a stack's caching-allocator share (``StackSpec.allocator_fragmentation``) on published memory readings.

A rank's predicted memory is ``allocated x (1 + share) + outside`` (``costmodels.rank_memory.rank_memory_gib``):
``allocated`` what its tensors hold at the peak, ``outside`` what it holds outside the allocator (CUDA context,
NCCL buffers) and any heap reserve. A published reading taken with ``nvidia-smi`` sees the allocator's reserved
segments, which exceed the allocated bytes by what the caching allocator cannot reuse: blocks freed by the
activations that the optimizer step's and the gradient reduce's larger tensors do not fit in, and blocks split
between sizes (PyTorch's "Memory management" notes; ``expandable_segments`` exists since 2.1 to shrink it). That
share depends on the stack's allocation pattern, so it is fitted per stack: the value that minimises the squared
relative error of the busiest rank's prediction over the stack's ``allocator_fit_sources`` rows, every other
constant held at its shipped value. ``bench/allocator_share.py`` prints the fit, its leave-one-sweep-out
figures and the stack's rows from other sources, which the fit never sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from costmodels.communicators import outside_allocator_gib
from costmodels.rank_memory import NOT_ALLOCATED_PARTS
from planner.trust.accuracy import grouped
from planner.trust.published_runs import PublishedRow, read_published_runs
from profiles.loader import load_stack
from profiles.schema import Estimate

SHARE_GRID_STEP = 0.0005  # the fitted share's resolution
SHARE_MAX = 0.5  # above any reserved-over-allocated share reported for LLM training (10-30 %)


@dataclass(frozen=True)
class MemoryReading:
    """One published peak-memory reading and its prediction's parts, per rank: (allocated GiB, GiB the
    reading sees beside the allocator's segments)."""

    label: str
    group: str  # the sweep (or run) a leave-one-out fit leaves out together
    measured_gib: float
    ranks: tuple[tuple[float, float], ...]

    def predicted_gib(self, share: float) -> float:
        return max(allocated * (1.0 + share) + beside for allocated, beside in self.ranks)

    def under_pct(self, share: float) -> float:
        """How far the prediction falls under the reading, in % of the reading (negative: over)."""
        return (self.measured_gib - self.predicted_gib(share)) / self.measured_gib * 100.0


def reading_of(label: str, group: str, measured_gib: float, estimate: Estimate, allocator_reserved: bool) -> MemoryReading:
    """A reading of ``estimate``'s ranks: what they allocate, and what the reading counts beside the allocator
    (nothing held outside it where the source read the allocator's own reserved peak)."""
    ranks = []
    for parts in estimate.memory_breakdown_gib:
        allocated = sum(v for k, v in parts.items() if k not in NOT_ALLOCATED_PARTS)
        beside = sum(parts.get(k, 0.0) for k in NOT_ALLOCATED_PARTS if k != "fragmentation")
        if allocator_reserved:
            beside -= outside_allocator_gib(parts)
        ranks.append((allocated, beside))
    return MemoryReading(label, group, measured_gib, tuple(ranks))


def fit_share(readings: Sequence[MemoryReading]) -> float:
    """The share in [0, ``SHARE_MAX``] (steps of ``SHARE_GRID_STEP``) that minimises the summed squared
    relative error of the readings' predictions."""
    if not readings:
        raise ValueError("no memory readings to fit an allocator share on")
    shares = np.arange(0.0, SHARE_MAX + SHARE_GRID_STEP / 2, SHARE_GRID_STEP)
    loss = np.zeros_like(shares)
    for r in readings:
        allocated = np.array([a for a, _ in r.ranks])
        beside = np.array([b for _, b in r.ranks])
        predicted = (np.outer(1.0 + shares, allocated) + beside).max(axis=1)
        loss += ((r.measured_gib - predicted) / r.measured_gib) ** 2
    return round(float(shares[int(np.argmin(loss))]), 4)


def leave_one_group_out(readings: Sequence[MemoryReading]) -> dict[str, float]:
    """Each group's share fitted on the other groups' readings (the group held out)."""
    groups = sorted({r.group for r in readings})
    return {g: fit_share([r for r in readings if r.group != g]) for g in groups if any(r.group != g for r in readings)}


def under_counts(readings: Iterable[tuple[MemoryReading, float]], threshold_pct: float) -> tuple[int, int]:
    """(readings under-predicted by more than ``threshold_pct``, readings) at each one's share."""
    errors = [r.under_pct(share) for r, share in readings]
    return sum(e > threshold_pct for e in errors), len(errors)


def row_reading(row: PublishedRow, estimate: Estimate) -> MemoryReading:
    """A published row's peak-memory reading, grouped by its sweep (or alone), at ``estimate``."""
    if row.measured_peak_memory_gib is None:
        raise ValueError(f"{row.id} ({row.run}) reports no peak memory")
    if row.memory_reading == "allocated_last_rank":  # allocated bytes hold no allocator share to fit or price
        raise ValueError(f"{row.id} ({row.run}) reads the allocated peak, which no allocator share changes")
    return reading_of(f"{row.source_id}: {row.run}", row.sweep or row.run, row.measured_peak_memory_gib, estimate,
                      row.memory_is_allocator_reserved)


def heldout_memory_gib(rows: Sequence[PublishedRow], estimates: dict[str, Estimate]) -> dict[str, float]:
    """Each row an allocator share was fitted on (``PublishedRow.allocator_fit_row``), priced at its stack's share
    fitted without the row's sweep: {row id: predicted GiB as its source read it}. A row whose sweep holds all of its
    stack's readings (a CSV of one sweep) has nothing to be held out against and is left out: it keeps the stack's
    shipped share."""
    out: dict[str, float] = {}
    fitted = [row for row in rows if row.allocator_fit_row and not row.oom]
    for members in grouped(fitted, lambda row: row.stack_spec.name).values():
        readings = {row.id: row_reading(row, estimates[row.id]) for row in members}
        shares = leave_one_group_out(list(readings.values()))
        for row_id, reading in readings.items():
            if reading.group in shares:
                out[row_id] = reading.predicted_gib(shares[reading.group])
    return out


def stack_readings(stack: str, estimate_of: Callable[[PublishedRow], Estimate]) -> tuple[list[MemoryReading], list[MemoryReading]]:
    """The corpus's peak-memory readings of runs priced on ``stack`` (out-of-memory rows left out), each at
    ``estimate_of(row)``: (those of its ``allocator_fit_sources``, those of its other sources)."""
    fit_sources = load_stack(stack).allocator_fit_sources
    fit, held_out = [], []
    for row in read_published_runs():
        if (not isinstance(row, PublishedRow) or row.stack_spec.name != stack or row.oom or row.measured_peak_memory_gib is None
                or row.memory_reading == "allocated_last_rank"):  # an allocated peak holds no allocator share
            continue
        (fit if row.source_id in fit_sources else held_out).append(row_reading(row, estimate_of(row)))
    return fit, held_out
