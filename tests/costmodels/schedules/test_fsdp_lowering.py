"""torch's UNSHARD/RESHARD lowering, replayed without torch (``costmodels.schedules.fsdp_lowering``).

The hand-derived cases follow torch 2.13's ``_add_unshard_reshard`` rule: before each action, the next
three distinct stages of the rank's list (its own first) stay or become unsharded, every other
unsharded stage is resharded. The grid test compares the replay with torch's own function on every
generated schedule of a grid of shapes (torch imported in the test only: costmodels never imports it).
"""

from __future__ import annotations

import pytest

from costmodels.schedules.actions import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, FULL_BACKWARD, Action, Schedule
from costmodels.schedules.fsdp_lowering import (
    RESHARD,
    UNSHARD,
    lowered_fsdp_events,
    unshards_per_stage,
    zero3_gathers_per_stage,
)
from costmodels.schedules.generate import generate_schedule
from costmodels.schedules.registry import GENERATED_SCHEDULES, shape_violations
from costmodels.schedules.torch_csv import TO_TORCH


def _one_rank(stages_in_order: list[int], kinds: list[str]) -> Schedule:
    actions = tuple(Action(kind, 0, s) for s, kind in zip(stages_in_order, kinds))
    return Schedule("custom", 1, len(set(stages_in_order)), 1, (actions,))


def test_a_rank_of_four_stages_gathers_the_first_again_for_its_backward() -> None:
    # stages 0..3 forward, then 3..0 backward: at action 0 the look-ahead is (0, 1, 2); at action 1
    # (1, 2, 3) evicts 0; at action 5 (2, 1, 0) evicts 3 and fetches 0 again; 2, 1 and 0 leave as their
    # last actions pass
    order = [0, 1, 2, 3, 3, 2, 1, 0]
    schedule = _one_rank(order, [FORWARD] * 4 + [FULL_BACKWARD] * 4)
    assert lowered_fsdp_events(schedule) == ((
        (0, 0, UNSHARD), (0, 1, UNSHARD), (0, 2, UNSHARD),
        (1, 0, RESHARD), (1, 3, UNSHARD),
        (5, 3, RESHARD), (5, 0, UNSHARD),
        (6, 2, RESHARD),
        (7, 1, RESHARD),
        (8, 0, RESHARD),
    ),)
    assert unshards_per_stage(schedule) == (2, 1, 1, 1)


def test_three_stages_or_fewer_per_rank_gather_each_once() -> None:
    for name, pp, v, m in [("interleaved-1f1b", 4, 3, 8), ("interleaved-zb", 2, 3, 6), ("dualpipev", 4, 2, 16),
                           ("1f1b", 8, 1, 16), ("zbv", 4, 2, 8)]:
        assert unshards_per_stage(generate_schedule(name, pp, v, m)) == (1,) * (pp * v)


def test_interleaved_ranks_of_many_stages_gather_each_several_times() -> None:
    """pp 2, v 6, M 16 (the mixtral regression case's shape before this was priced): 8 to 10 gathers a stage."""
    counts = unshards_per_stage(generate_schedule("interleaved-1f1b", 2, 6, 16))
    assert counts == (10, 10, 10, 9, 9, 9, 9, 9, 9, 8, 8, 8)


def test_zero3_gathers_once_a_microbatch_under_1f1b_not_once_a_pass() -> None:
    """1F1B, pp 2, M 8. Rank 0 runs F0 F1 B0 F2 B1 ... F7 B6 B7: F0 and F1 find stage 0 resharded (each forward
    reshards after it) and gather; every backward but the last finds it resharded by the forward before it and
    gathers (7); F2..F7 run right after a backward, which leaves it unsharded: 2 + 7 = 9 gathers, not 16. Rank 1
    (F B F B ...): its first forward gathers, then each backward: 1 + 8. GPipe gathers for every forward and for
    the first backward only: 8 + 1."""
    assert zero3_gathers_per_stage(generate_schedule("1f1b", 2, 1, 8)) == ((2, 7), (1, 8))
    assert zero3_gathers_per_stage(generate_schedule("gpipe", 2, 1, 8)) == ((8, 1), (8, 1))
    # a zero-bubble list: W needs no parameters, so W after a forward of the same stage gathers nothing
    for f, b in zero3_gathers_per_stage(generate_schedule("interleaved-zb", 2, 2, 8)):
        assert 1 <= f and f + b <= 2 * 8


def test_stage_zero_gathers_in_its_w_which_runs_its_whole_backward() -> None:
    """One rank, two stages, split backward: F0@0 F0@1 I0@1 I0@0 F1@0 F1@1 W0@1 I1@1 W0@0 I1@0 W1@1 W1@0. Stage 1:
    F0 gathers, I0 gathers, F1 finds it unsharded (then reshards), I1 gathers: (1, 2). Stage 0: torch skips its
    I and runs the whole backward as W, so I0 does nothing, F1 finds it resharded and gathers, W0 gathers and
    keeps it, W1 finds it unsharded: (2, 1)."""
    order = [(0, FORWARD, 0), (1, FORWARD, 0), (1, BACKWARD_INPUT, 0), (0, BACKWARD_INPUT, 0), (0, FORWARD, 1),
             (1, FORWARD, 1), (1, BACKWARD_WEIGHT, 0), (1, BACKWARD_INPUT, 1), (0, BACKWARD_WEIGHT, 0),
             (0, BACKWARD_INPUT, 1), (1, BACKWARD_WEIGHT, 1), (0, BACKWARD_WEIGHT, 1)]
    schedule = Schedule("custom", 1, 2, 2, (tuple(Action(kind, mb, stage) for stage, kind, mb in order),))
    assert zero3_gathers_per_stage(schedule) == ((2, 1), (1, 2))


def test_every_stage_gathers_for_its_first_forward_and_a_backward_after_its_last() -> None:
    """The bounding pricer's ZeRO-3 lower bound (``microbatch_dp.zero3_gathers_per_microbatch(exact=False)``):
    one forward and one backward gather a stage at least, and never more than one per pass, on every generated
    schedule of a grid."""
    checked = 0
    for name in GENERATED_SCHEDULES:
        for pp, v, m in [(2, 1, 4), (2, 2, 8), (4, 1, 8), (4, 2, 8), (2, 4, 8), (4, 5, 16), (8, 1, 8)]:
            if shape_violations(name, pp, v, m):
                continue
            for f, b in zero3_gathers_per_stage(generate_schedule(name, pp, v, m)):
                assert 1 <= f <= m and 1 <= b <= m, (name, pp, v, m)
            checked += 1
    assert checked > 20


schedules = pytest.importorskip("torch.distributed.pipelining.schedules")


def _torch_lowered(actions: tuple[Action, ...]) -> list[tuple[int, str]]:
    """torch's own lowering of one rank's list, as (stage, "U" | "R" | kind and microbatch) in its order."""
    c = schedules._ComputationType
    lowered = schedules._add_unshard_reshard(
        [schedules._Action(a.stage, c(TO_TORCH[a.kind]), a.microbatch) for a in actions])
    marks = {c.UNSHARD: "U", c.RESHARD: "R"}
    return [(a.stage_index, marks.get(a.computation_type) or f"{a.computation_type.value}{a.microbatch_index}")
            for a in lowered]


def _replayed(actions: tuple[Action, ...], events: tuple[tuple[int, int, int], ...]) -> list[tuple[int, str]]:
    """Our replay's events merged into the rank's list, in the same form."""
    out, k = [], 0
    for i, a in enumerate([*actions, None]):
        while k < len(events) and events[k][0] == i:
            out.append((events[k][1], "U" if events[k][2] == UNSHARD else "R"))
            k += 1
        if a is not None:
            out.append((a.stage, f"{TO_TORCH[a.kind]}{a.microbatch}"))
    return out


def _gaps_as_sets(lowered: list[tuple[int, str]]) -> list[object]:
    """Compute actions in order, the UNSHARD/RESHARD actions between two of them as a set (torch evicts
    in its set's iteration order)."""
    out: list[object] = []
    gap: set[tuple[int, str]] = set()
    for stage, what in lowered:
        if what in ("U", "R"):
            gap.add((stage, what))
        else:
            out += [frozenset(gap), (stage, what)]
            gap = set()
    return [*out, frozenset(gap)]


def test_the_replay_is_torchs_lowering_on_every_generated_schedule() -> None:
    compared = 0
    for name in GENERATED_SCHEDULES:
        for pp, v, m in [(1, 4, 4), (2, 4, 8), (2, 6, 12), (4, 2, 8), (4, 4, 8), (4, 5, 16), (3, 8, 6), (8, 1, 8)]:
            if shape_violations(name, pp, v, m):
                continue
            schedule = generate_schedule(name, pp, v, m)
            for actions, events in zip(schedule.ranks, lowered_fsdp_events(schedule)):
                assert _gaps_as_sets(_replayed(actions, events)) == _gaps_as_sets(_torch_lowered(actions)), (name, pp, v, m)
                compared += 1
    assert compared > 100
