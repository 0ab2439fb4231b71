"""Writing files: atomically (temporary file in the same folder, then ``os.replace``),
so a reader never sees half a file and a failure leaves nothing behind. Every
command that writes (plans, profiles, goldens, calibrated clusters, emitted
configs, timelines) goes through here; failures are one-line ``PlanError``s."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from profiles.errors import PlanError


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
    return write_atomic_bytes(path, text.encode("utf-8"), mode)


def write_atomic_bytes(path: Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (an image, say); returns ``path``."""
    path = Path(path)
    check_writable(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
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


def read_metrics_jsonl(path: Path, required_keys: tuple[str, ...]) -> list[dict]:
    """The JSON lines of a ``ppplan launch`` metrics file, each holding ``required_keys``;
    a missing file, a malformed line or a missing key is a ``PlanError`` naming the line."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"metrics file not found: {path}")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise PlanError(f"{path}:{number}: not a JSON line") from None
        missing = [key for key in required_keys if not isinstance(record, dict) or key not in record]
        if missing:
            raise PlanError(f"{path}:{number}: missing key '{missing[0]}' (is this a ppplan launch metrics file?)")
        records.append(record)
    if not records:
        raise PlanError(f"{path} holds no metrics lines: run ppplan launch --metrics {path} first")
    return records
