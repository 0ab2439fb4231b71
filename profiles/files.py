"""Writing files: atomically (temporary file in the same folder, then ``os.replace``),
so a reader never sees half a file and a failure leaves nothing behind. Every
command that writes (plans, profiles, goldens, calibrated clusters, emitted
configs, timelines) goes through here; failures are one-line ``PlanError``s."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from costmodels.errors import PlanError


def check_writable(path: Path) -> None:
    """Fail early (before minutes of work) when ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise PlanError(f"cannot write {path}: it is a directory; give a file name")
    if not parent.is_dir():
        raise PlanError(f"cannot write {path}: directory {parent} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", delete=True):
            pass
    except OSError as exc:
        raise PlanError(f"cannot write {path}: {exc.strerror}") from None


def write_atomic(path: Path, text: str, mode: int | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (optionally with file ``mode``); returns ``path``."""
    path = Path(path)
    check_writable(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise PlanError(f"cannot write {path}: {exc.strerror}") from None
    return path
