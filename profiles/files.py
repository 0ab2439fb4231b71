"""Writing files: atomically (temporary file in the same folder, then ``os.replace``),
so a reader never sees half a file and a failure leaves nothing behind. Every
command that writes (plans, profiles, goldens, calibrated clusters, emitted
configs, timelines) goes through here; failures are one-line ``PlanError``s."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from profiles.errors import PlanError, quoted


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


def unreadable_value(exc: ValueError) -> str:
    """What a parser's ``ValueError`` says about the value it could not convert, in one line: Python reads
    no integer of more than ``sys.get_int_max_str_digits()`` digits (CVE-2020-10735), and JSON and YAML
    parsers raise that error unchanged."""
    if "integer string conversion" in str(exc):
        return f"a number of more than {sys.get_int_max_str_digits():,} digits: no ppplan value is that long"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else "a value that cannot be read"


TEMP_NAME_CHARS = 64  # of the destination's name in a temporary file's: the whole name plus a suffix may pass NAME_MAX


def _temp_prefix(name: str) -> str:
    return f".{name[:TEMP_NAME_CHARS]}."


def _destination(path: Path) -> Path:
    """Where writing ``path`` lands: a symbolic link's target (the link is kept; a dangling one's target is
    created), else ``path``."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _is_special(path: Path) -> bool:
    """An existing output that is not a regular file or a folder (a device such as /dev/null, a FIFO, a
    socket, /dev/stdout on a pipe): written in place, since renaming a file over it would replace it. Read
    through any link as given (``/dev/stdout``'s target is no path on a pipe)."""
    return path.exists() and not path.is_file() and not path.is_dir()


def check_writable(path: Path) -> None:
    """Fail early (before minutes of work) when ``path`` cannot be written."""
    try:
        _check_writable(Path(path))
    except OSError as exc:  # a name the file system refuses (too long, say), met while looking at it
        raise PlanError(f"cannot write {path}: {exc.strerror}") from None


def _check_writable(path: Path) -> None:
    if _is_special(path):
        if not os.access(path, os.W_OK):
            raise PlanError(f"cannot write {path}: permission denied")
        return
    path = _destination(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise PlanError(f"cannot write {path}: it is a directory; give a file name")
    if not parent.is_dir():
        raise PlanError(f"cannot write {path}: directory {parent} does not exist")
    if path.exists() and not os.access(path, os.W_OK):
        raise PlanError(f"cannot write {path}: the file is read-only")
    with tempfile.NamedTemporaryFile(dir=parent, prefix=_temp_prefix(path.name), delete=True):
        pass


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (through links); where one does not exist, whether they resolve alike."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(*paths: Path | None, inputs: Iterable[Path | str | None] = ()) -> None:
    """Every output path of a command, checked before it does any work: each writable, no two the same,
    none of them one of the command's ``inputs`` (the files among them: a preset name is no file)."""
    given = [Path(p) for p in paths if p is not None]
    read = [Path(p) for p in inputs if p is not None and Path(p).is_file()]
    seen: set[Path] = set()
    for path in given:
        check_writable(path)
        resolved = path.resolve()
        if resolved in seen:
            raise PlanError(f"{path} is given for two outputs: give each output its own file")
        seen.add(resolved)
        source = next((r for r in read if same_file(path, r)), None)
        if source is not None:
            also = "" if str(source) == str(path) else f" ({source})"
            raise PlanError(f"{path} is also an input of this command{also}: write the output to another file")


def write_atomic(path: Path, text: str, mode: int | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (optionally with file ``mode``); returns ``path``."""
    return write_atomic_bytes(path, text.encode("utf-8"), mode)


def _umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status``, Linux 4.7+); elsewhere set and
    restored at once (``os.umask`` has no read-only form)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process's umask."""
    return 0o666 & ~_umask()


def write_atomic_bytes(path: Path, data: bytes, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (an image, say); returns ``path``.

    As a shell's ``>`` would, but never half-written: a symbolic link's target is replaced (the link
    stays), an existing file keeps its permission bits (``mode`` overrides them; set-id bits are dropped) but
    is owned by the writer afterwards (it is a new file renamed over the old), a new one gets the umask's, a
    read-only one is refused, and a device or FIFO (``/dev/null``, ``/dev/stdout`` on a pipe) is written in
    place, not replaced."""
    path = Path(path)
    check_writable(path)
    if _is_special(path):
        try:
            with open(path, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            raise PlanError(f"cannot write {path}: {exc.strerror}") from None
        return path
    target = _destination(path)
    keep = mode if mode is not None else stat.S_IMODE(target.stat().st_mode) & 0o777 if target.exists() else _new_file_mode()
    tmp = None
    try:
        parent = target.parent if str(target.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=_temp_prefix(target.name), suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, keep)
        os.replace(tmp, target)
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
    created = [d for d in (staging_parent, *staging_parent.parents) if not d.exists()]  # deepest first
    tmp: Path | None = None
    try:
        staging_parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=staging_parent, prefix=_temp_prefix(out_dir.name), suffix=".tmp"))
        if fresh:  # the folder becomes out_dir: the mode mkdir gives, not mkdtemp's private 0o700
            os.chmod(tmp, 0o777 & ~_umask())
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
        _remove_staging(tmp)
        tmp = None
        for folder in created:  # the parents this call made, deepest first: a failure leaves nothing behind
            try:
                folder.rmdir()
            except OSError:
                break
        raise PlanError(f"cannot write into {out_dir}: {exc.strerror}; pick a writable directory") from None
    finally:
        _remove_staging(tmp)
    return [out_dir / name for name in files]


def _remove_staging(tmp: Path | None) -> None:
    if tmp is not None and tmp.is_dir():
        for leftover in tmp.iterdir():
            leftover.unlink(missing_ok=True)
        tmp.rmdir()


def read_metrics_jsonl(path: Path, required_keys: tuple[str, ...]) -> list[dict]:
    """The JSON lines of a ``ppplan launch`` metrics file, each holding ``required_keys``;
    a missing file, a malformed line, a missing key or a step a rank (else a stage) logged twice is a
    ``PlanError`` naming the line."""
    path = Path(path)
    records: list[dict] = []
    seen: dict[tuple, int] = {}
    for number, line in enumerate(read_text(path, "metrics file").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise PlanError(f"{path}:{number}: not a JSON line") from None
        except RecursionError:
            raise PlanError(f"{path}:{number}: nests too deeply to be a metrics line") from None
        except ValueError as exc:
            raise PlanError(f"{path}:{number}: {unreadable_value(exc)}") from None
        missing = [key for key in required_keys if not isinstance(record, dict) or key not in record]
        if missing:
            raise PlanError(f"{path}:{number}: missing key '{missing[0]}' (is this a ppplan launch metrics file?)")
        problem = metrics_value_problem(record)
        if problem:
            raise PlanError(f"{path}:{number}: {problem}")
        who = next((f"{field} {record[field]}" for field in ("rank", "stage") if field in record), "the run")
        key = (who, record.get("step"))
        if key in seen:  # a log appended twice, or two runs in one file: each step would count twice
            raise PlanError(f"{path}:{number}: step {key[1]} of {who} again (first at line {seen[key]}): "
                            "give one line per rank and step, from one run")
        seen[key] = number
        records.append(record)
    if not records:
        raise PlanError(f"{path} holds no metrics lines: run ppplan launch --metrics {path} first")
    return records


def extra_fields_problem(row: dict) -> str | None:
    """What is wrong with a ``csv.DictReader`` row that holds more fields than the header names (the reader
    keys the surplus ``None``): an unquoted comma in a cell, which shifts every later column. None when nothing is."""
    extra = row.get(None)
    return f"{len(extra)} field(s) beyond the header's columns (an unquoted comma?)" if extra else None


def metrics_plan_problem(records: list[dict], pp: int, world_size: int) -> str | None:
    """A pipeline stage or a rank the metrics name that a plan of ``pp`` stages on ``world_size`` ranks does not
    have (None when every one is the plan's): the metrics come from another plan than the one given."""
    for key, count, what in (("stage", pp, "pipeline stage"), ("rank", world_size, "rank")):
        outside = sorted({r[key] for r in records if key in r and not 0 <= r[key] < count})
        if outside:
            size = f"pp={pp}" if key == "stage" else f"{world_size} ranks"
            return f"metrics hold {what} {outside[0]} but the plan has {size}"
    return None


# the metrics line of DESIGN.md: integer fields, and non-negative finite numbers (loss may be null)
METRICS_INT_KEYS = ("step", "rank", "stage")
METRICS_NUMBER_KEYS = (
    "loss", "step_time_s", "tokens_per_s", "peak_memory_gib", "predicted_step_time_s", "predicted_peak_memory_gib",
)  # fmt: skip


def _finite(value: int | float) -> bool:
    """A finite number that converts to float (an integer of 400 digits does not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) or value < 0:
            return f"'{key}' must be a finite non-negative number, got {quoted(repr(value))}"
    return None
