"""Chimera (Li & Hoefler, SC'21): two pipelines in opposite directions on the same ranks.

Every rank holds two replicas: stage ``r`` of the down pipeline and stage
``pp - 1 - r`` of the up pipeline (so the model needs two weight copies per
rank; the memory model must count them). Even microbatches go down, odd ones
go up. Stage indices in the actions are model stages (``v = 1``); which replica
ran an action is the rank whose list holds it.

The order is Chimera's: at unit costs (F = 1, full backward = 2, the paper's
assumption) each free rank starts the ready full backward of the oldest
microbatch, else the ready forward of the oldest microbatch while it holds
fewer than ``pp`` microbatches (1F1B's peak). For ``M = pp`` this is the
paper's basic unit (Fig. 3); for more microbatches the next units start as
soon as the cap allows (the paper's direct concatenation with the gaps filled).
Simulated only: no runtime executes two replicas per rank yet.
"""

from __future__ import annotations

import heapq
from collections import deque

from costmodels.schedules.actions import FORWARD, FULL_BACKWARD, Action

UNIT_COST = {FORWARD: 1, FULL_BACKWARD: 2}


def chimera_rank_of(stage: int, microbatch: int, pp: int) -> int:
    """Rank running ``stage`` for ``microbatch``: down pipeline for even microbatches."""
    return stage if microbatch % 2 == 0 else pp - 1 - stage


def _forward_ready(action: Action, done_at: dict[tuple[int, int], int], now: int) -> bool:
    """Whether a forward's input (the previous stage's forward of its microbatch) is there at ``now``."""
    return action.stage == 0 or done_at.get((action.microbatch, action.stage - 1), now + 1) <= now


def _pick(queues: tuple[deque[Action], deque[Action]], ready_b: list[tuple[int, int]], held: int,
          forward_done_at: dict[tuple[int, int], int], pp: int, now: int) -> Action | None:
    """Oldest ready backward, else the oldest ready forward at the head of either replica's
    queue while the rank holds fewer than ``pp`` microbatches, else None."""
    if ready_b:
        microbatch, stage = heapq.heappop(ready_b)
        return Action(FULL_BACKWARD, microbatch, stage)
    if held < pp:
        heads = [q[0] for q in queues if q and _forward_ready(q[0], forward_done_at, now)]
        if heads:
            return min(heads, key=lambda a: (a.microbatch, a.stage))
    return None


def chimera_ranks(pp: int, num_microbatches: int) -> list[list[Action]]:
    """Per-rank orders of bidirectional Chimera for ``pp`` ranks and ``num_microbatches``.

    Event-driven: a full backward joins its rank's ready heap (oldest microbatch first) when its input is there
    (the next stage's backward, or its own forward on the last stage), so each tick costs O(log) per rank, not a
    scan of every pending backward (which made ``pp`` = 1,000 take minutes)."""
    queues = [(deque(), deque()) for _ in range(pp)]  # per rank: down and up replica forwards
    for mb in range(num_microbatches):
        for stage in range(pp):
            queues[chimera_rank_of(stage, mb, pp)][mb % 2].append(Action(FORWARD, mb, stage))
    ready_b: list[list[tuple[int, int]]] = [[] for _ in range(pp)]  # per rank: (microbatch, stage) heap
    arriving: list[tuple[int, int, int]] = []  # (ready time, microbatch, stage) of backwards whose input is on its way
    orders: list[list[Action]] = [[] for _ in range(pp)]
    held, free_at = [0] * pp, [0] * pp
    forward_done_at: dict[tuple[int, int], int] = {}
    remaining, now = 2 * pp * num_microbatches, 0
    while remaining:
        while arriving and arriving[0][0] <= now:
            _, mb, stage = heapq.heappop(arriving)
            heapq.heappush(ready_b[chimera_rank_of(stage, mb, pp)], (mb, stage))
        for rank in range(pp):
            if free_at[rank] > now:
                continue
            action = _pick(queues[rank], ready_b[rank], held[rank], forward_done_at, pp, now)
            if action is None:
                continue
            orders[rank].append(action)
            remaining -= 1
            free_at[rank] = done = now + UNIT_COST[action.kind]
            mb, stage = action.microbatch, action.stage
            if action.kind == FORWARD:
                queues[rank][mb % 2].popleft()
                forward_done_at[(mb, stage)] = done
                held[rank] += 1
                if stage == pp - 1:  # the last stage's backward needs only its own forward
                    heapq.heappush(arriving, (done, mb, stage))
            else:
                held[rank] -= 1
                if stage > 0:  # the previous stage's backward needs this one's input gradient
                    heapq.heappush(arriving, (done, mb, stage - 1))
        now += 1
    return orders
