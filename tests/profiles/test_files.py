"""``profiles/files.py``: text reading that turns binary into bad input, output checks, and
multi-file outputs that appear all at once or not at all."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from profiles.errors import PlanError
from profiles.files import check_outputs, metrics_value_problem, read_text, write_folder_atomic


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
