"""A process that dies with its parent and says it is alive (``ppplan launch`` owns its job).

Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``, prctl(2)) delivers a signal
when the parent exits, whatever killed it (also SIGKILL). It is cleared by ``fork``
and kept across ``exec``, so each process sets its own: the torchrun wrapper gets
SIGTERM when ``ppplan launch`` dies (torch's launcher then stops its workers), each
rank gets SIGKILL when its torchrun dies. A parent that died before the call is caught
by comparing ``getppid()`` with the pid the parent advertised. A watchdog thread is the
second line (and the only one off Linux): it polls ``getppid()`` and touches the rank's
heartbeat file (``launch/job_files.py``) every ``HEARTBEAT_S``.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from pathlib import Path

from launch.job_files import HEARTBEAT_S, heartbeat_path

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int, expected_parent: int | None) -> None:
    """Ask the kernel for ``sig`` when the parent exits; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog still covers it
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(128 + int(sig))


def start_watchdog(rank: int, job_dir: Path | None, poll_s: float = HEARTBEAT_S) -> None:
    """Exit if the parent disappears; beat the heartbeat file (``rank<R>.alive``, holding our pid)."""
    parent = os.getppid()
    beat = heartbeat_path(job_dir, rank) if job_dir is not None else None
    if beat is not None:
        try:
            beat.write_text(str(os.getpid()))
        except OSError:
            beat = None

    def watch() -> None:
        while os.getppid() == parent:
            if beat is not None:
                try:
                    os.utime(beat)
                except OSError:
                    pass
            time.sleep(poll_s)
        print(f"[ppplan rank {rank}] torchrun is gone: exiting", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="ppplan-watchdog", daemon=True).start()


def parent_from_env(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else None

