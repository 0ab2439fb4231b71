"""``launch/job.py``: which rank failed first (from hand-written job directories), and, as
multi-process tests, that the launcher owns its job: SIGTERM/SIGHUP/SIGKILL of the launcher
leave no process behind, a killed rank is named, a stopped rank ends the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.job import first_failure, stalled_rank
from launch.job_files import EXITS_FILE, heartbeat_path
from tests.launch.runtime.runtime_plans import make_plan, write_plan

PPPLAN = [sys.executable, "-c", "from planner.cli.main import main; main()"]


def _record(job_dir: Path, rank: int, error: str, time_s: float) -> None:
    (job_dir / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "error": error, "time": time_s}) + "\n")


def _beat(job_dir: Path, rank: int, age_s: float, now: float) -> None:
    path = heartbeat_path(job_dir, rank)
    path.write_text(str(1000 + rank))
    os.utime(path, (now - age_s, now - age_s))


def test_earliest_exception_record_comes_first(tmp_path: Path) -> None:
    _record(tmp_path, 0, "RuntimeError: peer closed", 2.0)
    _record(tmp_path, 3, "ValueError: boom", 1.0)
    assert first_failure(tmp_path) == "rank 3 failed: ValueError: boom (then ranks [0] failed too)"
    assert first_failure(tmp_path / "nothing") is None


def test_a_rank_killed_by_a_signal_beats_the_peers_it_broke(tmp_path: Path) -> None:
    # rank 1 was SIGKILLed (no record of its own); ranks 0 and 2 then failed on the closed connection,
    # and their records are even older in whole seconds (torch's root cause would name one of them)
    _record(tmp_path, 0, "RuntimeError: Connection closed by peer", 1.0)
    _record(tmp_path, 2, "RuntimeError: Connection reset by peer", 1.1)
    exits = [{"rank": 0, "exitcode": 1, "signal": None}, {"rank": 1, "exitcode": -9, "signal": "SIGKILL"}]
    (tmp_path / EXITS_FILE).write_text(json.dumps(exits))
    assert first_failure(tmp_path) == "rank 1 was killed by SIGKILL (exit code -9) (then ranks [0, 2] failed too)"


def test_a_rank_killed_otherwise_comes_before_the_ranks_torchrun_terminated(tmp_path: Path) -> None:
    # rank 1 was SIGKILLed; torchrun then sent SIGTERM to ranks 0, 2 and 3, and its wrapper saw them
    # exit in rank order: the SIGKILL is the cause (a race this machine hit 1 launch in 6)
    exits = [{"rank": r, "exitcode": -15, "signal": "SIGTERM"} for r in (0, 2, 3)]
    exits.insert(1, {"rank": 1, "exitcode": -9, "signal": "SIGKILL"})
    (tmp_path / EXITS_FILE).write_text(json.dumps(exits))
    assert first_failure(tmp_path) == "rank 1 was killed by SIGKILL (exit code -9) (then ranks [0, 2, 3] failed too)"


def test_a_rank_that_stopped_beating_is_named_before_the_timeouts_it_caused(tmp_path: Path) -> None:
    now = time.time()
    for rank, age in ((0, 0.5), (1, 0.7), (2, 61.0), (3, 0.4)):
        _beat(tmp_path, rank, age, now)
    _record(tmp_path, 0, "RuntimeError: Timed out waiting 60000ms for recv", 1.0)
    message = first_failure(tmp_path)
    assert message is not None and message.startswith("rank 2 stopped responding") and "then ranks [0]" in message
    # no failure at all -> no stalled-rank claim; ranks that beat within the margin of each other: none stalled
    assert stalled_rank({0: (1, 3.0), 1: (2, 12.0)}, margin_s=10.0) is None
    assert stalled_rank({0: (1, 3.0), 1: (2, 13.5)}, margin_s=10.0) == (1, 13.5)


# --- multi-process: the launcher owns its job ------------------------------------------------------


def _job_processes(metrics: Path) -> dict[int, int | None]:
    """pid -> RANK (None for torchrun) of every process whose command line names ``metrics``."""
    found: dict[int, int | None] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(metrics).encode() in cmdline and b"launch.runtime" in cmdline:
            ranks = [int(kv[5:]) for kv in environ if kv.startswith(b"RANK=")]
            found[int(entry.name)] = ranks[0] if ranks and b"launch.runtime.train" in cmdline else None
    return found


def _start(tmp_path: Path, pp: int, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path]:
    plan_path, metrics = write_plan(make_plan(pp=pp, global_batch=pp), tmp_path / "plan.json"), tmp_path / "m.jsonl"
    proc = subprocess.Popen([*PPPLAN, "launch", str(plan_path), "--steps", "100000", "--metrics", str(metrics), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    assert metrics.read_text().strip(), "no step finished"
    return proc, metrics


def _gone_within(metrics: Path, limit_s: float) -> float:
    start = time.monotonic()
    while _job_processes(metrics) and time.monotonic() - start < limit_s:
        time.sleep(0.2)
    return time.monotonic() - start


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.dist
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_or_sighup_stops_every_process_within_20_s(sig: int, code: int, tmp_path: Path) -> None:
    proc, metrics = _start(tmp_path, pp=2)
    start = time.monotonic()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    gone_s = time.monotonic() - start + _gone_within(metrics, 30)
    assert proc.returncode == code
    assert "every rank of the job was stopped" in _error_line(stderr)
    assert not _job_processes(metrics) and gone_s < 20, f"processes left after {gone_s:.1f} s"


@pytest.mark.dist
def test_sigkill_of_the_launcher_takes_the_job_along(tmp_path: Path) -> None:
    proc, metrics = _start(tmp_path, pp=2)
    start = time.monotonic()
    proc.send_signal(signal.SIGKILL)  # nothing to catch: torchrun and the ranks die with their parents
    proc.wait(timeout=10)
    gone_s = time.monotonic() - start + _gone_within(metrics, 30)
    assert not _job_processes(metrics) and gone_s < 20, f"processes left after {gone_s:.1f} s"


@pytest.mark.dist
def test_sigkill_of_one_rank_fails_the_job_naming_it(tmp_path: Path) -> None:
    proc, metrics = _start(tmp_path, pp=4)
    ranks = {rank: pid for pid, rank in _job_processes(metrics).items() if rank is not None}
    assert sorted(ranks) == [0, 1, 2, 3]
    start = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and time.monotonic() - start < 60
    line = _error_line(stderr)
    assert line.startswith("error: rank 1 was killed by SIGKILL"), line
    assert not _job_processes(metrics)


@pytest.mark.dist
def test_a_stopped_rank_ends_the_job_within_the_hang_timeout(tmp_path: Path) -> None:
    proc, metrics = _start(tmp_path, pp=2, extra=("--hang-timeout-s", "10"))
    ranks = {rank: pid for pid, rank in _job_processes(metrics).items() if rank is not None}
    start = time.monotonic()
    os.kill(ranks[1], signal.SIGSTOP)
    _, stderr = proc.communicate(timeout=120)
    elapsed_s = time.monotonic() - start
    assert proc.returncode == 1 and elapsed_s < 10 + 10, f"took {elapsed_s:.1f} s"
    assert _error_line(stderr).startswith("error: rank 1 stopped responding")
    assert not _job_processes(metrics)
