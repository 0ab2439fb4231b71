"""``ppplan validate`` against the published-runs corpus (profiles/calibration/public_runs.csv).

The targets are issue 12's, fixed: they are not today's figure plus a margin. Where the cost
model does not reach one yet, only that assertion is marked ``xfail(strict=True)`` with the
figure measured at this commit in its reason, so an improvement that reaches the target fails
the test until the mark is removed. Row counts per source are the corpus as shipped.

One run of ``ppplan validate --json --plot … --update --tables-dir …`` (about 95 CPU s) feeds
every test of the module.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import yaml

from planner.cli.main import run
from planner.trust.error_bands import CALIBRATION_DIR, ERROR_BANDS_NAME, GPU_FAMILIES_NAME
from planner.trust.published_runs import DEFAULT_RUNS_CSV
from planner.trust.validation import (
    TARGET_MEMORY_UNDER_PCT,
    TARGET_OVERALL_MAPE_PCT,
    TARGET_SOURCE_MAPE_PCT,
    TARGET_SOURCE_MIN_ROWS,
    TARGET_SWEEP_RHO,
    target_lines,
    validate,
)
from profiles.loader import GPU_FAMILIES_YAML

CORPUS_ROWS = 916
# independent source -> (priced with a metric, priced for memory only (out of memory, or a metric the cost model
# cannot price: corpus_rules.MEMORY_ONLY_CLUSTERS), skipped)
ROWS_PER_SOURCE = {
    "bigscience": (109, 6, 26),
    "deepseek-v3-report": (0, 0, 1),
    "dgxc-benchmarking": (208, 0, 0),
    "gpt-neox-20b": (1, 0, 0),
    "korthikanti22": (8, 0, 0),
    "llama3-paper": (0, 0, 3),
    "llm-foundry": (216, 0, 0),
    "megatron-lm-tests": (0, 6, 0),
    "megatron-readme-2407": (0, 0, 11),
    "mist-ae": (0, 0, 2),
    "mlperf-training": (53, 0, 0),
    "nemo-perf": (114, 0, 71),
    "opt-175b": (0, 0, 1),
    "torchtitan": (2, 18, 12),
    "zero-bubble-iclr24": (48, 0, 0),
}
# the dense rows of each source (issue 12's targets are on them), counted as ROWS_PER_SOURCE
DENSE_ROWS_PER_SOURCE = {
    "bigscience": (109, 6, 26), "dgxc-benchmarking": (88, 0, 0), "gpt-neox-20b": (1, 0, 0), "korthikanti22": (8, 0, 0),
    "llama3-paper": (0, 0, 2), "llm-foundry": (216, 0, 0), "megatron-lm-tests": (0, 6, 0), "megatron-readme-2407": (0, 0, 11),
    "mist-ae": (0, 0, 2),
    "mlperf-training": (28, 0, 0), "nemo-perf": (48, 0, 25), "opt-175b": (0, 0, 1), "torchtitan": (2, 12, 12),
    "zero-bubble-iclr24": (48, 0, 0),
}
# category -> (priced, skipped): mixture-of-experts (with or without cp) and long-context (cp > 1) rows
ROWS_PER_CATEGORY = {"dense": (548, 79), "moe": (97, 33), "long-context": (114, 15)}
SOURCES_WITH_TARGET = sorted(s for s, (n, _, _) in DENSE_ROWS_PER_SOURCE.items() if n >= TARGET_SOURCE_MIN_ROWS)
# Measured at this commit (held-out MAPE %, Spearman rho, memory under-prediction %), for the xfail reasons.
MISSED_SOURCE_MAPE: dict[str, float] = {}
SWEEPS = [
    "bigscience-tr11_h12288_L106_bf16", "bigscience-tr11_h12288_L96_fp16", "bigscience-tr11_h13312_L82_bf16",
    "bigscience-tr11_h13312_L84_fp16", "bigscience-tr11_h13824_L78_fp16", "bigscience-tr11_h13824_L84_fp16",
    "bigscience-tr11_h14336_L70_bf16", "bigscience-tr11_h14336_L72_fp16", "bigscience-tr8-104B_V100",
    "dgxc-1f6d9f4_nemotron4-340b_GB200", "dgxc-35a9aec_gpt3-175b_H100-SXM", "dgxc-35a9aec_nemotron4-15b_H100-SXM",
    "dgxc-35a9aec_nemotron4-340b_H100-SXM", "dgxc-8f5cbb3_gpt3-175b_H100-SXM", "dgxc-8f5cbb3_nemotron4-15b_H100-SXM",
    "dgxc-8f5cbb3_nemotron4-340b_H100-SXM", "llm-foundry_mpt-125m_A100-40GB", "llm-foundry_mpt-125m_A100-80GB",
    "llm-foundry_mpt-13b_A100-40GB", "llm-foundry_mpt-13b_A100-80GB", "llm-foundry_mpt-13b_H100-SXM",
    "llm-foundry_mpt-1b_A100-40GB", "llm-foundry_mpt-1b_A100-80GB", "llm-foundry_mpt-1b_H100-SXM",
    "llm-foundry_mpt-1b_H100-SXM_fp8", "llm-foundry_mpt-30b_A100-80GB", "llm-foundry_mpt-30b_H100-SXM",
    "llm-foundry_mpt-350m_A100-40GB", "llm-foundry_mpt-350m_A100-80GB", "llm-foundry_mpt-3b_A100-40GB",
    "llm-foundry_mpt-3b_A100-80GB", "llm-foundry_mpt-3b_H100-SXM", "llm-foundry_mpt-3b_H100-SXM_fp8",
    "llm-foundry_mpt-70b_H100-SXM", "llm-foundry_mpt-760m_A100-40GB", "llm-foundry_mpt-760m_A100-80GB",
    "llm-foundry_mpt-760m_H100-SXM", "llm-foundry_mpt-7b_A100-40GB", "llm-foundry_mpt-7b_A100-80GB",
    "llm-foundry_mpt-7b_H100-SXM", "mlperf-v3.0_NVIDIA_CoreWeave_gpt3-175b_H100-SXM",
    "mlperf-v3.1_NVIDIA_gpt3-175b_H100-SXM", "mlperf-v4.0_NVIDIA_gpt3-175b_H100-SXM", "zb_1.5B", "zb_14.6B",
    "zb_28.3B", "zb_6.2B",
]
MISSED_SWEEP_RHO = {
    "bigscience-tr11_h12288_L96_fp16": 0.3, "bigscience-tr11_h13312_L82_bf16": 0.3,
    "bigscience-tr11_h13312_L84_fp16": 0.41, "bigscience-tr11_h13824_L78_fp16": 0.75,
    "bigscience-tr11_h13824_L84_fp16": 0.0, "bigscience-tr11_h14336_L70_bf16": 0.7,
    "bigscience-tr11_h14336_L72_fp16": 0.51, "bigscience-tr8-104B_V100": 0.78,
    "llm-foundry_mpt-13b_A100-40GB": 0.58,
}
# Of those, the share of BigScience's re-measurements on which an exact predictor reaches rho 0.8 is under half
# (validate's rho_noise_ceiling against the source's 3.3 % repeat scatter): the target is out of reach there.
NOISE_LIMITED_SWEEPS = {"bigscience-tr11_h14336_L70_bf16": 0.49, "bigscience-tr8-104B_V100": 0.47}
MEMORY_SOURCES = ["bigscience", "megatron-lm-tests", "torchtitan", "zero-bubble-iclr24"]
MISSED_MEMORY = {"bigscience": 31.0, "torchtitan": 6.2}  # worst under-prediction of a dense row, %


def _xfail_if(missed: dict, key: str, what: str) -> list:
    if key not in missed:
        return []
    return [pytest.mark.xfail(strict=True, reason=f"cost model misses the target: {what} {missed[key]} at this commit")]


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One CLI run: the JSON document, stderr, the plot and the tables it wrote."""
    folder = tmp_path_factory.mktemp("validate")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = run(["validate", "--json", "--plot", str(folder / "plot.png"), "--update", "--tables-dir", str(folder)])
    assert code == 0, stderr.getvalue()
    return {"doc": json.loads(stdout.getvalue()), "err": stderr.getvalue(), "folder": folder}


@pytest.fixture(scope="module")
def doc(validated: dict) -> dict:
    return validated["doc"]


def _priced_per_source(doc: dict, category: str | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in doc["rows"]:
        if category is not None and row["category"] != category:
            continue
        counts[row["source"]] = counts.get(row["source"], 0) + 1
    return counts


# -- the corpus ----------------------------------------------------------------------------------


def test_every_csv_row_is_priced_or_skipped_with_a_reason(doc: dict) -> None:
    memory_only = [m for m in doc["memory"] if m["memory_only"]]
    assert len(doc["rows"]) + len(memory_only) + len(doc["skipped"]) == CORPUS_ROWS
    assert all(s["reason"] for s in doc["skipped"])
    assert len({r["id"] for r in doc["rows"]} | {s["id"] for s in doc["skipped"]} | {m["id"] for m in memory_only}) == CORPUS_ROWS


def _rows_per_source(doc: dict, category: str | None = None) -> dict[str, tuple[int, int, int]]:
    """source -> (priced with a metric, memory only, skipped), over one category or all."""
    def ours(entry: dict) -> bool:
        return category is None or entry["category"] == category

    priced = _priced_per_source(doc, category)
    memory_only: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for m in doc["memory"]:
        if m["memory_only"] and ours(m):
            memory_only[m["source"]] = memory_only.get(m["source"], 0) + 1
    for s in doc["skipped"]:
        if ours(s):
            skipped[s["source"]] = skipped.get(s["source"], 0) + 1
    return {s: (priced.get(s, 0), memory_only.get(s, 0), skipped.get(s, 0))
            for s in set(priced) | set(skipped) | set(memory_only)}


def test_rows_per_source(doc: dict) -> None:
    assert _rows_per_source(doc) == ROWS_PER_SOURCE
    assert _rows_per_source(doc, "dense") == DENSE_ROWS_PER_SOURCE


def test_corpus_reaches_150_priced_rows_from_8_independent_sources(doc: dict) -> None:
    priced = _priced_per_source(doc)
    assert len(doc["rows"]) >= 150
    assert len(priced) >= 8


def test_moe_and_long_context_rows_are_priced_apart_and_never_fitted_on(doc: dict) -> None:
    """Issue 13: mixture-of-experts and context-parallel rows are priced with their category; the GPU
    families' constants are fitted on dense rows only, so every such row is held out by construction."""
    found = {c: (sum(1 for r in doc["rows"] if r["category"] == c), sum(1 for s in doc["skipped"] if s["category"] == c))
             for c in ROWS_PER_CATEGORY}
    assert found == ROWS_PER_CATEGORY
    # megatron-core's MoE host floor was fitted on two rows: in sample, out of every MAPE
    fit_rows = {r["id"] for r in doc["stack_fit_rows"]}
    assert sorted((r["source"], r["category"]) for r in doc["stack_fit_rows"]) == [("nemo-perf", "moe")] * 2
    for row in doc["rows"]:
        summary = doc["fitted_constants"][row["gpu_family"]]
        if row["category"] == "dense" or not summary["fitted"]:
            continue
        if summary["heldout_mape_pct"] < summary["apriori_mape_pct"]:  # the family's fit ships
            basis = f"{row['gpu_family']} fit on dense rows (never saw {row['category']} rows)"
            if row["id"] in fit_rows:
                basis += "; in sample: megatron-core's moe_host_s_per_operator was fitted on this row"
            assert row["heldout_basis"] == basis
            assert row["predicted"] == row["predicted_fitted"]
        else:
            assert row["heldout_basis"].startswith(f"a priori: the {row['gpu_family']} fit, held out, prices its dense rows")
            assert row["predicted"] == row["predicted_apriori"]
    for family, summary in doc["fitted_constants"].items():
        assert summary["rows"] == sum(1 for r in doc["rows"] if r["gpu_family"] == family and r["category"] == "dense")
    per_category = doc["mape_pct_per_category"]["heldout"]
    for category in ROWS_PER_CATEGORY:
        errors = [abs(r["error_pct"]) for r in doc["rows"] if r["category"] == category and r["id"] not in fit_rows]
        assert per_category[category] == pytest.approx(sum(errors) / len(errors), abs=1e-2)
    assert not any("not modelled yet: mixture" in s["reason"] or "context parallelism" in s["reason"] for s in doc["skipped"])


def test_every_priced_row_lists_its_cluster_preset_and_the_corpus_derivations(doc: dict) -> None:
    for row in doc["rows"]:
        assert any(a.startswith("cluster preset ") for a in row["assumptions"]), row["id"]
    llm_foundry = next(r for r in doc["rows"] if r["source"] == "llm-foundry")
    assert llm_foundry["stack"] == "torchtitan"
    assert any("Composer" in a for a in llm_foundry["assumptions"])


# -- the document --------------------------------------------------------------------------------


def test_document_shape_and_notes(validated: dict, doc: dict) -> None:
    assert "leave-one-source-out" in validated["err"]
    for key in ("mape_pct", "mape_pct_fitted", "mape_pct_apriori"):
        assert set(doc[key]) == {"overall", "per_source"}
        assert set(doc[key]["per_source"]) == set(_priced_per_source(doc, "dense"))
    for row in doc["rows"]:
        assert {"run", "source", "metric", "predicted", "measured", "error_pct", "assumptions"} <= set(row)
        assert row["error_pct"] == pytest.approx(100 * (row["predicted"] - row["measured"]) / row["measured"], abs=1e-2)


def test_mape_is_the_mean_absolute_error_of_the_rows(doc: dict) -> None:
    dense = [r for r in doc["rows"] if r["category"] == "dense"]  # mape_pct is issue 12's figure: the dense rows
    errors = [abs(r["error_pct"]) for r in dense]
    assert doc["mape_pct"]["overall"] == pytest.approx(sum(errors) / len(errors), abs=1e-2)
    zb = [abs(r["error_pct"]) for r in dense if r["source"] == "zero-bubble-iclr24"]
    assert doc["mape_pct"]["per_source"]["zero-bubble-iclr24"] == pytest.approx(sum(zb) / len(zb), abs=1e-2)


def test_the_fit_lowers_the_squared_log_error_it_minimises_on_every_fitted_family(doc: dict) -> None:
    """In sample the fitted constants must do at least as well as the a-priori ones on the fit's
    own objective (sum of squared log errors; every metric is a power ±1 of the step time)."""
    for family, summary in doc["fitted_constants"].items():
        rows = [r for r in doc["rows"] if r["gpu_family"] == family and r["category"] == "dense"]
        fitted = sum(math.log(r["predicted_fitted"] / r["measured"]) ** 2 for r in rows)
        apriori = sum(math.log(r["predicted_apriori"] / r["measured"]) ** 2 for r in rows)
        if summary["fitted"]:
            assert fitted <= apriori * (1 + 1e-6), family
        else:
            assert fitted == pytest.approx(apriori), family


def test_a_family_with_one_source_is_not_fitted_and_priced_a_priori(doc: dict) -> None:
    volta = doc["fitted_constants"]["V100"]
    assert not volta["fitted"] and volta["sources"] == ["bigscience"] and volta["terms"] == volta["a_priori"]
    rows = [r for r in doc["rows"] if r["gpu_family"] == "V100"]
    assert rows and all(r["predicted"] == r["predicted_apriori"] for r in rows)
    assert all(r["heldout_basis"].startswith("a priori") for r in rows)


def test_held_out_rows_are_priced_without_their_source(doc: dict) -> None:
    """The held-out fit never saw the row's source; the held-out figure is that fit or the a-priori
    prediction, whichever the family's *other* sources say ships (their held-out-fit MAPE below
    their a-priori MAPE), recomputed here from the rows."""
    def mape(rows: list[dict], key: str) -> float:
        return sum(abs(r[key] / r["measured"] - 1) for r in rows) / len(rows)

    dense = [r for r in doc["rows"] if r["category"] == "dense"]
    choices = set()
    for row in dense:
        family = row["gpu_family"]
        if not doc["fitted_constants"][family]["fitted"]:
            continue
        others = [r for r in dense if r["gpu_family"] == family and r["source"] != row["source"]]
        ships_fit = mape(others, "predicted_heldout_fit") < mape(others, "predicted_apriori")
        choices.add(ships_fit)
        if ships_fit:
            assert row["heldout_basis"] == f"{family} fit without {row['source']}"
            assert row["predicted"] == row["predicted_heldout_fit"]
        else:
            assert row["heldout_basis"].startswith(f"a priori: the {family} fit, held out, prices its other sources")
            assert row["predicted"] == row["predicted_apriori"]
    assert choices == {True, False}  # both arms are exercised by the corpus (A100 ships a priori, H100 its fit)


# -- the targets (fixed; xfail where the cost model misses them) ------------------------------------


def test_overall_heldout_mape_within_target(doc: dict) -> None:
    assert doc["mape_pct"]["overall"] <= TARGET_OVERALL_MAPE_PCT


@pytest.mark.parametrize("source", [pytest.param(s, marks=_xfail_if(MISSED_SOURCE_MAPE, s, "held-out MAPE %"))
                                    for s in SOURCES_WITH_TARGET])
def test_heldout_mape_of_every_source_with_enough_rows(doc: dict, source: str) -> None:
    assert doc["mape_pct"]["per_source"][source] <= TARGET_SOURCE_MAPE_PCT


def test_the_sweeps_are_the_corpus_sweeps(doc: dict) -> None:
    assert sorted(s["sweep"] for s in doc["sweeps"]) == sorted(SWEEPS)


def test_sweeps_of_a_source_with_repeats_carry_what_an_exact_predictor_scores(doc: dict) -> None:
    # BigScience read ten tr11/tr8 layouts more than once (planner.trust.repeat_noise); no other source did
    assert list(doc["repeat_noise"]) == ["bigscience"]
    assert doc["repeat_noise"]["bigscience"]["dof"] == 16
    # E|exp(sigma z) - 1| at BigScience's 3.35 % scatter: ~ 3.35 * sqrt(2 / pi)
    assert doc["repeat_noise"]["bigscience"]["mape_floor_pct"] == pytest.approx(2.67, abs=0.01)
    for s in doc["sweeps"]:
        ceiling = s["rho_noise_ceiling"]
        if s["source"] != "bigscience":
            assert ceiling is None
            continue
        assert 0.0 < ceiling["expected_rho"] <= 1.0 and 0.0 <= ceiling["share_reaching_target"] <= 1.0
    # the 42-layout 181B sweep spans far more than 3 % per reading: an exact predictor always reaches 0.8 on it
    big = next(s for s in doc["sweeps"] if s["sweep"] == "bigscience-tr11_h14336_L72_fp16")
    assert big["rho_noise_ceiling"]["share_reaching_target"] >= 0.99
    for sweep, share in NOISE_LIMITED_SWEEPS.items():
        found = next(s for s in doc["sweeps"] if s["sweep"] == sweep)
        assert found["rho_noise_ceiling"]["share_reaching_target"] == pytest.approx(share, abs=0.01)


def test_the_pick_loses_nothing_where_it_is_the_measured_best(doc: dict) -> None:
    # (a pick ranked below a measured best can still lose nothing: zero-bubble's 28.3B sweep measured two rows alike)
    for s in doc["sweeps"]:
        assert s["pick_regret_pct"] >= 0.0
        if s["measured_best_predicted_rank"] == 1:
            assert s["pick_regret_pct"] == 0.0, s["sweep"]
    losses = {s["sweep"]: s["pick_regret_pct"] for s in doc["sweeps"]}
    assert losses["zb_28.3B"] == 0.0 and losses["bigscience-tr11_h14336_L72_fp16"] > 0.0


def _rho_reason(sweep: str) -> str:
    share = NOISE_LIMITED_SWEEPS.get(sweep)
    return "Spearman rho" if share is None else f"(noise-limited: an exact predictor reaches 0.8 in {share:.0%}) Spearman rho"


@pytest.mark.parametrize("sweep", [pytest.param(s, marks=_xfail_if(MISSED_SWEEP_RHO, s, _rho_reason(s))) for s in SWEEPS])
def test_rank_correlation_within_every_sweep(doc: dict, sweep: str) -> None:
    found = next(s for s in doc["sweeps"] if s["sweep"] == sweep)
    assert found["spearman_rho"] is not None and found["spearman_rho"] >= TARGET_SWEEP_RHO


@pytest.mark.parametrize("source", [pytest.param(s, marks=_xfail_if(MISSED_MEMORY, s, "worst memory under-prediction %"))
                                    for s in MEMORY_SOURCES])
def test_memory_is_not_under_predicted(doc: dict, source: str) -> None:
    under = [m["under_prediction_pct"] for m in doc["memory"]
             if m["source"] == source and m["category"] == "dense" and not m["oom"]]
    assert under and max(under) <= TARGET_MEMORY_UNDER_PCT


@pytest.mark.xfail(strict=True, reason="cost model misses the target: 1 of 6 out-of-memory rows called feasible at this commit")
def test_no_out_of_memory_row_is_called_feasible(doc: dict) -> None:
    ooms = [m for m in doc["memory"] if m["oom"]]
    assert len(ooms) == 6
    assert [m["run"] for m in ooms if m["predicted_fits"]] == []


# -- the plot and the shipped tables ----------------------------------------------------------------


def test_plot_is_a_png(validated: dict) -> None:
    data = (validated["folder"] / "plot.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000


def test_shipped_tables_are_the_ones_validate_writes(validated: dict) -> None:
    """``profiles/calibration/error_bands.yaml`` and ``profiles/gpu_families.yaml`` hold what
    ``ppplan validate --update`` writes for this corpus and cost model: regenerate them after a
    cost-model change."""
    for name, shipped_path in ((ERROR_BANDS_NAME, CALIBRATION_DIR / ERROR_BANDS_NAME), (GPU_FAMILIES_NAME, GPU_FAMILIES_YAML)):
        written = yaml.safe_load((validated["folder"] / name).read_text())
        shipped = yaml.safe_load(shipped_path.read_text())
        assert _same_table(written, shipped), f"{name} is stale: run `ppplan validate --update`"


def _same_table(written: object, shipped: object) -> bool:
    """Equal, numbers to 1e-6 relative: a fitted constant's last printed digit depends on the platform's
    floating point (numpy 2.4.6 here fits B200's gemm_half_dim 901.028343 where the shipped file says
    901.028344); a table a cost-model change made stale moves far more than that."""
    if isinstance(written, dict) and isinstance(shipped, dict):
        return written.keys() == shipped.keys() and all(_same_table(written[k], shipped[k]) for k in written)
    if isinstance(written, list) and isinstance(shipped, list):
        return len(written) == len(shipped) and all(_same_table(a, b) for a, b in zip(written, shipped))
    numbers = (int, float)
    if isinstance(written, numbers) and isinstance(shipped, numbers) and not isinstance(written, bool):
        return written == pytest.approx(shipped, rel=1e-6, abs=1e-12)
    return written == shipped


def test_the_shipped_fits_carry_their_provenance(validated: dict, doc: dict) -> None:
    """Each fitted family's block in gpu_families.yaml is the fit validate reports: its rows, sources
    and errors, and applied only where its held-out error beats the a-priori one."""
    written = yaml.safe_load((validated["folder"] / GPU_FAMILIES_NAME).read_text())
    blocks = {f["name"]: f.get("fit") for f in written["families"]}
    for family, summary in doc["fitted_constants"].items():
        block = blocks[family]
        if not summary["fitted"]:
            assert block is None, family
            continue
        assert block["values"] == pytest.approx(summary["terms"]) and block["rows"] == summary["rows"]
        assert block["sources"] == summary["sources"] and block["heldout_mape_pct"] == summary["heldout_mape_pct"]
        assert block["applied"] == (summary["heldout_mape_pct"] < summary["apriori_mape_pct"]), family


def test_error_bands_are_the_heldout_mape_of_their_rows(validated: dict, doc: dict) -> None:
    bands = yaml.safe_load((validated["folder"] / ERROR_BANDS_NAME).read_text())
    # the bands come from the dense rows, as the fits do
    rows = [r for r in doc["rows"] if r["stack"] == "megatron-core" and r["gpu_family"] == "H100" and r["category"] == "dense"]
    cell = bands["bands"]["megatron-core"]["H100"]
    assert cell["rows"] == len(rows)
    assert cell["heldout_mape_pct"] == pytest.approx(sum(abs(r["error_pct"]) for r in rows) / len(rows), abs=0.01)
    apriori = [abs(100 * (r["predicted_apriori"] - r["measured"]) / r["measured"]) for r in rows]
    assert cell["apriori_mape_pct"] == pytest.approx(sum(apriori) / len(apriori), abs=0.01)


# -- bad input ------------------------------------------------------------------------------------


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    return err


def test_missing_runs_file_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(["validate", "--runs", str(tmp_path / "nope.csv")]) == 2
    assert "file not found" in _one_error_line(capsys)


def test_runs_csv_without_the_corpus_columns_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    path.write_text("source,run,layers\nx,y,2\n")
    assert run(["validate", "--runs", str(path)]) == 2
    assert "missing columns" in _one_error_line(capsys)


def test_runs_csv_that_is_not_text_is_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    path.write_bytes(b"\xff\xfe\x00\x81garbage\x00")
    assert run(["validate", "--runs", str(path)]) == 2
    assert "cannot read published runs" in _one_error_line(capsys)


def test_plot_into_a_missing_folder_fails_before_any_work(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(["validate", "--plot", str(tmp_path / "no" / "plot.png")]) == 2
    assert "does not exist" in _one_error_line(capsys)


def test_update_needs_the_fit(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["validate", "--no-fit", "--update"]) == 2
    assert "--no-fit" in _one_error_line(capsys)


def test_rows_called_infeasible_split_into_above_the_gpu_and_within_the_margin(doc: dict) -> None:
    """A dense row priced above its GPU's memory is called infeasible whatever the safety margin; the rows that ran
    but are called infeasible are those and the ones only the margin rejects."""
    dense = [r for r in doc["rows"] if r["category"] == "dense"]
    over = [r for r in dense if r["predicted_peak_over_hbm"]]
    assert over and all(not r["predicted_fits"] for r in over)
    assert sum(1 for r in dense if not r["predicted_fits"]) > len(over)  # the 10 % margin rejects rows that fit the GPU too


def test_the_target_line_counts_both_kinds_of_infeasible_rows(tmp_path: Path) -> None:
    """Three rows that ran: NeMo's Llama 3 70B on 64 GB200 (priced at 187 GiB of the GPU's 185), an MPT-30B on
    8 H100 priced at 91 % of its 80 GB (inside the 10 % margin) and an MPT-13B on 128 H100 (priced at 39 %)."""
    picks = ("LLAMA3_70B DGX-GB200 FP8-CS 64GPU", "MPT-30b seq2048 8xh100_80gb mbs3 ga21 amp_bf16",
             "MPT-13b seq2048 128xh100_80gb mbs16 ga1 amp_bf16")
    lines = DEFAULT_RUNS_CSV.read_text().splitlines()
    chosen = [line for line in lines[1:] if any(f",{p}," in line or f",{p} ," in line for p in picks)]
    assert len(chosen) == 3
    (tmp_path / "runs.csv").write_text("\n".join([lines[0], *chosen]) + "\n")
    report = validate(tmp_path / "runs.csv", fit=False)
    line = next(t for t in target_lines(report) if t.startswith("rows that ran but are called infeasible"))
    assert line.startswith("rows that ran but are called infeasible: 2 of 3 ")
    assert line.endswith(": 1 priced above the GPU's memory, 1 within the fit check's safety margin")
