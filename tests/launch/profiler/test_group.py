"""``launch/profiler/group.py``: only a SIGABRT (the gloo abort at worker exit) is retried, for
the points not yet reported, and the retry is told; other deaths fail the profile."""

from __future__ import annotations

import pytest

import launch.profiler.group as group
from profiles.errors import InfeasibleError
from profiles.loader import load_model


def _fake_spawn(deaths: list[str]):
    """A spawn that reports the first pending point, then dies with the next signal in ``deaths``."""
    calls: list[list[int]] = []

    def spawn(worker, args, nprocs, on_item, what):
        points = args[3]
        calls.append([index for index, _ in points])
        if deaths:
            on_item((points[0][0], {"forward_s": (1.0, 0.0)}))
            raise InfeasibleError(f"{what} failed: process 1 terminated with signal {deaths.pop(0)}")
        for index, _ in points:
            on_item((index, {"forward_s": (1.0, 0.0)}))

    return spawn, calls


def test_sigabrt_is_retried_for_the_unreported_points(monkeypatch: pytest.MonkeyPatch) -> None:
    spawn, calls = _fake_spawn(["SIGABRT"])
    monkeypatch.setattr(group, "spawn_and_collect", spawn)
    done, notes = [], []
    group.time_in_tp_group(load_model("tiny-gpt"), 2, [(0, "a"), (1, "b"), (2, "c")], {}, lambda i, s: done.append(i), notes.append)
    assert calls == [[0, 1, 2], [1, 2]] and sorted(done) == [0, 1, 2]
    assert len(notes) == 1 and "SIGABRT" in notes[0] and "2 point(s)" in notes[0] and "attempt 2 of 3" in notes[0]


@pytest.mark.parametrize("signal_name", ["SIGSEGV", "SIGKILL"])
def test_other_signals_are_not_retried(signal_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spawn, calls = _fake_spawn([signal_name])
    monkeypatch.setattr(group, "spawn_and_collect", spawn)
    notes: list[str] = []
    with pytest.raises(InfeasibleError, match=signal_name):
        group.time_in_tp_group(load_model("tiny-gpt"), 2, [(0, "a"), (1, "b")], {}, lambda i, s: None, notes.append)
    assert len(calls) == 1 and notes == []


def test_aborts_past_the_attempts_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    spawn, calls = _fake_spawn(["SIGABRT"] * group.GROUP_ATTEMPTS)
    monkeypatch.setattr(group, "spawn_and_collect", spawn)
    with pytest.raises(InfeasibleError, match="SIGABRT"):
        group.time_in_tp_group(load_model("tiny-gpt"), 2, [(i, "p") for i in range(5)], {}, lambda i, s: None)
    assert len(calls) == group.GROUP_ATTEMPTS


def test_a_group_times_its_points_round_robin(monkeypatch: pytest.MonkeyPatch) -> None:
    """One iteration of each point per round, the warm-up rounds thrown away: a slow spell of the
    machine falls on every point of the group alike (the sequential order put it on one point:
    tiny-gpt's tp 2 layer read 10-11.5 ms forward in three profiles, 7.8-9.9 ms round-robin)."""
    import launch.profiler.cases as cases

    order: list[str] = []

    def sample(case, sync, clock, barrier=lambda: None):
        barrier()
        order.append(case)
        return (float(len(order)),) * 4

    barriers: list[int] = []
    monkeypatch.setattr(cases, "sample", sample)
    timed = cases.time_round_robin({0: "a", 1: "b"}, 1, 3, lambda: None, lambda: 0.0, barrier=lambda: barriers.append(1))
    assert order == ["a", "b"] * 4 and len(barriers) == 8
    # samples 3, 5, 7 for a and 4, 6, 8 for b (the first round is warm-up): medians and IQRs of those
    assert timed[0]["forward"] == (5.0, 2.0) and timed[1]["backward"] == (6.0, 2.0)


def test_groups_are_timed_round_robin_where_their_points_fit_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from launch.profiler.layers import ProfileSettings, _time_groups, grid

    seen: dict[int, bool] = {}

    def time_in_tp_group(model, size, points, opts, done, on_retry=None):
        seen[size] = opts["round_robin"]

    monkeypatch.setattr(group, "time_in_tp_group", time_in_tp_group)
    for name, device, expected in (("tiny-gpt", "cpu", True), ("tiny-gpt", "cuda", False), ("gpt3-1.7b", "cpu", False)):
        settings = ProfileSettings(device=device, tps=(1, 2), mbss=(1, 2), recomputes=("none",), tp_group=True, cps=(1, 2))
        model = load_model(name)
        points = grid(model, settings)
        seen.clear()
        _time_groups(model, settings, points, {i: ({}, (0, 0, 0)) for i in range(len(points))}, None)
        assert seen == {2: expected}, name  # the tp-2 group and the 2-rank ring share a size
