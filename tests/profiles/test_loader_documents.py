"""``profiles.loader.read_document``: a YAML or JSON file that states one key twice is bad input (PyYAML and
``json`` would keep the last value and drop the first silently), while YAML's merge keys still merge."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiles.errors import PlanError
from profiles.loader import PRESET_DIR, read_document


def test_a_key_stated_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "stack.yaml").write_text("name: s\noverlap:\n  p2p: exposed\n  tp_comm: exposed\n  p2p: overlapped\n")
    with pytest.raises(PlanError, match=r"stack\.yaml: key 'p2p' is stated twice \(line 5\): keep one"):
        read_document(tmp_path / "stack.yaml")
    (tmp_path / "plan.json").write_text('{"config": {"tp": 2, "tp": 4}}')
    with pytest.raises(PlanError, match=r"plan\.json: key 'tp' is stated twice: keep one"):
        read_document(tmp_path / "plan.json")


def test_the_same_key_in_two_mappings_and_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text("a: {p2p: exposed}\nb: {p2p: overlapped}\nbase: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n")
    assert read_document(tmp_path / "ok.yaml") == {"a": {"p2p": "exposed"}, "b": {"p2p": "overlapped"},
                                                   "base": {"x": 1, "y": 2}, "d": {"x": 3, "y": 2}}


def test_every_shipped_file_states_each_key_once() -> None:
    files = sorted(PRESET_DIR.rglob("*.yaml")) + sorted(PRESET_DIR.rglob("*.json"))
    assert len(files) > 40
    for path in files:
        read_document(path)
