"""``launch/progress.py``: the metrics file read while ranks append to it, one progress record per step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from costmodels.flops import model_flops_per_iteration
from launch.progress import MetricsTail, ProgressTracker
from tests.launch.runtime.runtime_plans import make_plan


def _line(step: int, stage: int, step_time_s: float, peak_gib: float, loss: float | None = None) -> str:
    record = {"step": step, "rank": 2 * stage, "stage": stage, "loss": loss, "step_time_s": step_time_s,
              "tokens_per_s": 0.0, "peak_memory_gib": peak_gib, "predicted_step_time_s": 0.5,
              "predicted_peak_memory_gib": 0.2 + 0.1 * stage}  # fmt: skip
    return json.dumps(record) + "\n"


def test_tail_returns_only_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    tail = MetricsTail(path)
    assert tail.read_new() == []  # not there yet
    text = _line(0, 0, 1.0, 0.1)
    path.write_text(text + text[:20])  # a line being written
    assert [r["step"] for r in tail.read_new()] == [0]
    with path.open("a") as f:
        f.write(text[20:] + "not json\n")
    assert [r["step"] for r in tail.read_new()] == [0]  # the completed line; the bad one skipped
    assert tail.read_new() == []


def test_a_step_is_reported_once_every_stage_has_written_it() -> None:
    plan = make_plan(pp=2, global_batch=4, seq_len=32)
    tracker = ProgressTracker(plan)
    assert tracker.feed([json.loads(_line(0, 1, 0.8, 0.25, loss=6.9))]) == []
    (step0,) = tracker.feed([json.loads(_line(0, 0, 0.5, 0.3)), json.loads(_line(1, 0, 0.4, 0.31))])
    assert step0.step == 0 and step0.loss == 6.9
    assert step0.step_time_s == 0.8  # the slowest stage
    assert step0.tokens_per_s == pytest.approx(4 * 32 / 0.8)
    assert step0.peak_memory_gib == 0.3 and step0.predicted_peak_memory_gib == pytest.approx(0.3)
    flops = model_flops_per_iteration(plan.model, 4, 32)
    assert step0.mfu == pytest.approx(flops / 0.8 / (2 * plan.cluster.gpu.peak_tflops.fp32 * 1e12))
    (step1,) = tracker.feed([json.loads(_line(1, 1, 0.45, 0.26, loss=6.5))])
    assert (step1.step, step1.loss, step1.step_time_s) == (1, 6.5, 0.45)
