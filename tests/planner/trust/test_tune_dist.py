"""``ppplan tune`` on cpu-local (multi-process): the top-k plans run, and the winner is the one
that measured fastest, recomputed here from the metrics files the trials left."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from profiles.loader import load_cluster, load_plan

pytestmark = pytest.mark.dist


def _measured_s(metrics: Path) -> float:
    """Median over steps after the first of the slowest stage's step time (by hand)."""
    per_step: dict[int, float] = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        per_step[record["step"]] = max(per_step.get(record["step"], 0.0), record["step_time_s"])
    return statistics.median(per_step[s] for s in sorted(per_step)[1:])


def test_tune_picks_the_measured_fastest_of_the_top_k(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "from planner.cli.main import main; main()", "tune", "--model", "tiny-gpt",
            "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "4", "--top-k", "2", "--steps", "3",
            "--metrics-dir", "trials", "--json"]  # fmt: skip
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    trials = doc["trials"]
    assert len(trials) == 2 and all(t["failure"] is None for t in trials)
    measured = [_measured_s(tmp_path / "trials" / f"trial{t['index']}.jsonl") for t in trials]
    assert [t["measured_step_time_s"] for t in trials] == pytest.approx(measured)
    fastest = min(range(len(trials)), key=lambda i: (measured[i], i))
    assert doc["winner"] == fastest
    assert doc["measured_ranking"] == sorted(range(len(trials)), key=lambda i: (measured[i], i))
    winner = load_plan(tmp_path / "tuned.json")
    assert winner.config.model_dump() == trials[fastest]["config"]
    calibrated = load_cluster(str(tmp_path / "cpu-local-calibrated.yaml"))
    assert calibrated.name == "cpu-local-calibrated" and winner.cluster == calibrated
    assert winner.estimate.step_time_s == pytest.approx(trials[fastest]["calibrated_step_time_s"])
