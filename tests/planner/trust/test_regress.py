"""``ppplan regress``: the shipped goldens pass; a perturbed cost constant fails with a
readable diff; ``--update`` rewrites goldens (into a temporary copy here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import costmodels.estimate
import planner.trust.regress
from planner.cli.main import run
from planner.trust.calibration import with_efficiency
from planner.trust.regress import DEFAULT_SUITE, load_case_file
from profiles.errors import PlanError
from profiles.loader import load_cluster

SMALL_CASE = "gpt3-1.7b_n32_gbs512_seq2048__dgx-a100-80g"
CLUSTERS = {"dgx-a100-80g", "dgx-h100", "dgx-h200", "dgx-b200"}
Capsys = pytest.CaptureFixture[str]


def test_suite_covers_the_required_clusters_and_models() -> None:
    cases = [load_case_file(p).case for p in sorted(DEFAULT_SUITE.glob("*.yaml"))]
    assert len(cases) >= 12
    assert {c.cluster for c in cases} >= CLUSTERS
    assert {"gpt3-1.7b", "gpt-1t", "llama3-405b", "bloom-176b"} <= {c.model for c in cases}


def test_suite_guards_expert_and_context_parallel_picks() -> None:
    """Issue 13's three plans are goldens: Mixtral-8x7B on 64 H100 (default stack and megatron-core,
    both with ep > 1), DeepSeek-V3 on 2048 H100 and Llama-3-70B at 128k on 256 H100 on megatron-core."""
    docs = {p.stem: load_case_file(p) for p in sorted(DEFAULT_SUITE.glob("*.yaml"))}
    mixtral = {d.case.stack: d for d in docs.values() if d.case.model == "mixtral-8x7b"}
    assert set(mixtral) == {None, "megatron-core"}
    assert mixtral["megatron-core"].golden is not None and mixtral["megatron-core"].golden.config["ep"] > 1
    assert mixtral[None].golden is not None and mixtral[None].golden.config["ep"] > 1
    long_context = docs["llama3-70b_n256_gbs32_seq131072__dgx-h100__megatron-core"]
    assert long_context.golden is not None and long_context.golden.config["cp"] > 1
    deepseek = docs["deepseek-v3_n2048_gbs15360_seq4096__dgx-h100__megatron-core"]
    assert deepseek.golden is not None and deepseek.golden.config["ep"] > 1
    for path in DEFAULT_SUITE.glob("*.yaml"):
        doc = load_case_file(path)
        assert doc.golden is not None, path.name
        assert path.stem == doc.case.name  # named by configuration and hardware


def test_shipped_goldens_pass(capsys: Capsys) -> None:
    code = run(["regress", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0, [c for c in doc["cases"] if c["status"] != "pass"]
    assert doc["passed"] and all(c["status"] == "pass" for c in doc["cases"])


def test_perturbed_adam_constant_fails_with_a_diff(monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    adam = costmodels.estimate.ADAM_STEP_BYTES_PER_PARAM
    monkeypatch.setattr(costmodels.estimate, "ADAM_STEP_BYTES_PER_PARAM", 100 * adam)  # optimizer step 100x slower
    assert run(["regress", "--case", SMALL_CASE]) == 1
    text = capsys.readouterr().out
    assert f"FAIL {SMALL_CASE}" in text
    assert "step_time_s:" in text and "tolerance" in text


def test_perturbed_cluster_efficiency_fails_with_a_diff(monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    def slower_gemms(name: str):
        return with_efficiency(load_cluster(name), {"gemm_max": 0.6})

    monkeypatch.setattr(planner.trust.regress, "load_cluster", slower_gemms)
    assert run(["regress", "--case", SMALL_CASE, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    (case,) = doc["cases"]
    assert case["status"] == "fail" and any(line.startswith("step_time_s: ") for line in case["diffs"])


def test_update_rewrites_goldens_in_a_copy(tmp_path: Path, capsys: Capsys) -> None:
    path = tmp_path / f"{SMALL_CASE}.yaml"
    shutil.copy(DEFAULT_SUITE / path.name, path)
    data = yaml.safe_load(path.read_text())
    data["golden"]["step_time_s"] *= 1.5
    data["golden"]["config"]["mbs"] = 99
    path.write_text(yaml.safe_dump(data))
    assert run(["regress", "--suite", str(tmp_path)]) == 1
    failure = capsys.readouterr().out
    assert "config.mbs: 99 ->" in failure and "step_time_s:" in failure

    assert run(["regress", "--suite", str(tmp_path), "--update"]) == 0
    rewritten = load_case_file(path)
    shipped = load_case_file(DEFAULT_SUITE / path.name)
    assert rewritten.golden == shipped.golden and rewritten.case == shipped.case
    assert path.read_text().startswith("# Regression case")
    assert run(["regress", "--suite", str(tmp_path)]) == 0


def test_case_without_golden_fails_until_updated(tmp_path: Path, capsys: Capsys) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text("case: {name: tiny, model: gpt3-1.7b, cluster: dgx-h100, gpus: 8, global_batch: 16, seq_len: 1024}\n")
    assert run(["regress", "--suite", str(tmp_path)]) == 1
    assert "no golden values yet" in capsys.readouterr().out
    assert run(["regress", "--suite", str(tmp_path), "--update"]) == 0
    assert load_case_file(path).golden is not None
    assert run(["regress", "--suite", str(tmp_path)]) == 0


def test_unknown_key_in_a_case_file_is_bad_input(tmp_path: Path, capsys: Capsys) -> None:
    (tmp_path / "bad.yaml").write_text("case: {name: x, model: gpt3-1.7b, cluster: dgx-h100, gpus: 8, global_batch: 8, seq_len: 8, gpu: 1}\n")
    assert run(["regress", "--suite", str(tmp_path)]) == 2
    assert "unknown key 'case.gpu'" in capsys.readouterr().err


def test_a_case_that_fixes_degrees_searches_only_those(tmp_path: Path, capsys: Capsys) -> None:
    """``degrees`` filters the case's search as ``ppplan search --tp`` does: gpt3-1.7b on 8 H100 with tp fixed at 2
    gets a golden at tp 2 (its open search's pick is tp 1); a degree name the search does not fix is bad input."""
    case = "case: {name: tiny, model: gpt3-1.7b, cluster: dgx-h100, gpus: 8, global_batch: 16, seq_len: 1024"
    path = tmp_path / "tiny.yaml"
    path.write_text(case + "}\n")
    assert run(["regress", "--suite", str(tmp_path), "--update"]) == 0
    assert load_case_file(path).golden.config["tp"] != 2
    path.write_text(case + ", degrees: {tp: [2]}}\n")
    assert run(["regress", "--suite", str(tmp_path), "--update"]) == 0
    assert load_case_file(path).golden.config["tp"] == 2
    assert "degrees: tp in {2}" in path.read_text().splitlines()[0]
    capsys.readouterr()
    path.write_text(case + ", degrees: {dp: [2]}}\n")
    assert run(["regress", "--suite", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err


def test_a_golden_figure_of_zero_is_bad_input(tmp_path: Path) -> None:
    """``compare`` states each change in % of the golden figure: a golden step time, MFU or peak of 0 is refused when
    the case file is read (was a ZeroDivisionError under ``ppplan regress``)."""
    source = next(DEFAULT_SUITE.glob("*.yaml"))
    doc = yaml.safe_load(source.read_text())
    doc["golden"]["step_time_s"] = 0.0
    (tmp_path / "case.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(PlanError, match="golden.step_time_s"):
        load_case_file(tmp_path / "case.yaml")
