"""The search space: every (tp, cp, ep, etp, pp, dp, mbs, M, v, schedule, recompute, sp, zero)
the runtime rules accept (``costmodels.rules``), in a canonical order.

Context parallelism (cp > 1) where the stack runs it, the sequence splits into 2·cp chunks
(2·cp·tp on torchtitan) of at least ``MIN_CP_CHUNK`` positions, the layer times can price a
ring (not a measured profile), with micro-batch 1 (``CP_MICRO_BATCH``); expert
parallelism (ep > 1) for a mixture-of-experts model, ep dividing the experts and the dp x cp ranks
it is carved out of, with each stack's conditions (Megatron-Core: sequence parallelism with tp > 1,
no fp16; torchtitan: a sharded data-parallel mesh); where the stack folds expert TP to 1 (Megatron-Core's
parallel folding) and the layer times price it (not a measured profile), each MoE candidate with tp > 1
also as etp 1, ep then dividing the tp x dp x cp ranks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

from costmodels.layout import min_layers_for
from costmodels.rules import (
    data_parallel_violations,
    expert_overlap_violations,
    recompute_violations,
    schedule_violations,
    size_violations,
    tp_violations,
    zero_violations,
)
from costmodels.schedules.registry import schedule_spec
from profiles.loader import load_stack
from profiles.schema import SCHEDULE_NAMES, ModelSpec, TrainSpec
from profiles.stack_schema import StackSpec

DEFAULT_SCHEDULES: tuple[str, ...] = (
    "1f1b", "interleaved-1f1b", "combined-1f1b", "gpipe", "looped-bfs", "zb-h1", "zb-h2", "interleaved-zb", "zbv",
    "dualpipev",
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
# Context parallelism is for sequences too long to batch: with cp > 1 the space keeps micro-batch 1.
# Splitting b >= 2 sequences over cp ranks runs the same tokens per rank as cp/2 ranks with b/2
# sequences and twice the data parallelism, which keeps the same dp x cp gradient group, pipeline
# and tensor-parallel traffic, with fewer ring steps (Llama 3's 128k stage: CP 16, micro-batch 1,
# Dubey et al. 2024, Table 4; NeMo's long-context recipes: micro_batch_size 1).
CP_MICRO_BATCH = 1
# Each of a rank's two load-balancing chunks (seq / 2cp positions) fills at least one flash-attention
# query tile: FlashAttention-2 processes queries in blocks of 128 rows (Dao 2023, Sec. 3.3 and its
# forward kernel's kBlockM = 128 for head dim 128); the roofline prices attention without tile
# quantization, so chunks shorter than a tile are outside what it prices.
MIN_CP_CHUNK = 128


def schedule_name_problems(names: tuple[str, ...] | list[str]) -> list[str]:
    """Why ``names`` cannot be searched: an unknown name, or a schedule the search never picks (chimera is simulated
    only; custom comes from a plan's own action list). Empty when every one can."""
    problems = []
    for name in names:
        if name not in SCHEDULE_NAMES:
            problems.append(f"unknown schedule '{name}': choose from {', '.join(DEFAULT_SCHEDULES)}")
        elif name not in DEFAULT_SCHEDULES:
            problems.append(f"schedule '{name}' is not searched (chimera is simulated only; custom comes from a plan)")
    return problems


def cp_chunk_search_violations(seq_len: int, cp: int) -> list[str]:
    """Why the search leaves out ``cp`` for this sequence (chunks under ``MIN_CP_CHUNK`` positions): evaluate still
    prices it."""
    if cp > 1 and seq_len // (2 * cp) < MIN_CP_CHUNK:
        return [f"the search splits no sequence into chunks under {MIN_CP_CHUNK} positions (seq_len {seq_len} / 2cp = "
                f"{seq_len // (2 * cp)}): price cp {cp} with ppplan evaluate"]
    return []


@dataclass(frozen=True, order=True)
class Candidate:
    """One point of the space, before cut points are chosen. Field order is the canonical
    tie-break order (smaller degrees, then cheaper options, first)."""

    tp: int
    cp: int
    ep: int
    etp: int
    pp: int
    dp: int
    mbs: int
    v: int
    schedule: str
    recompute: str
    sequence_parallel: bool
    zero: int
    num_microbatches: int
    offload: int = 0  # ParallelConfig.offload_layers: priced by evaluate, never enumerated by the search
    sp_regather: bool = False  # ParallelConfig.sp_regather

    @property
    def config_etp(self) -> int | None:
        """``ParallelConfig.etp`` of this candidate: None where expert TP = tp."""
        return None if self.etp == self.tp else self.etp

    def label(self) -> str:
        sp = ("+sp(shards)" if self.sp_regather else "+sp") if self.sequence_parallel else ""
        cp = f" cp={self.cp}" if self.cp > 1 else ""
        ep = f" ep={self.ep}" if self.ep > 1 else ""
        ep += f" etp={self.etp}" if self.etp != self.tp else ""
        return (f"tp={self.tp}{sp}{cp}{ep} pp={self.pp} dp={self.dp} mbs={self.mbs} M={self.num_microbatches} "
                f"v={self.v} {self.schedule} recompute={self.recompute} zero={self.zero}"
                + (f" offload={self.offload}" if self.offload else ""))


@dataclass(frozen=True)
class DegreeFilter:
    """Degrees a user fixes (``ppplan search --tp 8 --ep 4,8 --etp 1``): each set, when given, keeps the
    candidates whose degree is in it; the search stays exact within what is left."""

    tp: frozenset[int] | None = None
    cp: frozenset[int] | None = None
    ep: frozenset[int] | None = None
    pp: frozenset[int] | None = None
    etp: frozenset[int] | None = None

    def admits(self, c: Candidate) -> bool:
        return all(getattr(c, name) in allowed for name, allowed in self.fixed())

    def fixed(self) -> list[tuple[str, frozenset[int]]]:
        return [(name, allowed) for name in ("tp", "cp", "ep", "pp", "etp")
                if (allowed := getattr(self, name)) is not None]

    def describe(self) -> str:
        return ", ".join(f"{name} in {{{', '.join(map(str, sorted(allowed)))}}}" for name, allowed in self.fixed())


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
        return [v for v in range(2, min(MAX_V, stack.max_virtual_stages) + 1) if min_layers_for(pp * v) <= num_layers]
    if stages_per_rank == "two":
        return [2] if min_layers_for(2 * pp) <= num_layers else []
    return [1]


def cp_degrees(train: TrainSpec, ranks: int, tp: int, stack: StackSpec, priced: frozenset[int] | None = None) -> list[int]:
    """Context-parallel degrees dividing ``ranks`` (the GPUs left after tp) whose 2·cp chunks split the
    sequence (2·cp·tp on a stack that shards them over tp too, ``StackSpec.cp_sequence_multiple``), of
    those the layer times can price (``priced``; None: any, e.g. the roofline; a measured profile:
    the degrees it timed)."""
    if not stack.context_parallel:
        return [1]
    multiple = 2 * tp if stack.cp_sequence_multiple == "2cp_tp" else 2
    return [c for c in divisors(ranks)
            if c == 1 or ((priced is None or c in priced)
                          and train.seq_len % (multiple * c) == 0 and not cp_chunk_search_violations(train.seq_len, c))]


def ep_degrees(model: ModelSpec, train: TrainSpec, data_ranks: int, stack: StackSpec) -> list[int]:
    """Expert-parallel degrees for ``data_ranks`` (dp x cp, or tp x dp x cp with expert TP 1) ranks: 1, and
    for a mixture-of-experts model on a stack with expert parallelism every divisor of the experts that
    divides them (not in fp16 where the stack refuses it)."""
    if not model.is_moe or not stack.expert_parallel or (train.precision == "fp16" and not stack.ep_fp16):
        return [1]
    return [e for e in divisors(model.num_experts or 1) if data_ranks % e == 0]


def expert_layouts(model: ModelSpec, train: TrainSpec, tp: int, dp: int, cp: int, stack: StackSpec,
                   folding: bool) -> list[tuple[int, int]]:
    """(ep, etp) pairs: expert TP = tp with ep out of dp x cp; and where the stack folds expert TP to 1
    and ``folding`` (the layer times price it), with tp > 1, etp 1 with ep out of tp x dp x cp
    (``costmodels.rules.expert_context_violations``)."""
    pairs = [(e, tp) for e in ep_degrees(model, train, dp * cp, stack)]
    if folding and tp > 1 and model.is_moe and stack.expert_tp_folding and not tp_violations(model, tp, 1):
        pairs += [(e, 1) for e in ep_degrees(model, train, tp * dp * cp, stack)]
    return pairs


def enumerate_candidates(
    model: ModelSpec,
    train: TrainSpec,
    gpus: int,
    gpus_per_node: int,
    schedules: tuple[str, ...] = DEFAULT_SCHEDULES,
    allow_cross_node_tp: bool = False,
    stack: StackSpec | None = None,
    cp_priced: frozenset[int] | None = None,
    expert_tp_folding: bool = True,
) -> Iterator[Candidate]:
    """All legal candidates under ``stack``'s rules (default: ppplan's runtime, ``ppplan-torch``);
    ``cp_priced`` keeps cp to the degrees the layer times price (``cp_degrees``), ``expert_tp_folding``
    says whether they price expert TP 1 (``expert_layouts``) and the combined 1F1B's merged passes."""
    stack = stack or load_stack()
    schedules = tuple(s for s in schedules if s in stack.schedules
                      and (expert_tp_folding or not schedule_spec(s).overlaps_expert_comm))
    for tp in tp_degrees(model, gpus, gpus_per_node, allow_cross_node_tp):
        for cp in cp_degrees(train, gpus // tp, tp, stack, cp_priced):
            for pp in divisors(gpus // (tp * cp)):
                if min_layers_for(pp) > model.num_layers:
                    continue
                dp = gpus // (tp * cp * pp)
                if train.global_batch % dp:
                    continue
                for ep, etp in expert_layouts(model, train, tp, dp, cp, stack, expert_tp_folding):
                    for mbs in divisors(train.global_batch // dp):
                        if mbs > (MAX_MBS if cp == 1 else CP_MICRO_BATCH):
                            break
                        m = train.global_batch // (dp * mbs)
                        if size_violations(pp, m):
                            continue  # far more microbatches than any plan runs (profiles/limits.py)
                        yield from _pipeline_options(model, Degrees(tp, cp, ep, pp, dp, etp), mbs, m, schedules, stack,
                                                     train.precision)


@dataclass(frozen=True)
class Degrees:
    tp: int
    cp: int
    ep: int
    pp: int
    dp: int
    etp: int


def _sp_options(d: Degrees, stack: StackSpec) -> tuple[bool, ...]:
    if d.tp == 1 or not stack.sequence_parallel:
        return (False,)
    if (d.ep > 1 and stack.ep_needs_sequence_parallel) or d.etp != d.tp or stack.tp_needs_sequence_parallel:
        return (True,)
    return (False, True)


def sp_regather_applies(sp: bool, recompute: str, stack: StackSpec) -> bool:
    """Whether keeping the sequence-parallel inputs as shards (``ParallelConfig.sp_regather``) makes a plan of its own:
    with sequence parallelism, on a stack that runs both (``StackKernels.sequence_parallel_regather_exposed``), and
    not under full recompute, whose layer keeps its input only either way."""
    return sp and recompute != "full" and stack.kernels.sequence_parallel_regather_exposed


def _sp_regather_options(sp: bool, recompute: str, stack: StackSpec) -> tuple[bool, ...]:
    """Whether the sequence-parallel inputs are kept gathered (False) or as shards (True), where both are plans
    (``sp_regather_applies``): the shards save memory and cost a gather in the backward, so either may be the faster
    plan that fits."""
    return (False, True) if sp_regather_applies(sp, recompute, stack) else (False,)


def _zero_options(d: Degrees, stack: StackSpec, precision: str) -> tuple[int, ...]:
    """The ZeRO stages searched at these degrees: 0 alone on one data-context rank, and none the stack's
    data-parallel rules refuse (``costmodels.rules.data_parallel_violations``)."""
    zeros: tuple[int, ...] = (0,) if d.dp * d.cp == 1 else tuple(z for z in SEARCHED_ZERO if z in stack.zero)
    if d.ep > 1 and stack.ep_folding == "fsdp_dp_cp" and d.dp > 1:
        zeros = tuple(z for z in zeros if z >= 1)
    return tuple(z for z in zeros if not data_parallel_violations(precision, d.tp, d.cp, d.pp, d.dp, z, stack))


def _pipeline_options(
    model: ModelSpec, d: Degrees, mbs: int, m: int, schedules: tuple[str, ...], stack: StackSpec, precision: str,
) -> Iterator[Candidate]:
    tp, pp, dp = d.tp, d.pp, d.dp
    sp_options, zero_options = _sp_options(d, stack), _zero_options(d, stack, precision)
    if not zero_options:
        return
    for schedule in schedules:
        for v in _v_options(schedule, pp, model.num_layers, stack):
            if (pp > 1 and schedule_violations(schedule, pp, v, m, stack)) or size_violations(pp * v, m):
                continue
            if stack.cut_layouts == "uniform" and model.num_layers % (pp * v):
                continue
            for recompute in RECOMPUTE_KINDS:
                if recompute_violations(recompute, pp, schedule, stack) or expert_overlap_violations(
                        schedule, d.ep, recompute, precision, model.mtp_layers):
                    continue
                for sp in sp_options:
                    for regather in _sp_regather_options(sp, recompute, stack):
                        for zero in zero_options:
                            if not zero_violations(zero, pp, schedule, stack):
                                yield Candidate(tp, d.cp, d.ep, d.etp, pp, dp, mbs, v, schedule, recompute, sp, zero, m,
                                                sp_regather=regather)
