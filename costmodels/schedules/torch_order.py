"""Generators for the schedules torch 2.13's ``torch.distributed.pipelining`` runs.

Each function returns rank ``rank``'s compute order, the same sequence torch's
``pipeline_order[rank]`` holds once its idle slots (``None``) and ``REDUCE_GRAD``
markers are dropped and DualPipeV's ``OVERLAP_F_B`` pairs are flattened into
their two sub-actions (torch's runtime runs those one after the other).
``tests/costmodels/test_schedule_torch_order.py`` checks the equality over a
grid of (pp, v, M); the rules each schedule needs live in ``costmodels.rules``.
"""

from __future__ import annotations

from collections import defaultdict, deque

from costmodels.schedules.actions import (
    BACKWARD_INPUT,
    BACKWARD_WEIGHT,
    FORWARD,
    FULL_BACKWARD,
    Action,
)


def gpipe_rank(rank: int, pp: int, num_microbatches: int) -> list[Action]:
    """GPipe (Huang et al. 2019): all forwards, then all full backwards, both in microbatch order."""
    m = num_microbatches
    return [Action(FORWARD, i, rank) for i in range(m)] + [Action(FULL_BACKWARD, i, rank) for i in range(m)]


def gpipe_peak_inflight(rank: int, pp: int, v: int, num_microbatches: int) -> int:
    """GPipe holds every microbatch before its first backward."""
    return num_microbatches


def one_f_one_b_rank(rank: int, pp: int, num_microbatches: int) -> list[Action]:
    """1F1B (Narayanan et al. 2019, PipeDream-Flush): ``pp - rank`` warm-up forwards,
    then alternate one full backward and one forward, then drain the backwards."""
    m = num_microbatches
    warmup = min(m, pp - rank)
    order = [Action(FORWARD, i, rank) for i in range(warmup)]
    for i in range(m - warmup):
        order += [Action(FULL_BACKWARD, i, rank), Action(FORWARD, warmup + i, rank)]
    order += [Action(FULL_BACKWARD, i, rank) for i in range(m - warmup, m)]
    return order


def one_f_one_b_peak_inflight(rank: int, pp: int, v: int, num_microbatches: int) -> int:
    """1F1B's warm-up count: each steady step runs its backward before the next forward."""
    return min(pp - rank, num_microbatches)


def looped_bfs_rank(rank: int, pp: int, v: int, num_microbatches: int) -> list[Action]:
    """Breadth-first looping (Lamy-Poirier 2022): every microbatch through local stage 0,
    then local stage 1, ...; backwards from the last local stage, microbatches in reverse."""
    stages = range(rank, pp * v, pp)
    order = [Action(FORWARD, i, s) for s in stages for i in range(num_microbatches)]
    order += [Action(FULL_BACKWARD, i, s) for s in reversed(stages) for i in reversed(range(num_microbatches))]
    return order


def looped_bfs_peak_inflight(rank: int, pp: int, v: int, num_microbatches: int) -> int:
    """Breadth-first: every microbatch of every local stage before the first backward."""
    return num_microbatches * v


def _round_size(pp: int, num_microbatches: int) -> int:
    """Microbatches per round of torch's flexible interleaved rounds."""
    return num_microbatches // max(1, num_microbatches // pp)


def _interleaved_warmup(rank: int, pp: int, v: int, num_microbatches: int, zero_bubble: bool,
                        extra_warmup: int = 0) -> int:
    """Warm-up forwards of the depth-first looped schedules (torch ``_get_warmup_ops``): the last
    rank runs ``(v - 1) * per_round``; each hop towards rank 0 adds two (one with ``zero_bubble``);
    ``extra_warmup`` more (``interleaved_rank``); never more than all M·v forwards."""
    factor = 1 if zero_bubble else 2
    total = num_microbatches * v
    return min(min((v - 1) * _round_size(pp, num_microbatches) + factor * (pp - 1 - rank), total) + extra_warmup,
               total)


def interleaved_rank(rank: int, pp: int, v: int, num_microbatches: int, zero_bubble: bool,
                     extra_warmup: int = 0) -> list[Action]:
    """Interleaved 1F1B (Narayanan et al. SC21, Sec. 2.2, torch's flexible rounds) or, with
    ``zero_bubble``, torch's interleaved ZB-1P variant (Qi et al. 2024): B and W split,
    one warm-up forward per hop instead of two, and each rank ``r`` lags its W passes by
    ``r`` backwards so that they fill the cool-down bubble. ``extra_warmup`` more warm-up forwards:
    Megatron-Core's combined 1F1B runs one, so that every steady forward is independent of the
    backward it is merged with (``schedules.py get_pp_rank_microbatches`` @23e00ed0)."""
    m = num_microbatches
    per_round = _round_size(pp, m)
    warmup = _interleaved_warmup(rank, pp, v, m, zero_bubble, extra_warmup)
    total_forwards = m * v
    backward_kind = BACKWARD_INPUT if zero_bubble else FULL_BACKWARD
    next_mb: dict[tuple[str, int], int] = defaultdict(int)
    pending_w: deque[int] = deque()
    order: list[Action] = []

    def take(kind: str, stage: int) -> Action:
        mb = next_mb[(kind, stage)]
        next_mb[(kind, stage)] = mb + 1
        return Action(kind, mb, stage)

    def fwd_stage(step: int) -> int:
        return ((step // per_round) % v) * pp + rank

    def bwd_stage(step: int) -> int:
        return (v - 1 - ((step - warmup) // per_round) % v) * pp + rank

    for step in range(total_forwards + warmup):
        if step < total_forwards:
            order.append(take(FORWARD, fwd_stage(step)))
        if step < warmup:
            continue
        order.append(take(backward_kind, bwd_stage(step)))
        pending_w.append(bwd_stage(step))
        if zero_bubble and step - warmup >= rank:
            order.append(take(BACKWARD_WEIGHT, pending_w.popleft()))
    while zero_bubble and pending_w:
        order.append(take(BACKWARD_WEIGHT, pending_w.popleft()))
    return order


def combined_paired_share(pp: int, v: int, num_microbatches: int) -> float:
    """Share of rank 0's forwards (and as many backwards) that Megatron-Core's combined 1F1B runs merged
    with a partner: all but its warm-up forwards and as many cool-down backwards, which run alone
    (``interleaved_rank`` with one extra warm-up forward). Rank 0 warms up longest, so every rank's
    merged share is at least this."""
    total = num_microbatches * v
    return (total - _interleaved_warmup(0, pp, v, num_microbatches, zero_bubble=False, extra_warmup=1)) / total


def interleaved_peak_inflight(rank: int, pp: int, v: int, num_microbatches: int, zero_bubble: bool,
                              extra_warmup: int = 0) -> int:
    """Microbatch-stages ``interleaved_rank`` holds at its peak: the warm-up forwards, plus the
    first steady forward (which runs before that step's backward), plus, with ``zero_bubble``,
    the ``rank`` W passes the rank lags behind its B passes; never more than all M·v forwards."""
    warmup = _interleaved_warmup(rank, pp, v, num_microbatches, zero_bubble, extra_warmup)
    return min(warmup + 1 + (rank if zero_bubble else 0), num_microbatches * v)


def zbv_rank(rank: int, pp: int, num_microbatches: int) -> list[Action]:
    """ZB-V (Qi et al. 2024, Sec. 6; torch ``ScheduleZBVZeroBubble``): two stages per rank in
    V placement, chunk 0 = stage ``rank`` and chunk 1 = stage ``2 pp - 1 - rank``.

    Built for ``max(2 pp - 1, M)`` microbatches, then the padding microbatches are dropped,
    exactly as torch does."""
    n = max(2 * pp - 1, num_microbatches)
    s0, s1 = rank, 2 * pp - 1 - rank
    count = {key: 0 for key in ("f0", "f1", "b0", "b1")}
    order: list[Action] = []

    def put(kind: str, stage: int, key: str, advance: bool = True) -> None:
        order.append(Action(kind, count[key], stage))
        count[key] += advance

    for _ in range(2 * (pp - rank) - 1):
        put(FORWARD, s0, "f0")
    for _ in range(rank):
        put(FORWARD, s1, "f1")
        put(FORWARD, s0, "f0")
    for _ in range(pp - rank):
        put(FORWARD, s1, "f1")
        put(BACKWARD_INPUT, s1, "b1", advance=False)
        put(BACKWARD_WEIGHT, s1, "b1")
    while count["f1"] < count["f0"] or count["f0"] < n:
        if count["f0"] < n:
            put(FORWARD, s0, "f0")
        put(BACKWARD_INPUT, s0, "b0", advance=False)
        put(BACKWARD_WEIGHT, s0, "b0")
        put(FORWARD, s1, "f1")
        put(BACKWARD_INPUT, s1, "b1", advance=False)
        put(BACKWARD_WEIGHT, s1, "b1")
    _zbv_cooldown(rank, pp, s0, s1, count, put)
    return [a for a in order if a.microbatch < num_microbatches]


def zbv_peak_inflight(rank: int, pp: int, v: int, num_microbatches: int) -> int:
    """ZB-V's peak: ``2 pp`` once the V is full (the paper's 2p M_B, Qi et al. 2024, Sec. 6);
    with fewer microbatches, the ``M + 1 + rank`` chunk passes alive when the first W runs,
    and never more than both chunks of every microbatch (2 M)."""
    m = num_microbatches
    return min(2 * m, m + 1 + rank, 2 * pp)


def _zbv_cooldown(rank: int, pp: int, s0: int, s1: int, count: dict[str, int], put) -> None:
    """ZB-V cool-down: B passes first, the deferred W passes of chunk 1 then chunk 0 last."""
    count["w0"], count["w1"] = count["b0"], count["b1"]
    for _ in range(rank):
        put(BACKWARD_INPUT, s0, "b0")
        put(BACKWARD_INPUT, s1, "b1")
    for _ in range(pp - rank):
        put(BACKWARD_INPUT, s0, "b0")
        put(BACKWARD_WEIGHT, s0, "w0")
    while count["w1"] < count["b1"]:
        put(BACKWARD_WEIGHT, s1, "w1")
    while count["w0"] < count["b0"]:
        put(BACKWARD_WEIGHT, s0, "w0")


class _DualPipeVOrder:
    """Builds one rank's DualPipeV order (torch ``ScheduleDualPipeV``, after DeepSeek-AI's
    DualPipe, DeepSeek-V3 report Sec. 3.2.1): per-(stage, kind) microbatch counters and a
    FIFO of deferred W passes. A full backward takes the next B index and retires a W index."""

    def __init__(self, rank: int, pp: int) -> None:
        self.s0, self.s1 = rank, 2 * pp - 1 - rank
        self.next_mb: dict[tuple[str, int], int] = defaultdict(int)
        self.pending_w: deque[tuple[int, int]] = deque()
        self.order: list[Action] = []

    def add(self, kind: str, stage: int) -> None:
        key = (BACKWARD_INPUT if kind == FULL_BACKWARD else kind, stage)
        mb = self.next_mb[key]
        self.next_mb[key] = mb + 1
        self.order.append(Action(kind, mb, stage))
        if kind == BACKWARD_INPUT:
            self.pending_w.append((stage, mb))

    def overlap(self, forward_stage: int, backward_stage: int) -> None:
        """torch's OVERLAP_F_B pair, run as its two sub-actions in order."""
        self.add(FORWARD, forward_stage)
        self.add(FULL_BACKWARD, backward_stage)

    def weight_if_pending(self) -> None:
        if self.pending_w:
            stage, mb = self.pending_w.popleft()
            self.order.append(Action(BACKWARD_WEIGHT, mb, stage))


def dualpipev_rank(rank: int, pp: int, num_microbatches: int) -> list[Action]:
    """DualPipeV's eight phases for rank ``rank`` (two stages per rank in V placement)."""
    o = _DualPipeVOrder(rank, pp)
    s0, s1 = o.s0, o.s1
    for _ in range((pp - rank - 1) * 2):
        o.add(FORWARD, s0)
    for _ in range(rank + 1):
        o.add(FORWARD, s0)
        o.add(FORWARD, s1)
    for _ in range(pp - rank - 1):
        o.add(BACKWARD_INPUT, s1)
        o.weight_if_pending()
        o.add(FORWARD, s1)
    for i in range(num_microbatches - 2 * pp + rank + 1):
        if i == 0 and rank == pp - 1:
            o.add(FORWARD, s0)
            o.add(FULL_BACKWARD, s1)
        else:
            o.overlap(s0, s1)
        o.overlap(s1, s0)
    for _ in range(pp - rank - 1):
        o.add(FULL_BACKWARD, s1)
        o.overlap(s1, s0)
    split = _dualpipev_tail(o, rank)
    for _ in range(pp - rank - 1):
        o.weight_if_pending()
        o.add(BACKWARD_INPUT if split else FULL_BACKWARD, s0)
    for _ in range(rank + 1):
        o.weight_if_pending()
    return o.order


def dualpipev_peak_inflight(rank: int, pp: int, v: int, num_microbatches: int) -> int:
    """DualPipeV's peak on every rank: ``2 pp + 1`` chunk passes (the schedule needs M >= 2 pp)."""
    return 2 * pp + 1


def _dualpipev_tail(o: _DualPipeVOrder, rank: int) -> bool:
    """Phase 6: ``rank + 1`` (B1, B0) pairs, switching to split B/W half way; returns
    whether the split is on for the phases after it."""
    steps = rank + 1
    split = False
    for i in range(steps):
        if i == steps // 2 and rank % 2 == 1:
            split = True
        o.add(BACKWARD_INPUT if split else FULL_BACKWARD, o.s1)
        if i == steps // 2 and rank % 2 == 0:
            split = True
        o.add(BACKWARD_INPUT if split else FULL_BACKWARD, o.s0)
    return split
