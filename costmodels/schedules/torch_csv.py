"""torch's pipeline CSV format (compute only): one row per pipeline rank, one cell per action.

A cell is ``{stage}{kind}{microbatch}`` with torch's kinds: ``F`` forward,
``I`` backward-input (our B), ``W`` backward-weight, ``B`` full backward (our
BW); e.g. ``0F0``, ``1I3``, ``1W3``, ``0B1``. This is what
``torch.distributed.pipelining.schedules._PipelineScheduleRuntime._load_csv``
reads (``format="compute_only"``); it then adds the send/recv actions itself.
The launcher runs ``custom``, ``zb-h1`` and ``zb-h2`` through it.
"""

from __future__ import annotations

import csv
import io
import re

from costmodels.schedules.actions import (
    BACKWARD_INPUT,
    BACKWARD_WEIGHT,
    FORWARD,
    FULL_BACKWARD,
    Action,
    Schedule,
    check_structure,
    stage_ranks,
)
from costmodels.schedules.registry import SIMULATED_ONLY_SCHEDULES
from profiles.errors import PlanError, quoted

TO_TORCH = {FORWARD: "F", BACKWARD_INPUT: "I", BACKWARD_WEIGHT: "W", FULL_BACKWARD: "B"}
FROM_TORCH = {cell: kind for kind, cell in TO_TORCH.items()}
CELL = re.compile(r"^([0-9]{1,9})([FIWB])([0-9]{1,9})$")  # ASCII digits, 9 at most: any stage or microbatch
OVERLAP = re.compile(r"^\((.*)\)OVERLAP_F_B$")


def format_torch_csv(schedule: Schedule) -> str:
    """The schedule as torch's compute-only pipeline CSV text (rows end with a newline)."""
    if schedule.name in SIMULATED_ONLY_SCHEDULES:
        raise PlanError(f"schedule '{schedule.name}' has no torch runtime (two replicas per rank); it cannot be exported")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for actions in schedule.ranks:
        writer.writerow([f"{a.stage}{TO_TORCH[a.kind]}{a.microbatch}" for a in actions])
    return buffer.getvalue()


def _parse_cell(cell: str, rank: int, column: int) -> list[Action]:
    """One CSV cell as actions (an OVERLAP_F_B cell holds two, run in order)."""
    text = cell.strip()
    overlap = OVERLAP.match(text)
    parts = overlap.group(1).split(";") if overlap else [text]
    actions = []
    for part in parts:
        match = CELL.match(part.strip())
        if not match:
            raise PlanError(
                f"pipeline CSV row {rank + 1}, column {column + 1}: {quoted(text)!r} is not a compute action like 0F0, 1I3, 1W3 or 0B1"
            )
        stage, kind, microbatch = match.groups()
        actions.append(Action(FROM_TORCH[kind], int(microbatch), int(stage)))
    return actions


def parse_torch_csv(text: str, name: str = "custom") -> Schedule:
    """A ``Schedule`` from torch's compute-only pipeline CSV; pp, v and M are read off the cells.

    Empty cells (torch's idle slots) are skipped. Raises ``PlanError`` for a malformed
    cell, a stage on two ranks, or a schedule that misses or repeats a pass.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # any line ending
    try:
        rows = [row for row in csv.reader(io.StringIO(text))]
    except csv.Error as exc:
        raise PlanError(f"pipeline CSV is not CSV: {exc}") from None
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
    if not rows:
        raise PlanError("pipeline CSV is empty: expected one row of actions per pipeline rank")
    ranks = [[a for col, cell in enumerate(row) if cell.strip() for a in _parse_cell(cell, r, col)] for r, row in enumerate(rows)]
    actions = [a for row in ranks for a in row]
    if not actions:
        raise PlanError("pipeline CSV holds no actions")
    pp = len(ranks)
    num_stages = max(a.stage for a in actions) + 1
    if num_stages % pp:
        raise PlanError(f"pipeline CSV has {num_stages} stages on {pp} ranks: the stage count must be a multiple of the rank count")
    schedule = Schedule(name, pp, num_stages // pp, max(a.microbatch for a in actions) + 1, tuple(tuple(r) for r in ranks))
    shared = {stage: owners for stage, owners in stage_ranks(schedule).items() if len(owners) > 1}
    if shared:
        stage, owners = min(shared.items())
        raise PlanError(f"pipeline CSV runs stage {stage} on ranks {sorted(owners)}: torch needs each stage on one rank")
    check_structure(schedule)
    return schedule
