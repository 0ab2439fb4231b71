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

from collections import deque

from costmodels.schedules.actions import FORWARD, FULL_BACKWARD, Action

UNIT_COST = {FORWARD: 1, FULL_BACKWARD: 2}


def chimera_rank_of(stage: int, microbatch: int, pp: int) -> int:
    """Rank running ``stage`` for ``microbatch``: down pipeline for even microbatches."""
    return stage if microbatch % 2 == 0 else pp - 1 - stage


def _ready(action: Action, done_at: dict[tuple[str, int, int], int], pp: int, now: int) -> bool:
    """Whether ``action``'s input is there at time ``now`` (unit-cost clock)."""
    kind, mb, stage = action.kind, action.microbatch, action.stage
    if kind == FORWARD:
        need = None if stage == 0 else (FORWARD, mb, stage - 1)
    else:
        need = (FORWARD, mb, stage) if stage == pp - 1 else (FULL_BACKWARD, mb, stage + 1)
    return need is None or done_at.get(need, now + 1) <= now


def _pick(
    queues: tuple[deque[Action], deque[Action]], pending_b: list[Action], held: int, done_at: dict, pp: int, now: int
) -> Action | None:
    """Oldest ready backward, else the oldest ready forward at the head of either replica's
    queue while the rank holds fewer than ``pp`` microbatches, else None."""
    ready_b = [a for a in pending_b if _ready(a, done_at, pp, now)]
    if ready_b:
        return min(ready_b, key=lambda a: (a.microbatch, a.stage))
    if held < pp:
        heads = [q[0] for q in queues if q and _ready(q[0], done_at, pp, now)]
        if heads:
            return min(heads, key=lambda a: (a.microbatch, a.stage))
    return None


def chimera_ranks(pp: int, num_microbatches: int) -> list[list[Action]]:
    """Per-rank orders of bidirectional Chimera for ``pp`` ranks and ``num_microbatches``."""
    queues = [(deque(), deque()) for _ in range(pp)]  # per rank: down and up replica forwards
    for mb in range(num_microbatches):
        for stage in range(pp):
            queues[chimera_rank_of(stage, mb, pp)][mb % 2].append(Action(FORWARD, mb, stage))
    pending_b: list[list[Action]] = [[] for _ in range(pp)]
    orders: list[list[Action]] = [[] for _ in range(pp)]
    held, free_at = [0] * pp, [0] * pp
    done_at: dict[tuple[str, int, int], int] = {}
    remaining, now = 2 * pp * num_microbatches, 0
    while remaining:
        for rank in range(pp):
            if free_at[rank] > now:
                continue
            action = _pick(queues[rank], pending_b[rank], held[rank], done_at, pp, now)
            if action is None:
                continue
            orders[rank].append(action)
            remaining -= 1
            free_at[rank] = now + UNIT_COST[action.kind]
            done_at[(action.kind, action.microbatch, action.stage)] = free_at[rank]
            if action.kind == FORWARD:
                queues[rank][action.microbatch % 2].popleft()
                pending_b[rank].append(Action(FULL_BACKWARD, action.microbatch, action.stage))
                held[rank] += 1
            else:
                pending_b[rank].remove(action)
                held[rank] -= 1
        now += 1
    return orders
