"""The error band every search/evaluate estimate carries (``planner.trust.error_bands``)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from planner.cli.main import run
from planner.cli.render import memory_band_line
from planner.trust.accuracy import percentile_nearest_rank
from planner.trust.calibration import with_efficiency
from planner.trust.error_bands import Band, ErrorBands, error_band_pct, load_bands, memory_error_band_pct
from planner.trust.validation import MemoryBand, memory_bands
from profiles.gpu_families import FamilyConstants, FamilyFit
from profiles.loader import load_cluster, load_gpu_families
from profiles.profile_schema import HardwareFingerprint
from profiles.schema import Estimate
from tests.costmodels.test_profile_times import _profile

HOPPER_FIT = {"gemm_max": 0.7, "gemm_half_dim": 300.0, "hbm": 0.9, "intra_node_collective": 1.0,
              "inter_node_collective": 1.0, "action_overhead_s": 0.003}
BANDS = ErrorBands(
    bands={"megatron-core": {"H100": Band(heldout_mape_pct=12.5, apriori_mape_pct=15.0, rows=40, sources=["a", "b"]),
                             "A100": Band(heldout_mape_pct=3.0, apriori_mape_pct=4.0, rows=4, sources=["a"])}},
    families={"H100": Band(heldout_mape_pct=20.0, apriori_mape_pct=25.0, rows=100, sources=["a", "b"]),
              "A100": Band(heldout_mape_pct=9.0, apriori_mape_pct=11.0, rows=50, sources=["a", "c"])},
)


def _families_with_hopper_fit(applied: bool = False):
    """The shipped families, the H100 family carrying HOPPER_FIT (not applied: the presets keep the
    a-priori constants, so only a cluster that sets them carries them)."""
    shipped = load_gpu_families()
    fit = FamilyFit(values=FamilyConstants(**HOPPER_FIT), applied=applied, applied_reason="test", rows=100,
                    sources=["a", "b"], heldout_mape_pct=20.0, fitted_mape_pct=10.0, apriori_mape_pct=25.0, command="test")
    families = [f.model_copy(update={"fit": fit if f.name == "H100" else None}) for f in shipped.families]
    return shipped.model_copy(update={"families": families})


FAMILIES = _families_with_hopper_fit()


def test_the_stack_and_family_cell_is_used_when_it_has_enough_rows() -> None:
    fitted = with_efficiency(load_cluster("dgx-h100"), HOPPER_FIT)
    assert error_band_pct("megatron-core", fitted, BANDS, FAMILIES) == 12.5
    assert error_band_pct("megatron-core", with_efficiency(load_cluster("dgx-h200"), HOPPER_FIT), BANDS, FAMILIES) == 12.5


def test_a_thin_cell_or_an_unvalidated_stack_falls_back_to_the_family() -> None:
    assert error_band_pct("megatron-core", load_cluster("dgx-a100-80g"), BANDS, FAMILIES) == 11.0  # 4 rows < 5; a priori
    assert error_band_pct("ppplan-torch", with_efficiency(load_cluster("dgx-h100"), HOPPER_FIT), BANDS, FAMILIES) == 20.0


def test_constants_other_than_the_fitted_ones_get_the_a_priori_band() -> None:
    """The shipped presets (fitted to nothing) and a user's own constants are out of sample for
    every row: their error is the a-priori one."""
    assert error_band_pct("megatron-core", load_cluster("dgx-h100"), BANDS, FAMILIES) == 15.0
    assert error_band_pct("ppplan-torch", load_cluster("dgx-h100"), BANDS, FAMILIES) == 25.0
    own = with_efficiency(load_cluster("dgx-h100"), {**HOPPER_FIT, "gemm_max": 0.71})
    assert error_band_pct("megatron-core", own, BANDS, FAMILIES) == 15.0


def test_no_band_without_published_runs_on_the_gpu_class() -> None:
    assert error_band_pct("megatron-core", load_cluster("dgx-b200"), BANDS, FAMILIES) is None
    assert error_band_pct("ppplan-torch", load_cluster("cpu-local"), BANDS, FAMILIES) is None


def _evaluate(capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    argv = ["evaluate", "--model", "gpt3-1.7b", "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "32",
            "--tp", "1", "--pp", "1", "--mbs", "4", "--json", *extra]
    assert run(argv) == 0
    return json.loads(capsys.readouterr().out)["estimate"]


def _shipped(stack: str | None, family: str) -> float:
    """The shipped band of the presets: held-out where the family's shipped fit is applied (the
    presets then carry its constants), else a priori."""
    bands = load_bands()
    cell = bands.families[family] if stack is None else bands.bands[stack][family]
    fit = load_gpu_families().family_of(family).fit
    return cell.heldout_mape_pct if fit is not None and fit.applied else cell.apriori_mape_pct


def test_evaluate_carries_the_shipped_band(capsys: pytest.CaptureFixture[str]) -> None:
    assert _evaluate(capsys)["error_band_pct"] == _shipped(None, "H100")  # ppplan-torch: the family's band
    assert _evaluate(capsys, "--stack", "megatron-core")["error_band_pct"] == _shipped("megatron-core", "H100")


def test_search_plans_carry_the_band(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["search", "--model", "gpt3-1.7b", "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "32",
            "--top-k", "2", "--json"]
    assert run(argv) == 0
    plans = json.loads(capsys.readouterr().out)
    assert {p["estimate"]["error_band_pct"] for p in plans} == {_shipped(None, "H100")}


def test_a_measured_profile_gets_no_band(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    h100 = HardwareFingerprint(device_kind="cuda", device_name="NVIDIA H100 80GB HBM3", torch_version="2.13.0",
                               cuda_version="12.8", cpu_model="x", num_threads=8)
    path = tmp_path / "p.json"
    path.write_text(_profile(hardware=h100, precision="bf16").model_dump_json())
    argv = ["evaluate", "--model", "tiny-gpt", "--cluster", "dgx-h100", "--gpus", "2", "--global-batch", "8",
            "--tp", "1", "--pp", "1", "--mbs", "4", "--precision", "bf16", "--profile", str(path), "--json"]
    assert run(argv) == 0
    assert json.loads(capsys.readouterr().out)["estimate"]["error_band_pct"] is None


def test_the_nearest_rank_percentile_by_hand() -> None:
    """ceil(p/100 * n)-th smallest: of 15, 20, 35, 40, 50 the 30th percentile is the 2nd (20), the 40th the 2nd
    (ceil 2.0), the 95th the 5th (50); of 1..20 the 95th is the 19th."""
    values = [35.0, 20.0, 50.0, 15.0, 40.0]
    assert percentile_nearest_rank(values, 30) == 20.0
    assert percentile_nearest_rank(values, 40) == 20.0
    assert percentile_nearest_rank(values, 95) == 50.0
    assert percentile_nearest_rank([float(v) for v in range(1, 21)], 95) == 19.0
    assert percentile_nearest_rank([float(v) for v in range(1, 101)], 7) == 7.0  # 7 * 100 / 100, no float drift
    for pct, bad in ((95, []), (0, values), (101, values)):
        with pytest.raises(ValueError):
            percentile_nearest_rank(bad, pct)


def test_the_memory_bands_by_hand() -> None:
    """Per stack over the rows with a reading: 20 readings under by 1..20 % give a 95th percentile of 19 %, a
    worst of 20 % and 15 rows under by more than 5 %; a row without a reading, or out of memory, is left out."""
    def row(stack: str, under: float | None, source: str = "s") -> SimpleNamespace:
        return SimpleNamespace(memory_under_pct=under, row=SimpleNamespace(stack=stack, source=source))
    rows = [row("a", float(u), "s1" if u % 2 else "s2") for u in range(1, 21)] + [row("a", None), row("b", -4.5)]
    bands = memory_bands(rows)
    assert bands["a"] == MemoryBand(under_p95_pct=19.0, under_max_pct=20.0, rows_under_5_pct=15, rows=20, sources=["s1", "s2"])
    assert bands["b"] == MemoryBand(under_p95_pct=-4.5, under_max_pct=-4.5, rows_under_5_pct=0, rows=1, sources=["s"])


def test_a_stack_memory_band_needs_five_readings_and_a_validated_gpu_class() -> None:
    bands = BANDS.model_copy(update={"memory": {
        "torchtitan": MemoryBand(under_p95_pct=9.3, under_max_pct=11.7, rows_under_5_pct=5, rows=20, sources=["t"]),
        "megatron-core": MemoryBand(under_p95_pct=3.0, under_max_pct=3.0, rows_under_5_pct=0, rows=4, sources=["m"])}})
    h100 = load_cluster("dgx-h100")
    assert memory_error_band_pct("torchtitan", h100, bands, FAMILIES) == 9.3
    assert memory_error_band_pct("megatron-core", h100, bands, FAMILIES) is None  # 4 readings: unvalidated
    assert memory_error_band_pct("ppplan-torch", h100, bands, FAMILIES) is None  # none
    assert memory_error_band_pct("torchtitan", load_cluster("cpu-local"), bands, FAMILIES) is None  # GPU readings


def test_an_error_bands_file_without_a_memory_table_still_loads(tmp_path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(BANDS.model_dump(exclude={"memory"})))
    assert load_bands(path).memory == {}


def test_the_memory_line_holds_the_band_against_the_headroom(capsys: pytest.CaptureFixture[str]) -> None:
    """A peak of 72 of 80 GiB leaves 10 % free: enough for a 9.3 % under-prediction, not for 12 %; a peak of 82 GiB
    exceeds the capacity; no band, no line."""
    base = Estimate.model_validate(_evaluate(capsys))
    at = base.model_copy(update={"peak_memory_gib": [72.0, 60.0], "memory_error_band_pct": 9.3})
    line = memory_band_line(at, 80.0)
    assert "under-predicted by at most 9.3 % of the reading" in line and "leaves 10.0 % of the 80.0 GiB free, enough" in line
    assert "NOT enough" in memory_band_line(at.model_copy(update={"memory_error_band_pct": 12.0}), 80.0)
    # over-predicted by 4.5 % of the reading: a reading is peak / 1.045, 78.5 GiB for 82 (fits), 80.4 GiB for 84
    over = at.model_copy(update={"memory_error_band_pct": -4.5})
    below = memory_band_line(over.model_copy(update={"peak_memory_gib": [82.0]}), 80.0)
    assert "over-predicted by at least 4.5 %" in below and "exceeds the 80.0 GiB by 2.5 %, enough" in below
    assert "exceeds the 80.0 GiB by 5.0 %, NOT enough" in memory_band_line(over.model_copy(update={"peak_memory_gib": [84.0]}), 80.0)
    assert memory_band_line(at.model_copy(update={"memory_error_band_pct": None}), 80.0) is None


def test_evaluate_and_search_carry_the_stack_memory_band(capsys: pytest.CaptureFixture[str]) -> None:
    """torchtitan has published memory readings (its reports); ppplan's own stack has none in the corpus."""
    shipped = load_bands().memory["torchtitan"].under_p95_pct
    assert _evaluate(capsys, "--stack", "torchtitan", "--zero", "3")["memory_error_band_pct"] == shipped
    assert _evaluate(capsys)["memory_error_band_pct"] is None
    argv = ["search", "--model", "gpt3-1.7b", "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "32",
            "--stack", "torchtitan", "--top-k", "2", "--json"]
    assert run(argv) == 0
    assert {p["estimate"]["memory_error_band_pct"] for p in json.loads(capsys.readouterr().out)} == {shipped}
