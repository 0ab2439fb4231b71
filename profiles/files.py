"""Writing files: atomically (temporary file in the same folder, then ``os.replace``),
so a reader never sees half a file and a failure leaves nothing behind. Every
command that writes (plans, profiles, goldens, calibrated clusters, emitted
configs, timelines) goes through here; failures are one-line ``PlanError``s."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from profiles.errors import PlanError


def read_text(path: Path, what: str = "") -> str:
    """The text of ``path`` (UTF-8, a leading BOM dropped): a missing file, a folder, an
    unreadable file or one that is not UTF-8 text (binary) is a one-line ``PlanError``."""
    path = Path(path)
    label = f"{what} {path}".strip()
    if path.is_dir():
        raise PlanError(f"{label} is a directory: give a file")
    if not path.is_file():
        raise PlanError(f"file not found: {path}" if not what else f"{label} not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PlanError(f"cannot read {label}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(f"{label} is not UTF-8 text (byte {exc.start}: 0x{data[exc.start]:02x}): is it a binary file?") from None
    if "\x00" in text:
        raise PlanError(f"{label} holds NUL bytes: is it a binary file?")
    return text.removeprefix("\ufeff")


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


def check_outputs(*paths: Path | None) -> None:
    """Every output path of a command, checked before it does any work: each writable, no two the same."""
    given = [Path(p) for p in paths if p is not None]
    seen: set[Path] = set()
    for path in given:
        resolved = path.resolve()
        if resolved in seen:
            raise PlanError(f"{path} is given for two outputs: give each output its own file")
        seen.add(resolved)
        check_writable(path)


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


def write_folder_atomic(out_dir: Path, files: dict[str, tuple[str, int]]) -> list[Path]:
    """Write several files (name -> (text, mode)) into ``out_dir`` as one step: all of them are
    written into a temporary folder beside their destination first, so a failure leaves nothing
    behind; then a new ``out_dir`` is that folder renamed, and an existing one gets each file
    renamed into it (``os.replace``, same file system)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PlanError(f"{out_dir} exists and is not a directory: pick another path")
    fresh = not out_dir.exists()
    blocked = [name for name in files if not fresh and (out_dir / name).is_dir()]
    if blocked:
        raise PlanError(f"cannot write {out_dir / blocked[0]}: it is a directory; move it or pick another --out-dir")
    staging_parent = out_dir.parent if fresh else out_dir
    tmp: Path | None = None
    try:
        staging_parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=staging_parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
        for name, (text, mode) in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
            os.chmod(tmp / name, mode)
        if fresh:
            os.rename(tmp, out_dir)
            tmp = None
        else:
            for name in files:
                os.replace(tmp / name, out_dir / name)
    except OSError as exc:
        raise PlanError(f"cannot write into {out_dir}: {exc.strerror}; pick a writable directory") from None
    finally:
        if tmp is not None:
            for leftover in tmp.iterdir():
                leftover.unlink(missing_ok=True)
            tmp.rmdir()
    return [out_dir / name for name in files]


def read_metrics_jsonl(path: Path, required_keys: tuple[str, ...]) -> list[dict]:
    """The JSON lines of a ``ppplan launch`` metrics file, each holding ``required_keys``;
    a missing file, a malformed line or a missing key is a ``PlanError`` naming the line."""
    path = Path(path)
    records = []
    for number, line in enumerate(read_text(path, "metrics file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise PlanError(f"{path}:{number}: not a JSON line") from None
        missing = [key for key in required_keys if not isinstance(record, dict) or key not in record]
        if missing:
            raise PlanError(f"{path}:{number}: missing key '{missing[0]}' (is this a ppplan launch metrics file?)")
        problem = metrics_value_problem(record)
        if problem:
            raise PlanError(f"{path}:{number}: {problem}")
        records.append(record)
    if not records:
        raise PlanError(f"{path} holds no metrics lines: run ppplan launch --metrics {path} first")
    return records


# the metrics line of DESIGN.md: integer fields, and non-negative finite numbers (loss may be null)
METRICS_INT_KEYS = ("step", "rank", "stage")
METRICS_NUMBER_KEYS = (
    "loss", "step_time_s", "tokens_per_s", "peak_memory_gib", "predicted_step_time_s", "predicted_peak_memory_gib",
)  # fmt: skip


def metrics_value_problem(record: dict) -> str | None:
    """What is wrong with the values of one metrics line (None when nothing is)."""
    for key in METRICS_INT_KEYS:
        value = record.get(key)
        if key in record and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            return f"'{key}' must be a non-negative integer, got {value!r}"
    for key in METRICS_NUMBER_KEYS:
        value = record.get(key)
        if value is None and (key == "loss" or key not in record):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            return f"'{key}' must be a finite non-negative number, got {value!r}"
    return None
