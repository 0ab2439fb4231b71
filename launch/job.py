"""Own a torchrun job: start it, watch it, stop all of it, say which rank failed first.

- Process groups: torchrun runs in its own session; torch starts each rank in a
  session of its own too, so stopping the job means signalling torchrun's group and
  every rank's (their pids come from the heartbeat files, ``launch/job_files.py``).
  Stop = SIGCONT + SIGTERM to all of them, then SIGKILL after ``stop_grace_s``.
- Signals: Ctrl-C (SIGINT), SIGTERM and SIGHUP to ``ppplan launch`` stop the job and
  raise ``JobInterrupted`` (a ``KeyboardInterrupt``; exit code 128 + signal number:
  130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP). The launcher installs its own SIGINT handler too:
  a job started in the background of a non-interactive shell (scripts, schedulers, CI) inherits
  SIGINT ignored, and ``kill -INT`` must still stop it. SIGKILL cannot be caught: torchrun then gets its parent-death
  signal, and each rank its own (``launch/runtime/lifecycle.py``).
- Hangs: a rank whose heartbeat is older than ``hang_timeout_s`` (stopped, or hung
  holding the interpreter) ends the job; peers blocked in a collective also raise
  after the same time (the process-group timeout, ``$PPPLAN_PG_TIMEOUT_S``). Once a
  rank has reported a failure, torchrun gets ``FAILURE_GRACE_S`` to stop the others
  before the launcher stops them itself: longer than torch's own close (SIGTERM, then SIGKILL
  after 30 s), so that torchrun records how every rank ended (``exits.json``) even when a peer
  sits in a collective through the SIGTERM; stopped earlier, a rank killed by a signal would
  lose to the peers that failed on the connection it broke.
- First failure (``first_failure``): a rank killed by a signal with no exception of
  its own (SIGKILL, the OOM killer, a segfault) comes first: its peers' errors are the
  broken connections it left; a rank killed by SIGTERM comes after any killed otherwise (SIGTERM is
  how torchrun stops the others). Then a rank that stopped beating while the others went
  on; then the earliest exception record (float timestamps, not torch's whole seconds).
- Progress: the metrics file is read as the ranks append to it; each completed step
  goes to ``on_step`` (``launch/progress.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from launch.job_files import (
    JOB_DIR_ENV,
    LAUNCHER_PID_ENV,
    PG_TIMEOUT_ENV,
    heartbeats,
    read_exits,
    read_failure_records,
)
from launch.progress import MetricsTail, ProgressTracker, StepProgress

POLL_S = 0.25
STOP_GRACE_S = 5.0
# once a rank has reported a failure, torchrun stops the others itself (SIGTERM, SIGKILL after 30 s)
# and records how each ended; the launcher steps in only if that takes longer than this
FAILURE_GRACE_S = 40.0  # > torch.distributed.elastic SubprocessContext._close(timeout=30) (module docstring)
# a heartbeat this much older than every other rank's, at the end of a failed job, marks the
# rank that stopped (ranks beat every HEARTBEAT_S = 1 s)
STALL_MARGIN_S = 10.0
HANDLED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class JobInterrupted(KeyboardInterrupt):
    """The launcher got SIGINT, SIGTERM or SIGHUP; the job has been stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


@dataclass(frozen=True)
class LaunchResult:
    """How the job ended: ``returncode`` 0 on success; ``failure`` names the rank and reason otherwise."""

    returncode: int
    failure: str | None


def _others(first: int, ranks: list[int]) -> str:
    rest = sorted(set(ranks) - {first})
    return f" (then ranks {rest} failed too)" if rest else ""


def stalled_rank(beats: dict[int, tuple[int, float]], margin_s: float) -> tuple[int, float] | None:
    """(rank, age) of the one rank whose heartbeat is ``margin_s`` older than every other's."""
    if not beats:
        return None
    ages = sorted((age, rank) for rank, (_pid, age) in beats.items())
    oldest_age, oldest = ages[-1]
    runner_up = ages[-2][0] if len(ages) > 1 else 0.0
    return (oldest, oldest_age) if oldest_age - runner_up >= margin_s else None


def first_failure(job_dir: Path, stall_margin_s: float = STALL_MARGIN_S) -> str | None:
    """'rank R …' of the failure that came first (module docstring), or None if none is known."""
    records = read_failure_records(job_dir)
    exits = read_exits(job_dir)
    recorded = {r["rank"] for r in records}
    failed = [r["rank"] for r in records] + [e["rank"] for e in exits]
    killed = [e for e in exits if e["exitcode"] < 0 and e["rank"] not in recorded]
    if killed:
        # SIGTERM is what torchrun sends the other ranks once one has died: a rank killed by
        # anything else died first, whichever of them the wrapper saw exit first
        first = min(killed, key=lambda e: (e["exitcode"] == -signal.SIGTERM, e["rank"]))
        return f"rank {first['rank']} was killed by {first['signal'] or 'a signal'} (exit code {first['exitcode']}){_others(first['rank'], failed)}"
    stalled = stalled_rank(heartbeats(job_dir), stall_margin_s)
    if stalled is not None and (records or exits):
        rank, age_s = stalled
        return f"rank {rank} stopped responding (no heartbeat for the last {age_s:.0f} s of the job){_others(rank, failed)}"
    if records:
        first = records[0]
        return f"rank {first['rank']} failed: {first['error']}{_others(first['rank'], failed)}"
    if exits:
        first = exits[0]
        return f"rank {first['rank']} exited with code {first['exitcode']}{_others(first['rank'], failed)}"
    return None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_job(proc: subprocess.Popen, job_dir: Path, grace_s: float = STOP_GRACE_S) -> None:
    """SIGCONT + SIGTERM torchrun's and every rank's process group, SIGKILL what is left after ``grace_s``."""
    seen: set[int] = set()
    for sig in (signal.SIGCONT, signal.SIGTERM):
        for pgid in [proc.pid, *(pid for pid, _ in heartbeats(job_dir).values())]:
            seen.add(pgid)
            _signal_group(pgid, sig)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        seen |= {pid for pid, _ in heartbeats(job_dir).values()}
        if proc.poll() is not None and not any(_alive(pid) for pid in seen - {proc.pid}):
            return
        time.sleep(0.1)
    for pgid in seen | {pid for pid, _ in heartbeats(job_dir).values()}:
        _signal_group(pgid, signal.SIGKILL)
    proc.wait()


class _SignalTrap:
    """SIGINT, SIGTERM and SIGHUP raise ``JobInterrupted`` while the job runs (main thread only),
    whatever disposition the launcher inherited (module docstring)."""

    def __enter__(self) -> _SignalTrap:
        self.previous: dict[int, object] = {}
        self.raised = False
        if threading.current_thread() is threading.main_thread():
            for name in HANDLED_SIGNALS:
                sig = getattr(signal, name)
                self.previous[sig] = signal.signal(sig, self._raise)
        return self

    def _raise(self, signum: int, _frame: object) -> None:
        if not self.raised:  # a second signal must not interrupt the stop
            self.raised = True
            raise JobInterrupted(signum)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    """How to watch a job: its hang timeout, how long torchrun gets to stop, what to report."""

    hang_timeout_s: float = 60.0
    stop_grace_s: float = STOP_GRACE_S
    on_step: Callable[[StepProgress], None] | None = None


def _watch(proc: subprocess.Popen, job_dir: Path, opts: JobOptions, tail: MetricsTail | None,
           tracker: ProgressTracker | None) -> str | None:
    """Wait for torchrun, reporting steps; returns the reason the launcher stopped the job itself."""
    first_failure_seen: float | None = None
    while True:
        try:
            proc.wait(timeout=POLL_S)
            return None
        except subprocess.TimeoutExpired:
            pass
        _report(tail, tracker, opts)
        beats = heartbeats(job_dir)
        hung = {rank: age for rank, (_pid, age) in beats.items() if age > opts.hang_timeout_s}
        if hung:
            rank = max(hung, key=lambda r: hung[r])
            stop_job(proc, job_dir, opts.stop_grace_s)
            return f"rank {rank} stopped responding: no heartbeat for {hung[rank]:.0f} s (stopped or hung; --hang-timeout-s {opts.hang_timeout_s:g})"
        if first_failure_seen is None and read_failure_records(job_dir):
            first_failure_seen = time.monotonic()
        if first_failure_seen is not None and time.monotonic() - first_failure_seen > FAILURE_GRACE_S:
            stop_job(proc, job_dir, opts.stop_grace_s)  # torchrun is slow to stop a stuck rank
            return None


def _report(tail: MetricsTail | None, tracker: ProgressTracker | None, opts: JobOptions) -> None:
    if tail is None or tracker is None or opts.on_step is None:
        return
    for step in tracker.feed(tail.read_new()):
        opts.on_step(step)


def run_job(
    argv: list[str], opts: JobOptions, metrics: Path | None = None, tracker: ProgressTracker | None = None,
    env: dict[str, str] | None = None,
) -> LaunchResult:
    """Run ``argv`` (the torchrun command), inheriting stdout/stderr; see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="ppplan-job-") as tmp, _SignalTrap():
        job_dir = Path(tmp)
        job_env = {
            **os.environ, **(env or {}), JOB_DIR_ENV: str(job_dir), LAUNCHER_PID_ENV: str(os.getpid()),
            PG_TIMEOUT_ENV: str(opts.hang_timeout_s),
        }  # fmt: skip
        tail = MetricsTail(metrics) if metrics is not None else None
        proc = subprocess.Popen(argv, env=job_env, start_new_session=True)
        try:
            stopped_because = _watch(proc, job_dir, opts, tail, tracker)
        except KeyboardInterrupt as exc:
            stop_job(proc, job_dir, opts.stop_grace_s)
            if isinstance(exc, JobInterrupted):
                raise
            raise JobInterrupted(signal.SIGINT) from None
        _report(tail, tracker, opts)
        returncode = 1 if stopped_because else proc.returncode
        failure = stopped_because or (first_failure(job_dir) if returncode else None)
    if returncode and failure is None:
        failure = f"torchrun exited with code {returncode} (no rank reported an exception; see the log above)"
    return LaunchResult(returncode, failure)
