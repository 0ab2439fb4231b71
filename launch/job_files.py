"""The job directory that ``ppplan launch`` shares with its torchrun and its ranks.

``ppplan launch`` creates one per job and passes it as ``$PPPLAN_JOB_DIR``:

- ``rank<R>.json``: the exception that ended rank R (one JSON line: rank, error, time,
  traceback), written by ``launch.runtime.train``;
- ``rank<R>.alive``: rank R's pid; its modification time is the rank's last heartbeat
  (touched every ``HEARTBEAT_S`` by a thread that stops only when the whole process
  stops: a SIGSTOP, a hang that holds the GIL, death);
- ``exits.json``: the ranks torchrun saw exit non-zero on their own (exit code, signal),
  written by ``launch.runtime.torchrun`` when torch's launcher raises ``ChildFailedError``.

Only names and readers live here (no torch): the launcher reads, the runtime writes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

JOB_DIR_ENV = "PPPLAN_JOB_DIR"
LAUNCHER_PID_ENV = "PPPLAN_LAUNCHER_PID"
TORCHRUN_PID_ENV = "PPPLAN_TORCHRUN_PID"
PG_TIMEOUT_ENV = "PPPLAN_PG_TIMEOUT_S"
HEARTBEAT_S = 1.0
EXITS_FILE = "exits.json"


def failure_record_path(job_dir: Path, rank: int) -> Path:
    return job_dir / f"rank{rank}.json"


def heartbeat_path(job_dir: Path, rank: int) -> Path:
    return job_dir / f"rank{rank}.alive"


def read_failure_records(job_dir: Path) -> list[dict]:
    """Every rank's exception record, earliest first (unreadable lines are skipped: a rank may
    die mid-write)."""
    records = []
    for path in job_dir.glob("rank*.json"):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:  # JSONDecodeError or an over-long integer
                continue
            if isinstance(record, dict) and isinstance(record.get("rank"), int):
                records.append(record)
    return sorted(records, key=lambda r: float(r.get("time", 0.0)))


def read_exits(job_dir: Path) -> list[dict]:
    """``[{"rank", "exitcode", "signal"}]`` of ranks that exited non-zero on their own, by rank."""
    try:
        exits = json.loads((job_dir / EXITS_FILE).read_text())
    except (OSError, ValueError):
        return []
    return sorted((e for e in exits if isinstance(e, dict) and isinstance(e.get("rank"), int)), key=lambda e: e["rank"])


def heartbeats(job_dir: Path, now: float | None = None) -> dict[int, tuple[int, float]]:
    """``{rank: (pid, seconds since its last heartbeat)}`` of every rank that has started."""
    now = time.time() if now is None else now
    beats = {}
    for path in job_dir.glob("rank*.alive"):
        try:
            rank = int(path.stem.removeprefix("rank"))
            pid = int(path.read_text().strip() or 0)
            age_s = now - path.stat().st_mtime
        except (OSError, ValueError):
            continue
        if pid > 0:
            beats[rank] = (pid, age_s)
    return beats


def write_exits(job_dir: Path, exits: list[dict]) -> None:
    """Written once by the torchrun wrapper (rename: the launcher never reads half a file)."""
    tmp = job_dir / f".{EXITS_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(exits))
    os.replace(tmp, job_dir / EXITS_FILE)
