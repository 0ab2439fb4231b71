"""The error band every search/evaluate estimate carries (``planner.trust.error_bands``)."""

from __future__ import annotations

import json

import pytest

from planner.cli.main import run
from planner.trust.error_bands import Band, ErrorBands, error_band_pct, load_bands
from profiles.loader import load_cluster
from profiles.profile_schema import HardwareFingerprint
from tests.costmodels.test_profile_times import _profile

BANDS = ErrorBands(
    bands={"megatron-core": {"hopper": Band(heldout_mape_pct=12.5, rows=40, sources=["a", "b"]),
                             "ampere": Band(heldout_mape_pct=3.0, rows=4, sources=["a"])}},
    families={"hopper": Band(heldout_mape_pct=20.0, rows=100, sources=["a", "b"]),
              "ampere": Band(heldout_mape_pct=9.0, rows=50, sources=["a", "c"])},
)


def test_the_stack_and_family_cell_is_used_when_it_has_enough_rows() -> None:
    assert error_band_pct("megatron-core", load_cluster("dgx-h100"), BANDS) == 12.5
    assert error_band_pct("megatron-core", load_cluster("dgx-h200"), BANDS) == 12.5  # same family


def test_a_thin_cell_or_an_unvalidated_stack_falls_back_to_the_family() -> None:
    assert error_band_pct("megatron-core", load_cluster("dgx-a100-80g"), BANDS) == 9.0  # 4 rows < 5
    assert error_band_pct("ppplan-torch", load_cluster("dgx-h100"), BANDS) == 20.0


def test_no_band_without_published_runs_on_the_gpu_class() -> None:
    assert error_band_pct("megatron-core", load_cluster("dgx-b200"), BANDS) is None
    assert error_band_pct("ppplan-torch", load_cluster("cpu-local"), BANDS) is None


def _evaluate(capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    argv = ["evaluate", "--model", "gpt3-1.7b", "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "32",
            "--tp", "1", "--pp", "1", "--mbs", "4", "--json", *extra]
    assert run(argv) == 0
    return json.loads(capsys.readouterr().out)["estimate"]


def test_evaluate_carries_the_shipped_band(capsys: pytest.CaptureFixture[str]) -> None:
    shipped = load_bands()
    assert _evaluate(capsys)["error_band_pct"] == shipped.families["hopper"].heldout_mape_pct  # ppplan-torch: family
    core = _evaluate(capsys, "--stack", "megatron-core")["error_band_pct"]
    assert core == shipped.bands["megatron-core"]["hopper"].heldout_mape_pct


def test_search_plans_carry_the_band(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["search", "--model", "gpt3-1.7b", "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "32",
            "--top-k", "2", "--json"]
    assert run(argv) == 0
    plans = json.loads(capsys.readouterr().out)
    assert {p["estimate"]["error_band_pct"] for p in plans} == {load_bands().families["hopper"].heldout_mape_pct}


def test_a_measured_profile_gets_no_band(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    h100 = HardwareFingerprint(device_kind="cuda", device_name="NVIDIA H100 80GB HBM3", torch_version="2.13.0",
                               cuda_version="12.8", cpu_model="x", num_threads=8)
    path = tmp_path / "p.json"
    path.write_text(_profile(hardware=h100, precision="bf16").model_dump_json())
    argv = ["evaluate", "--model", "tiny-gpt", "--cluster", "dgx-h100", "--gpus", "2", "--global-batch", "8",
            "--tp", "1", "--pp", "1", "--mbs", "4", "--precision", "bf16", "--profile", str(path), "--json"]
    assert run(argv) == 0
    assert json.loads(capsys.readouterr().out)["estimate"]["error_band_pct"] is None
