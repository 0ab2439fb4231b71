"""The one schedule representation: per pipeline rank, an ordered list of actions.

An ``Action`` is one compute pass of one microbatch on one virtual stage. Kinds
(Qi et al., ICLR 2024, Sec. 2 split the backward into B and W):

- ``F``: forward;
- ``B``: backward for the input only (torch's ``I``, BACKWARD_INPUT);
- ``W``: backward for the weights only (torch's ``W``, BACKWARD_WEIGHT);
- ``BW``: the full backward, B and W in one pass (torch's ``B``, FULL_BACKWARD).

The send/recv an action implies are not listed: an F on stage ``s`` sends its
output to stage ``s + 1`` and a B/BW on stage ``s`` sends its input gradient to
stage ``s - 1`` whenever the neighbour sits on another rank; torch's runtime
inserts exactly these (``_add_send_recv``), and the simulator prices them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from profiles.errors import PlanError

FORWARD = "F"
BACKWARD_INPUT = "B"
BACKWARD_WEIGHT = "W"
FULL_BACKWARD = "BW"
KINDS: tuple[str, ...] = (FORWARD, BACKWARD_INPUT, BACKWARD_WEIGHT, FULL_BACKWARD)
# Kinds after which a microbatch's activations on that stage are freed.
RELEASING_KINDS = frozenset({BACKWARD_WEIGHT, FULL_BACKWARD})
# Kinds that send the input gradient to the previous stage.
GRAD_SENDING_KINDS = frozenset({BACKWARD_INPUT, FULL_BACKWARD})


@dataclass(frozen=True, slots=True)
class Action:
    """One pass: ``kind`` in ``KINDS`` of microbatch ``microbatch`` on virtual stage ``stage``."""

    kind: str
    microbatch: int
    stage: int

    def __str__(self) -> str:
        return f"{self.kind}{self.microbatch}@{self.stage}"


@dataclass(frozen=True)
class Schedule:
    """Per-rank ordered action lists plus the shape they were generated for.

    ``ranks[r]`` is pipeline rank ``r``'s compute order. ``pp * v`` virtual
    stages hold the model (chimera: ``v = 1`` and every stage has two replicas,
    one per direction, on ranks ``s`` and ``pp - 1 - s``).
    """

    name: str
    pp: int
    v: int
    num_microbatches: int
    ranks: tuple[tuple[Action, ...], ...]

    def __hash__(self) -> int:
        """The shape and the list lengths: cheap for the simulator's graph cache, whose lists can
        hold 10^5 actions (equal schedules hash equal; a collision costs one comparison)."""
        return hash((self.name, self.pp, self.v, self.num_microbatches, tuple(len(r) for r in self.ranks)))

    @property
    def num_stages(self) -> int:
        return self.pp * self.v

    @property
    def num_actions(self) -> int:
        return sum(len(r) for r in self.ranks)

    def splits_backward(self) -> bool:
        """True when some action is a separate B or W (times need the B/W split)."""
        return any(a.kind in (BACKWARD_INPUT, BACKWARD_WEIGHT) for r in self.ranks for a in r)


def stage_ranks(schedule: Schedule) -> dict[int, set[int]]:
    """Which ranks run each virtual stage (one rank, or two for chimera's replicas)."""
    owners: dict[int, set[int]] = {}
    for rank, actions in enumerate(schedule.ranks):
        for action in actions:
            owners.setdefault(action.stage, set()).add(rank)
    return owners


def _range_problem(schedule: Schedule) -> str | None:
    m, stages = schedule.num_microbatches, schedule.num_stages
    if len(schedule.ranks) != schedule.pp:
        return f"schedule has {len(schedule.ranks)} rank lists but pp={schedule.pp}"
    for rank, actions in enumerate(schedule.ranks):
        for action in actions:
            if action.kind not in KINDS:
                return f"rank {rank}: unknown action kind '{action.kind}' (use one of {', '.join(KINDS)})"
            if not 0 <= action.stage < stages:
                return f"rank {rank}: {action} names stage {action.stage} outside 0..{stages - 1}"
            if not 0 <= action.microbatch < m:
                return f"rank {rank}: {action} names microbatch {action.microbatch} outside 0..{m - 1}"
    return None


def _order_problem(rank: int, actions: tuple[Action, ...]) -> str | None:
    """F before B/BW before W for each (microbatch, stage) on this rank."""
    seen: set[tuple[str, int, int]] = set()
    for action in actions:
        key = (action.microbatch, action.stage)
        if (action.kind, *key) in seen:
            return f"rank {rank}: {action} appears twice"
        if action.kind in (BACKWARD_INPUT, FULL_BACKWARD) and (FORWARD, *key) not in seen:
            return f"rank {rank}: {action} runs before its forward"
        if action.kind == BACKWARD_WEIGHT and (BACKWARD_INPUT, *key) not in seen:
            return f"rank {rank}: {action} runs before its backward-input B"
        seen.add((action.kind, *key))
    return None


def _count_problem(schedule: Schedule) -> str | None:
    """Every microbatch passes every stage once: one F and one backward (BW, or B and W)."""
    counts = Counter((a.kind, a.microbatch, a.stage) for r in schedule.ranks for a in r)
    forwards = {(mb, st) for (kind, mb, st) in counts if kind == FORWARD}
    for (kind, mb, st), n in counts.items():
        if n > 1:
            return f"{kind}{mb}@{st} appears {n} times"
    for mb, st in forwards:
        full = counts.get((FULL_BACKWARD, mb, st), 0)
        split_b = counts.get((BACKWARD_INPUT, mb, st), 0)
        split_w = counts.get((BACKWARD_WEIGHT, mb, st), 0)
        if full + split_b != 1 or split_b != split_w:
            return f"microbatch {mb} on stage {st} needs one BW, or one B and one W (got BW={full}, B={split_b}, W={split_w})"
    per_stage = Counter(st for (_, st) in forwards)
    for st in range(schedule.num_stages):
        if per_stage.get(st, 0) != schedule.num_microbatches:
            return f"stage {st} runs {per_stage.get(st, 0)} forwards, expected num_microbatches={schedule.num_microbatches}"
    return None


def structure_problems(schedule: Schedule) -> str | None:
    """The first structural problem of ``schedule`` (bad indices, order, counts), or None."""
    problem = _range_problem(schedule)
    if problem:
        return problem
    for rank, actions in enumerate(schedule.ranks):
        problem = _order_problem(rank, actions)
        if problem:
            return problem
    return _count_problem(schedule)


def check_structure(schedule: Schedule) -> None:
    """Raise ``PlanError`` naming the first structural problem of ``schedule``."""
    problem = structure_problems(schedule)
    if problem:
        raise PlanError(f"invalid '{schedule.name}' schedule: {problem}")
