"""``ppplan calibrate``: synthetic runs priced with known efficiency constants are
recovered by the fit, and the held-out error drops.

Synthetic truth on dgx-a100-80g: gemm_max 0.55, gemm_half_dim 180,
intra-node collectives 0.65, inter-node 0.55, step overhead 20 ms (a-priori
start, the A100 family's constants: 0.70, 96, 0.80, 0.80, 0). Twelve gpt3-1.7b runs vary the GEMM sizes
(seq 128–2048, tp 1–8), the tiers crossed (TP inside a node, DP and PP across
two nodes) and the step length, so every term is identifiable. Tolerances:
gemm_max, the collective efficiencies and the overhead within 3 %,
gemm_half_dim (weakly identified, pulled slightly by the ridge) within 10 %.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from costmodels.estimate import estimate
from costmodels.layout import uniform_split
from planner.cli.main import run
from planner.trust.calibration import MeasuredRun, calibrate_runs, estimate_with, fit_efficiency, with_efficiency
from planner.trust.calibration_io import _csv_run
from profiles.errors import PlanError
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ParallelConfig, Plan, TrainSpec

TRUE = {"gemm_max": 0.55, "gemm_half_dim": 180.0, "intra_node_collective": 0.65,
        "inter_node_collective": 0.55, "step_overhead_s": 0.02}
TOLERANCE = {"gemm_max": 0.03, "gemm_half_dim": 0.10, "intra_node_collective": 0.03,
             "inter_node_collective": 0.03, "step_overhead_s": 0.03}
# tp, pp, dp, mbs, global batch, seq, zero
SHAPES = [
    (1, 1, 1, 1, 4, 2048, 0), (1, 1, 1, 1, 1, 256, 0), (1, 1, 1, 1, 1, 128, 0), (8, 1, 1, 1, 4, 2048, 0),
    (4, 1, 1, 2, 8, 1024, 0), (1, 1, 16, 1, 16, 512, 0), (1, 1, 16, 1, 32, 1024, 1), (1, 2, 8, 1, 32, 1024, 0),
    (2, 4, 1, 1, 8, 2048, 0), (8, 1, 2, 1, 8, 1024, 0), (1, 1, 1, 8, 8, 2048, 0), (2, 1, 8, 1, 8, 512, 0),
]
MODEL = "gpt3-1.7b"
CLUSTER = "dgx-a100-80g"


def _config(tp: int, pp: int, dp: int, mbs: int, batch: int, zero: int) -> ParallelConfig:
    return ParallelConfig(tp=tp, pp=pp, dp=dp, mbs=mbs, num_microbatches=batch // (dp * mbs), zero=zero,
                          stage_layers=uniform_split(24, pp))


def synthetic_runs() -> list[MeasuredRun]:
    model, cluster = load_model(MODEL), load_cluster(CLUSTER)
    runs = []
    for i, (tp, pp, dp, mbs, batch, seq, zero) in enumerate(SHAPES):
        cfg, train = _config(tp, pp, dp, mbs, batch, zero), TrainSpec(global_batch=batch, seq_len=seq)
        probe = MeasuredRun(f"run{i:02d}", f"run{i:02d}", model, cluster, train, cfg, 1.0)
        runs.append(MeasuredRun(probe.run, probe.group, model, cluster, train, cfg, estimate_with(probe, TRUE).step_time_s))
    return runs


def test_fit_recovers_the_constants_that_generated_the_runs() -> None:
    fit = fit_efficiency(synthetic_runs())
    for term, true in TRUE.items():
        assert fit.terms[term] == pytest.approx(true, rel=TOLERANCE[term]), term
    assert fit.rms_log_error_before > 0.3 and fit.rms_log_error_after < 0.005


def test_heldout_error_drops() -> None:
    report = calibrate_runs(synthetic_runs(), folds=4)
    before, after = report.mape(report.apriori_s), report.mape(report.heldout_s)
    assert before > 25.0  # the a-priori constants are far from the synthetic truth
    assert after < 1.0  # each fold's fit predicts the runs it never saw


def test_term_without_evidence_stays_at_its_prior() -> None:
    single_node = [r for r in synthetic_runs() if r.gpus <= 8]  # no cross-node traffic at all
    fit = fit_efficiency(single_node)
    assert fit.terms["inter_node_collective"] == pytest.approx(0.80, abs=1e-3)


def _write_csv(path: Path, runs: list[MeasuredRun]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "model", "global_batch", "seq_len", "tp", "pp", "dp", "mbs", "zero", "step_time_s", "cluster"])
        for r in runs:
            c = r.config
            writer.writerow([r.run, MODEL, r.train.global_batch, r.train.seq_len, c.tp, c.pp, c.dp, c.mbs, c.zero,
                             f"{r.step_time_s:.9g}", CLUSTER])


def test_cli_fits_csv_runs_and_writes_a_loadable_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs_csv, out = tmp_path / "runs.csv", tmp_path / "calibrated.yaml"  # --out never creates folders (profiles.files)
    _write_csv(runs_csv, synthetic_runs())
    code = run(["calibrate", str(runs_csv), "--cluster", CLUSTER, "--out", str(out), "--folds", "3", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["mape_pct"]["heldout"]["after"] < 1.0 < doc["mape_pct"]["heldout"]["before"]
    cluster = load_cluster(str(out))
    assert cluster.name == f"{CLUSTER}-calibrated"
    assert cluster.efficiency.gemm_max == pytest.approx(TRUE["gemm_max"], rel=TOLERANCE["gemm_max"])
    assert "run00" in cluster.provenance["runs"] and cluster.provenance["date"]
    assert "heldout_mape_pct" in cluster.provenance and "fit_rms_log_error" in cluster.provenance
    assert not list(out.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_cli_fits_launch_metrics_with_their_plans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Three `ppplan launch` metrics files (two stages each, step 0 slower: warm-up) and their plans."""
    model, cluster = load_model(MODEL), load_cluster(CLUSTER)
    truth = with_efficiency(cluster, {"gemm_max": 0.55})
    files, plans = [], []
    for i, (tp, pp, dp, batch) in enumerate([(1, 2, 1, 4), (2, 2, 2, 8), (4, 2, 1, 8)]):
        cfg, train = _config(tp, pp, dp, 1, batch, 0), TrainSpec(global_batch=batch, seq_len=2048)
        stack = load_stack(cfg.stack)  # calibrate prices each plan on its own stack
        plan = Plan(model=model, cluster=cluster, train=train, config=cfg, estimate=estimate(model, cluster, train, cfg, stack=stack))
        step = estimate(model, truth, train, cfg, stack=stack).step_time_s
        plan_path, metrics_path = tmp_path / f"plan{i}.json", tmp_path / f"m{i}.jsonl"
        plan_path.write_text(plan.model_dump_json())
        lines = [{"step": s, "rank": stage * tp * dp, "stage": stage, "loss": None, "step_time_s": step * (3 if s == 0 else 1),
                  "tokens_per_s": 1.0, "peak_memory_gib": 10.0, "predicted_step_time_s": 1.0, "predicted_peak_memory_gib": 9.0}
                 for s in range(4) for stage in range(pp)]
        metrics_path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        files.append(str(metrics_path))
        plans += ["--plan", str(plan_path)]
    code = run(["calibrate", *files, *plans, "--cluster", CLUSTER, "--terms", "gemm_max", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(captured.out)
    assert doc["terms"]["gemm_max"]["after"] == pytest.approx(0.55, rel=0.01)
    assert all(r["measured_step_time_s"] == pytest.approx(r["fitted_s"], rel=0.01) for r in doc["runs"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--terms", "gemm_speed"], "unknown efficiency term"),
        (["--plan", "a.json", "--plan", "b.json"], "--plan"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    metrics = tmp_path / "m.jsonl"
    metrics.write_text(json.dumps({"step": 0, "step_time_s": 1.0}) + "\n")
    runs_csv = tmp_path / "runs.csv"
    _write_csv(runs_csv, synthetic_runs()[:2])
    args = [str(runs_csv)] + ([str(metrics)] if "--plan" in extra else [])  # one metrics file, two plans
    assert run(["calibrate", *args, "--cluster", CLUSTER, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1


def test_csv_row_with_an_illegal_config_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs_csv = tmp_path / "runs.csv"
    runs_csv.write_text("run,model,global_batch,seq_len,tp,pp,dp,mbs,step_time_s\nbad,gpt3-1.7b,8,2048,5,1,1,1,1.0\n")
    assert run(["calibrate", str(runs_csv), "--cluster", CLUSTER]) == 2
    err = capsys.readouterr().err
    assert f"{runs_csv}:2" in err and "tp=5" in err


def test_csv_rows_state_their_activation_offload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The optional ``offload_layers`` column prices a measured run as ``evaluate --offload-layers`` does: on a cluster
    without a host link that is the host-link error on the row's line, and a negative count names the line."""
    header = "run,model,global_batch,seq_len,tp,pp,dp,mbs,step_time_s,offload_layers,stack\n"
    row = dict(zip(header.strip().split(","), "r,tiny-gpt,8,128,1,1,1,1,0.5,2,megatron-core".split(",")))
    measured = _csv_run(row, "runs.csv:2", tmp_path, load_cluster("dgx-h100"))
    assert measured.config.offload_layers == 2 and measured.stack.name == "megatron-core"
    # the default stack (ppplan-torch) runs no activation offload: such a row is refused, not priced as if it ran
    with pytest.raises(PlanError, match="stack 'ppplan-torch' does not offload activations"):
        _csv_run({**row, "stack": ""}, "runs.csv:2", tmp_path, load_cluster("dgx-h100"))
    runs_csv = tmp_path / "runs.csv"
    runs_csv.write_text(header + "r,tiny-gpt,8,128,1,1,1,1,0.5,-1,megatron-core\n")
    assert run(["calibrate", str(runs_csv), "--cluster", CLUSTER]) == 2
    err = capsys.readouterr().err
    assert f"{runs_csv}:2" in err and "offload_layers" in err and len(err.strip().splitlines()) == 1
