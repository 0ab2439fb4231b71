"""``launch/devices.py``: a GPU plan on a machine without enough CUDA devices is refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from launch.devices import check_devices, visible_cuda_devices
from launch.emit.common import node_layout
from planner.cli.main import run
from profiles.errors import PlanError
from tests.launch.conftest import make_plan as make_gpu_plan
from tests.launch.runtime.runtime_plans import make_plan


def test_visible_devices_from_the_driver_and_cuda_visible_devices(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"0000:0{i}:00.0").mkdir()
    assert visible_cuda_devices(tmp_path, env={}) == 4
    assert visible_cuda_devices(tmp_path, env={"CUDA_VISIBLE_DEVICES": "1,3"}) == 2
    assert visible_cuda_devices(tmp_path, env={"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert visible_cuda_devices(tmp_path, env={"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5"}) == 4
    assert visible_cuda_devices(tmp_path / "absent", env={}) == 0


def test_gpu_plan_needs_cuda_devices() -> None:
    plan = make_gpu_plan(tp=8, pp=8, dp=1, cluster="dgx-h100", global_batch=64)  # 64 GPUs, 8 nodes of 8
    layout = node_layout(64, 8)
    with pytest.raises(PlanError, match="8 ranks per node, one H100-SXM5-80GB GPU .* no CUDA device"):
        check_devices(plan, layout, cuda_devices=0)
    with pytest.raises(PlanError, match="only 4 visible CUDA"):
        check_devices(plan, layout, cuda_devices=4)
    check_devices(plan, layout, cuda_devices=8)
    check_devices(make_plan(pp=2), node_layout(2, 8), cuda_devices=0)  # cpu-local: gloo processes


def test_launch_refuses_a_gpu_plan_here_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.setattr("launch.devices.NVIDIA_GPUS_DIR", tmp_path / "no-driver")
    plan = make_gpu_plan(tp=2, pp=2, dp=2, cluster="dgx-h100", global_batch=8, precision="fp32")
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan.model_dump_json())
    assert run(["launch", str(plan_path), "--metrics", str(tmp_path / "m.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the plan runs 8 ranks per node") and "CUDA" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
