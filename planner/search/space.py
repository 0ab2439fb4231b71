"""The search space: every (tp, pp, dp, mbs, M, v, schedule, recompute, sp, zero)
the runtime rules accept (``costmodels.rules``), in a canonical order."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from costmodels.rules import recompute_violations, schedule_violations, size_violations, tp_violations, zero_violations
from costmodels.schedules.registry import schedule_spec
from profiles.loader import load_stack
from profiles.schema import ModelSpec, TrainSpec
from profiles.stack_schema import StackSpec

DEFAULT_SCHEDULES: tuple[str, ...] = (
    "1f1b", "interleaved-1f1b", "gpipe", "looped-bfs", "zb-h1", "zb-h2", "interleaved-zb", "zbv", "dualpipev",
)
# ZeRO-2 is not searched: on the torch runtime gradients accumulate unsharded across
# microbatches (costmodels.memory.static_memory), so it costs exactly what ZeRO-1 does.
SEARCHED_ZERO: tuple[int, ...] = (0, 1, 3)
RECOMPUTE_KINDS: tuple[str, ...] = ("none", "selective", "full")
# Caps of the enumerated space. Megatron-LM's SC21 paper sweeps microbatch sizes 1-16 (Narayanan
# et al. 2021, Sec. 5.5, Fig. 16) and larger ones only grow activation memory once s·b saturates
# the GEMMs; v beyond 8 adds a p2p hop per stage for a bubble already below (P-1)/(8M).
# Measured: with MAX_MBS = 64 and MAX_V = 16 none of the 14 `ppplan regress` picks changes
# (2026-12-02; gpt3-18b's pick sits at mbs 16 because its 16 sequences per replica allow no more).
MAX_MBS = 16
MAX_V = 8


@dataclass(frozen=True, order=True)
class Candidate:
    """One point of the space, before cut points are chosen. Field order is the canonical
    tie-break order (smaller degrees, then cheaper options, first)."""

    tp: int
    pp: int
    dp: int
    mbs: int
    v: int
    schedule: str
    recompute: str
    sequence_parallel: bool
    zero: int
    num_microbatches: int

    def label(self) -> str:
        sp = "+sp" if self.sequence_parallel else ""
        return (f"tp={self.tp}{sp} pp={self.pp} dp={self.dp} mbs={self.mbs} M={self.num_microbatches} "
                f"v={self.v} {self.schedule} recompute={self.recompute} zero={self.zero}")


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` in increasing order, in O(sqrt(n)) (n is up to 2^30 sequences)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def tp_degrees(model: ModelSpec, gpus: int, gpus_per_node: int, allow_cross_node_tp: bool) -> list[int]:
    """TP degrees dividing the GPUs, heads, kv-heads and FFN; inside a node unless asked."""
    limit = gpus if allow_cross_node_tp else min(gpus, gpus_per_node)
    return [t for t in divisors(gpus) if t <= limit and not tp_violations(model, t)]


def _v_options(schedule: str, pp: int, num_layers: int, stack: StackSpec) -> list[int]:
    if pp == 1:
        return [1] if schedule == "1f1b" else []
    stages_per_rank = schedule_spec(schedule).stages_per_rank
    if stages_per_rank == "looped":
        return [v for v in range(2, min(MAX_V, stack.max_virtual_stages) + 1) if pp * v <= num_layers]
    if stages_per_rank == "two":
        return [2] if 2 * pp <= num_layers else []
    return [1]


def enumerate_candidates(
    model: ModelSpec,
    train: TrainSpec,
    gpus: int,
    gpus_per_node: int,
    schedules: tuple[str, ...] = DEFAULT_SCHEDULES,
    allow_cross_node_tp: bool = False,
    stack: StackSpec | None = None,
) -> Iterator[Candidate]:
    """All legal candidates under ``stack``'s rules (default: ppplan's runtime, ``ppplan-torch``)."""
    stack = stack or load_stack()
    schedules = tuple(s for s in schedules if s in stack.schedules)
    for tp in tp_degrees(model, gpus, gpus_per_node, allow_cross_node_tp):
        for pp in divisors(gpus // tp):
            if pp > model.num_layers:
                continue
            dp = gpus // (tp * pp)
            if train.global_batch % dp:
                continue
            for mbs in divisors(train.global_batch // dp):
                if mbs > MAX_MBS:
                    break
                m = train.global_batch // (dp * mbs)
                if size_violations(pp, m):
                    continue  # far more microbatches than any plan runs (profiles/limits.py)
                yield from _pipeline_options(model, tp, pp, dp, mbs, m, schedules, stack)


def _pipeline_options(
    model: ModelSpec, tp: int, pp: int, dp: int, mbs: int, m: int, schedules: tuple[str, ...], stack: StackSpec
) -> Iterator[Candidate]:
    sp_options = (False, True) if tp > 1 and stack.sequence_parallel else (False,)
    zero_options = tuple(z for z in SEARCHED_ZERO if z in stack.zero) if dp > 1 else (0,)
    for schedule in schedules:
        for v in _v_options(schedule, pp, model.num_layers, stack):
            if (pp > 1 and schedule_violations(schedule, pp, v, m, stack)) or size_violations(pp * v, m):
                continue
            if stack.cut_layouts == "uniform" and model.num_layers % (pp * v):
                continue
            for recompute in RECOMPUTE_KINDS:
                if recompute_violations(recompute, pp, schedule, stack):
                    continue
                for sp in sp_options:
                    for zero in zero_options:
                        if not zero_violations(zero, pp, schedule, stack):
                            yield Candidate(tp, pp, dp, mbs, v, schedule, recompute, sp, zero, m)
