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
