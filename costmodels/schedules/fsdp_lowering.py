"""The UNSHARD and RESHARD actions torch's pipeline runtime adds for FSDP-wrapped stages.

torch 2.13's ``_PipelineScheduleRuntime`` lowers every compute-only action list it runs (its own
multi-stage schedules and a loaded CSV alike) through ``_add_unshard_reshard``
(``torch/distributed/pipelining/schedules.py``, ``max_active_stages=3``): before each action it looks
ahead to the next three distinct stages of the rank's list (the action's own first), reshards every
unsharded stage not among them and unshards those of them that are not. A stage whose parameters are
resharded and needed again is unsharded again: FSDP2's ``unshard`` all-gathers its parameters
(``FSDPModule.unshard(async_op=True)``, waited for by the stage's next action) and ``reshard`` frees the
unsharded copy. A rank of at most three stages unshards each once per step; interleaved lists of more
stages per rank evict and gather again as they cycle through them.

At ZeRO 3 FSDP2 also gathers on its own: its pre-forward and pre-backward hooks gather a stage whose
parameters are resharded, and it reshards after each forward (``reshard_after_forward=True``, as ppplan's
runtime and its torchtitan configs run ZeRO 3), never after a backward (the pipeline stage sets
``set_reshard_after_backward(False)`` until its REDUCE_GRAD). A W runs no FSDP hook and gathers nothing, except
on stage 0: torch skips its I (it has no input gradient to send) and its W runs the whole backward
(``stage.py`` ``backward_one_chunk`` / ``backward_weight_one_chunk``), hooks included. (The runtime rules keep
split backwards away from ZeRO 3 on torch's pipelining; the replay follows torch either way.)

This module replays that rule on ppplan's action lists (the ones the runtime loads or whose torch
class builds the same order: ``costmodels.schedules.torch_order``), without torch: per rank, the
positions where each stage is unsharded and resharded (``lowered_fsdp_events``), how many times a
step unshards each stage (``unshards_per_stage``), and at ZeRO 3 how many all-gathers each stage's
forwards and backwards wait for (``zero3_gathers_per_stage``). ``tests/costmodels/schedules/test_fsdp_lowering.py``
checks the replay against torch's own function, ``tests/launch/runtime/test_fsdp_gathers_dist.py`` the counts
against the runtime's. Counts are per stage index: chimera's two replicas of a stage (no torch runtime) add up.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import islice

from costmodels.schedules.actions import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, FULL_BACKWARD, Action, Schedule

# torch/distributed/pipelining/schedules.py, _add_unshard_reshard(max_active_stages=3); the runtime's
# _prepare_schedule_with_comms calls it with the default.
MAX_ACTIVE_STAGES = 3
UNSHARD, RESHARD = 1, -1


def _next_distinct_stages(stages: list[int]) -> list[tuple[int, ...]]:
    """For each position, the next ``MAX_ACTIVE_STAGES`` distinct stages from it on (its own first),
    in order of first appearance: torch's ``next_stage_indices``, in one backward sweep."""
    ahead: list[tuple[int, ...]] = [()] * len(stages)
    following: tuple[int, ...] = ()
    for i in range(len(stages) - 1, -1, -1):
        s = stages[i]
        following = (s, *(t for t in following if t != s))[:MAX_ACTIVE_STAGES]
        ahead[i] = following
    return ahead


def _rank_events(stages: list[int]) -> tuple[tuple[int, int, int], ...]:
    """(position, stage, UNSHARD or RESHARD) of one rank's lowered list, in the order torch appends
    them: before the action at ``position``, evictions first, then fetches in look-ahead order; the
    stages still unsharded after the last action are resharded at ``len(stages)``."""
    events: list[tuple[int, int, int]] = []
    active: list[int] = []  # insertion order, as torch's set iterates small ints
    for i, wanted in enumerate(_next_distinct_stages(stages)):
        if i and stages[i] == stages[i - 1]:  # the same look-ahead as the action before: nothing changes
            continue
        for s in [s for s in active if s not in wanted]:
            active.remove(s)
            events.append((i, s, RESHARD))
        for s in wanted:
            if s not in active:
                active.append(s)
                events.append((i, s, UNSHARD))
    events.extend((len(stages), s, RESHARD) for s in active)
    return tuple(events)


def lowered_fsdp_events(schedule: Schedule) -> tuple[tuple[tuple[int, int, int], ...], ...]:
    """Per pipeline rank, the UNSHARD and RESHARD events torch's lowering adds to its action list
    (``_rank_events``), positions counted in the rank's compute actions."""
    return tuple(_rank_events([a.stage for a in actions]) for actions in schedule.ranks)


@lru_cache(maxsize=256)
def unshards_per_stage(schedule: Schedule) -> tuple[int, ...]:
    """How many times one step unshards (all-gathers) each virtual stage: 1 where a rank holds at most
    ``MAX_ACTIVE_STAGES`` stages; more where the lowering evicts a stage its rank needs again."""
    counts = [0] * schedule.num_stages
    for events in lowered_fsdp_events(schedule):
        for _, stage, kind in events:
            if kind == UNSHARD:
                counts[stage] += 1
    return tuple(counts)


def _runs_fsdp_hooks(action: Action) -> bool:
    """Whether the action runs FSDP2's pre-forward or pre-backward hooks: F, B and a full backward do; a W does
    not, but on stage 0, where torch runs the whole backward as W and skips the I."""
    if action.stage == 0 and action.kind in (BACKWARD_INPUT, BACKWARD_WEIGHT):
        return action.kind == BACKWARD_WEIGHT
    return action.kind in (FORWARD, BACKWARD_INPUT, FULL_BACKWARD)


def _rank_zero3_gathers(actions: tuple, events: tuple[tuple[int, int, int], ...], forward: list[int],
                        backward: list[int]) -> None:
    """Add one rank's ZeRO-3 gathers to ``forward`` and ``backward`` (per stage): an UNSHARD of a resharded
    stage counts for the stage's next action, a forward or backward that finds its stage resharded for
    itself; a forward reshards after it, a backward keeps the stage unsharded, a RESHARD frees it."""
    unsharded: set[int] = set()
    k = 0
    for i in range(len(actions) + 1):
        while k < len(events) and events[k][0] == i:
            _, stage, kind = events[k]
            k += 1
            if kind == RESHARD:
                unsharded.discard(stage)
            elif stage not in unsharded:
                unsharded.add(stage)
                next_kind = next(a.kind for a in islice(actions, i, None) if a.stage == stage)  # in the look-ahead
                (forward if next_kind == FORWARD else backward)[stage] += 1
        if i == len(actions):
            break
        action = actions[i]
        if _runs_fsdp_hooks(action) and action.stage not in unsharded:
            (forward if action.kind == FORWARD else backward)[action.stage] += 1
            unsharded.add(action.stage)
        if action.kind == FORWARD:
            unsharded.discard(action.stage)


@lru_cache(maxsize=256)
def zero3_gathers_per_stage(schedule: Schedule) -> tuple[tuple[int, int], ...]:
    """Per virtual stage, (all-gathers its forwards wait for, all-gathers its backwards wait for) in one step at
    ZeRO 3 under torch's pipelining (module docstring): in 1F1B's steady state a forward finds its stage
    unsharded by the backward before it and the backward gathers, about one gather per microbatch rather than
    two."""
    forward, backward = [0] * schedule.num_stages, [0] * schedule.num_stages
    for actions, events in zip(schedule.ranks, lowered_fsdp_events(schedule)):
        _rank_zero3_gathers(actions, events, forward, backward)
    return tuple(zip(forward, backward))
