"""torchrun as ``ppplan launch`` runs it: ``python -m launch.runtime.torchrun <torchrun arguments>``.

Torch's own launcher (``torch.distributed.run.main``, the code behind the ``torchrun``
command) with the same arguments and behaviour, plus two things the launcher needs
to own its job:

- it dies with ``ppplan launch``: parent-death signal SIGTERM (``lifecycle.py``), on
  which torch's launcher stops its workers (``SignalException`` -> close);
- it says how each failed rank ended: on ``ChildFailedError`` (every rank that exited
  non-zero on its own before torch stopped the others, with its exit code; negative =
  killed by that signal) it writes ``exits.json`` into ``$PPPLAN_JOB_DIR``. Torch's
  own "root cause" picks the earliest error-file timestamp, in whole seconds, so a rank
  killed by a signal (no error file) loses to the peers that then failed on the broken
  connection; the launcher reads the exit codes instead (``launch/job.py``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main

from launch.job_files import JOB_DIR_ENV, LAUNCHER_PID_ENV, TORCHRUN_PID_ENV, write_exits
from launch.runtime.lifecycle import die_with_parent, parent_from_env


def exit_records(exc: ChildFailedError) -> list[dict]:
    """``{"rank", "exitcode", "signal"}`` of each failed rank (signal: its name, or None)."""
    records = []
    for rank, failure in sorted(exc.failures.items()):
        sig = failure.signal_name() if failure.exitcode < 0 else None
        records.append({"rank": int(rank), "exitcode": int(failure.exitcode), "signal": sig})
    return records


def main(argv: list[str] | None = None) -> None:
    die_with_parent(signal.SIGTERM, parent_from_env(LAUNCHER_PID_ENV))
    os.environ[TORCHRUN_PID_ENV] = str(os.getpid())  # each rank dies with this process
    try:
        torchrun_main(argv if argv is not None else sys.argv[1:])
    except ChildFailedError as exc:
        job_dir = os.environ.get(JOB_DIR_ENV)
        if job_dir:
            write_exits(Path(job_dir), exit_records(exc))
        sys.exit(1)
    except SignalException as exc:  # stopped by ppplan launch (or its death): the workers are closed
        sys.exit(128 + int(exc.sigval))


if __name__ == "__main__":
    main()
