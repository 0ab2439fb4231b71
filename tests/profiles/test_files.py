"""``profiles/files.py``: text reading that turns binary into bad input, output checks, and
multi-file outputs that appear all at once or not at all."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from profiles.errors import PlanError
from profiles.files import check_outputs, metrics_value_problem, read_metrics_jsonl, read_text, write_atomic, write_folder_atomic
from profiles.loader import read_document


def test_read_text_refuses_binary_and_drops_a_bom(tmp_path: Path) -> None:
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfrun,model\r\na,b\r\n")
    assert read_text(tmp_path / "bom.csv") == "run,model\r\na,b\r\n"
    (tmp_path / "bin").write_bytes(b"ok\xff")
    with pytest.raises(PlanError, match=r"not UTF-8 text \(byte 2: 0xff\)"):
        read_text(tmp_path / "bin")
    (tmp_path / "nul").write_bytes(b"a\x00b")
    with pytest.raises(PlanError, match="NUL bytes"):
        read_text(tmp_path / "nul")
    with pytest.raises(PlanError, match="is a directory"):
        read_text(tmp_path)
    with pytest.raises(PlanError, match="metrics file .* not found"):
        read_text(tmp_path / "absent", "metrics file")


def test_folder_write_is_all_or_nothing(tmp_path: Path) -> None:
    files = {"run.sh": ("#!/bin/sh\n", 0o755), "plan.json": ("{}\n", 0o644)}
    fresh = tmp_path / "new" / "out"
    assert write_folder_atomic(fresh, files) == [fresh / "run.sh", fresh / "plan.json"]
    assert (fresh / "run.sh").read_text() == "#!/bin/sh\n" and stat.S_IMODE((fresh / "run.sh").stat().st_mode) == 0o755
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["out"]  # no staging folder left
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    (existing / "plan.json").mkdir()  # a destination that cannot be replaced
    with pytest.raises(PlanError, match="plan.json: it is a directory"):
        write_folder_atomic(existing, files)
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt", "plan.json"]  # run.sh not written either
    (existing / "plan.json").rmdir()
    write_folder_atomic(existing, files)
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt", "plan.json", "run.sh"]


def test_outputs_are_checked_together(tmp_path: Path) -> None:
    check_outputs(tmp_path / "a.json", None, tmp_path / "b.svg")
    with pytest.raises(PlanError, match="given for two outputs"):
        check_outputs(tmp_path / "a.json", tmp_path / "." / "a.json")
    with pytest.raises(PlanError, match="does not exist"):
        check_outputs(tmp_path / "a.json", tmp_path / "no" / "b.svg")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({}, None),
        ({"loss": None}, None),
        ({"step": True}, "'step' must be a non-negative integer"),
        ({"stage": -1}, "'stage' must be a non-negative integer"),
        ({"step_time_s": float("inf")}, "'step_time_s' must be a finite non-negative number"),
        ({"peak_memory_gib": "0.1"}, "'peak_memory_gib' must be a finite non-negative number"),
    ],
)
def test_metrics_values(changes: dict, problem: str | None) -> None:
    line = {"step": 0, "rank": 0, "stage": 0, "loss": 6.0, "step_time_s": 1.0, "tokens_per_s": 1.0,
            "peak_memory_gib": 0.1, "predicted_step_time_s": 1.0, "predicted_peak_memory_gib": 0.1}  # fmt: skip
    found = metrics_value_problem(json.loads(json.dumps({**line, **changes})))
    assert (found is None) if problem is None else (found is not None and found.startswith(problem))


def _drain(fifo: Path, keep: list[bytes], read: bool = True) -> threading.Thread:
    """A reader of ``fifo`` in a thread: reads it whole into ``keep``, or opens it and closes it at once."""
    def reader() -> None:
        with open(fifo, "rb") as handle:
            if read:
                keep.append(handle.read())
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread


def test_an_output_is_written_as_a_shells_redirection_would_but_whole(tmp_path: Path) -> None:
    """A FIFO (as /dev/null, a device) is written in place, not replaced by a file; a link's target is replaced
    and the link kept; an existing file keeps its permission bits; a new file gets the umask's; a read-only one is
    refused when the writer is not root; no temporary file is left."""
    fifo, got = tmp_path / "fifo", []
    os.mkfifo(fifo)
    reader = _drain(fifo, got)
    write_atomic(fifo, "plan")
    reader.join(10)
    assert got == [b"plan"] and stat.S_ISFIFO(fifo.lstat().st_mode)
    target, link = tmp_path / "real.json", tmp_path / "link.json"
    link.symlink_to(target.name)  # dangling: the write creates its target
    write_atomic(link, "one")
    assert link.is_symlink() and target.read_text() == "one"
    kept = tmp_path / "kept.json"
    kept.write_text("old")
    kept.chmod(0o640)
    write_atomic(kept, "new")
    assert kept.read_text() == "new" and stat.S_IMODE(kept.stat().st_mode) == 0o640
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "fresh.json", "x")
        assert stat.S_IMODE((tmp_path / "fresh.json").stat().st_mode) == 0o644
    finally:
        os.umask(umask)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "fresh.json", "kept.json", "link.json", "real.json"]
    if os.geteuid() != 0:  # root may write any file
        kept.chmod(0o444)
        with pytest.raises(PlanError, match="kept.json: the file is read-only"):
            write_atomic(kept, "newer")


def test_a_special_output_that_fails_is_a_one_line_error(tmp_path: Path) -> None:
    """The reader of a FIFO goes away: EPIPE, one line (the data exceeds the pipe's buffer, so the write meets it)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = _drain(fifo, [], read=False)
    with pytest.raises(PlanError, match="cannot write .*fifo: Broken pipe"):
        write_atomic(fifo, "x" * (4 << 20))
    reader.join(10)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_name_too_long_for_the_file_system_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="File name too long"):
        check_outputs(tmp_path / ("n" * 300 + ".json"))


def test_an_output_that_is_one_of_the_inputs_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model.yaml"
    model.write_text("name: x\n")
    with pytest.raises(PlanError, match="model.yaml is also an input of this command: write the output"):
        check_outputs(model, inputs=("tiny-gpt", model))
    (tmp_path / "alias.yaml").symlink_to(model.name)
    with pytest.raises(PlanError, match=r"alias.yaml is also an input of this command \(.*model.yaml\)"):
        check_outputs(tmp_path / "alias.yaml", inputs=(model,))
    check_outputs(tmp_path / "plan.json", inputs=("tiny-gpt", model, None))  # a preset name is no file


def test_a_folder_write_that_fails_removes_the_parents_it_made(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="File name too long"):
        write_folder_atomic(tmp_path / "new" / "deeper" / ("n" * 256), {"a.txt": ("a", 0o644)})
    assert list(tmp_path.iterdir()) == []
    long_name = tmp_path / ("n" * 250)  # a legal name: the temporary one is shortened, not refused
    write_folder_atomic(long_name, {"a.txt": ("a", 0o644)})
    umask = os.umask(0)
    os.umask(umask)
    assert (long_name / "a.txt").read_text() == "a" and stat.S_IMODE(long_name.stat().st_mode) == 0o777 & ~umask


def test_a_number_longer_than_python_reads_is_a_one_line_error(tmp_path: Path) -> None:
    huge = "9" * 5000
    (tmp_path / "m.jsonl").write_text('{"step": ' + huge + "}\n")
    with pytest.raises(PlanError, match=r"m.jsonl:1: a number of more than 4,300 digits"):
        read_metrics_jsonl(tmp_path / "m.jsonl", ("step",))
    for name, text in (("big.yaml", f"num_layers: {huge}\n"), ("big.json", '{"num_layers": ' + huge + "}")):
        (tmp_path / name).write_text(text)
        with pytest.raises(PlanError, match=rf"{name}: a number of more than 4,300 digits"):
            read_document(tmp_path / name)
