"""``ppplan calibrate`` and ``ppplan regress``: the trust loop (``validate``: ``planner.cli.validate``).

    ppplan calibrate RUNS... --cluster C [--plan P]... [--out calibrated.yaml] [--terms a,b] [--folds K] [--json]
    ppplan regress [--update] [--suite DIR] [--case PATTERN] [--json]
    ppplan tune --model M --cluster C --gpus N --global-batch B [--top-k 3] [--steps N] [--out P] [--cluster-out Y]
"""

from __future__ import annotations

import datetime
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from launch.emit import check_out_dir
from launch.job import JobInterrupted
from launch.progress import StepProgress
from planner.cli.app import app, comma_list, err, out, output_dir, output_option, warn
from planner.cli.launch import progress_line
from planner.cli.render import json_document, plan_json
from planner.cli.search import BatchOpt, ClusterOpt, GpusOpt, ModelOpt, PrecisionOpt, SeqOpt, parse_schedules, resolve_train
from planner.trust.accuracy import error_pct
from planner.trust.calibration import FIT_TERMS, TERM_BOUNDS, CalibrationReport, calibrate_runs, with_efficiency
from planner.trust.calibration_io import cluster_yaml, read_runs
from planner.trust.regress import DEFAULT_SUITE, CaseResult
from planner.trust.regress import regress as run_regress
from planner.trust.tune import DEFAULT_STEPS, DEFAULT_TOP_K, TuneOptions, TuneResult
from planner.trust.tune import tune as run_tune
from profiles.errors import PlanError
from profiles.files import check_outputs, write_atomic
from profiles.limits import MAX_STEPS
from profiles.loader import DEFAULT_STACK, load_cluster, load_model, load_stack
from profiles.schema import Plan


def _terms(text: str) -> tuple[str, ...]:
    names = tuple(comma_list(text, "--terms"))
    unknown = [n for n in names if n not in TERM_BOUNDS]
    if unknown or not names:
        raise PlanError(f"unknown efficiency term(s) {', '.join(unknown) or '(none)'}; use some of {', '.join(TERM_BOUNDS)}")
    return names


def _provenance(report: CalibrationReport, sources: list[Path], base: str) -> dict[str, str]:
    fit = report.fit
    prov = {
        "calibrated_by": "ppplan calibrate",
        "base_cluster": base,
        "date": datetime.date.today().isoformat(),
        "sources": ", ".join(str(p) for p in sources),
        "runs": ", ".join(fit.runs),
        "fitted_terms": ", ".join(f"{k}={v:.4g} (was {fit.start[k]:.4g})" for k, v in fit.terms.items()),
        "fit_rms_log_error": f"{fit.rms_log_error_before:.4f} before, {fit.rms_log_error_after:.4f} after (in-sample)",
        "in_sample_mape_pct": f"{report.mape(report.apriori_s):.2f} before, {report.mape(report.fitted_s):.2f} after",
    }
    if report.heldout_s is not None:
        prov["heldout_mape_pct"] = (f"{report.mape(report.apriori_s):.2f} before, {report.mape(report.heldout_s):.2f} "
                                    f"after ({report.folds}-fold cross-validation)")
    return prov


def _calibration_json(report: CalibrationReport) -> dict:
    heldout = report.heldout_s
    return {
        "terms": {k: {"before": report.fit.start[k], "after": v} for k, v in report.fit.terms.items()},
        "mape_pct": {
            "in_sample": {"before": report.mape(report.apriori_s), "after": report.mape(report.fitted_s)},
            "heldout": None if heldout is None else {"before": report.mape(report.apriori_s), "after": report.mape(heldout),
                                                     "folds": report.folds},
        },
        "runs": [
            {"run": run, "measured_step_time_s": measured, "apriori_s": report.apriori_s[run],
             "fitted_s": report.fitted_s[run], "heldout_s": None if heldout is None else heldout[run]}
            for run, measured in report.measured_s.items()
        ],
    }


def _print_calibration(report: CalibrationReport) -> None:
    table = Table(title="Step time (s): measured vs predicted", title_justify="left")
    for col in ("run", "measured", "a priori", "err %", "held-out", "err %", "fitted", "err %"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for run, measured in report.measured_s.items():
        held = report.heldout_s[run] if report.heldout_s else None
        table.add_row(
            run, f"{measured:.4g}", f"{report.apriori_s[run]:.4g}", f"{error_pct(report.apriori_s[run], measured):+.1f}",
            "-" if held is None else f"{held:.4g}", "-" if held is None else f"{error_pct(held, measured):+.1f}",
            f"{report.fitted_s[run]:.4g}", f"{error_pct(report.fitted_s[run], measured):+.1f}",
        )
    out.print(table)
    terms = Table(title="Efficiency terms", title_justify="left")
    for col in ("term", "before", "after"):
        terms.add_column(col, justify="left" if col == "term" else "right")
    for k, v in report.fit.terms.items():
        terms.add_row(k, f"{report.fit.start[k]:.4g}", f"{v:.4g}")
    out.print(terms)
    before = report.mape(report.apriori_s)
    if report.heldout_s is not None:
        out.print(f"held-out MAPE ({report.folds}-fold): {before:.2f} % before -> {report.mape(report.heldout_s):.2f} % after")
    else:
        out.print("held-out MAPE: needs at least two runs")
    out.print(f"in-sample MAPE: {before:.2f} % before -> {report.mape(report.fitted_s):.2f} % after")


@app.command()
def calibrate(
    runs: List[Path] = typer.Argument(..., help="metrics JSONL files from `ppplan launch` and/or runs CSV files"),
    cluster: str = typer.Option(..., "--cluster", help="cluster preset or YAML whose efficiency terms are fitted"),
    plan: List[Path] = typer.Option([], "--plan", help="plan.json of the metrics files (one for all, or one each)"),
    out_path: Optional[Path] = output_option(None, "--out", help="write the calibrated cluster YAML here"),
    terms: str = typer.Option(",".join(FIT_TERMS), "--terms", help="efficiency terms to fit, comma-separated"),
    folds: int = typer.Option(5, "--folds", min=2, max=1000, help="K of the K-fold held-out error"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Fit a cluster's efficiency terms to measured step times; report held-out error before/after."""
    check_outputs(out_path, inputs=(*runs, *plan))  # the cluster file may be calibrated in place
    base = load_cluster(cluster)
    names = _terms(terms)
    unset = [n for n in names if getattr(base.efficiency, n, None) is None]
    if unset:
        raise PlanError(f"--terms {unset[0]}: cluster {base.name} states no {unset[0]} to start the fit from "
                        "(it is derived from gemm_max); set it in a cluster file, or fit other terms")
    measured, warnings = read_runs(list(runs), list(plan), base)
    report = calibrate_runs(measured, names, folds)
    for message in warnings:  # after every check: bad input is one error line with no warning before it
        warn(message)
    if out_path is not None:
        rounded = {k: float(f"{v:.6g}") for k, v in report.fit.terms.items()}
        calibrated = with_efficiency(base, rounded).model_copy(
            update={"name": f"{base.name}-calibrated", "provenance": _provenance(report, list(runs), base.name)}
        )
        write_atomic(out_path, cluster_yaml(calibrated))
        load_cluster(str(out_path))  # what we wrote must load back
        err.print(f"wrote {out_path}", markup=False)
    if json_out:
        out.print_json(json_document(_calibration_json(report)))
    else:
        _print_calibration(report)


def _print_regress(results: list[CaseResult], seconds: float) -> None:
    table = Table(title="Regression suite", title_justify="left")
    for col in ("case", "status", "plan (tp/pp/dp/v/mbs schedule recompute)", "step s", "MFU", "search s"):
        table.add_column(col, justify="right" if col in ("step s", "MFU", "search s") else "left")
    for r in results:
        c = r.current.config
        label = f"{c['tp']}/{c['pp']}/{c['dp']}/{c['v']}/{c['mbs']} {c['schedule']} {c['recompute']}"
        table.add_row(r.name, r.status, label, f"{r.current.step_time_s:.4g}", f"{r.current.mfu:.3f}", f"{r.seconds:.1f}")
    out.print(table)
    for r in results:
        if r.status == "pass":
            continue
        out.print(f"{r.status.upper()} {r.name} ({r.path.name}):", markup=False)
        for line in r.diffs or ["figures moved within tolerance; golden refreshed"]:
            out.print(f"  {line}", markup=False)
    failed = sum(r.status == "fail" for r in results)
    out.print(f"{len(results)} cases, {failed} failed, {seconds:.1f} s")


@app.command()
def regress(
    update: bool = typer.Option(False, "--update", help="rewrite the golden values from the current model"),
    suite: Path = typer.Option(DEFAULT_SUITE, "--suite", help="folder of regression case YAML files"),
    case: Optional[str] = typer.Option(None, "--case", help="only cases whose file name matches (glob)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Re-run the golden regression cases; exit 1 with a diff when a plan or figure moved."""
    start = time.perf_counter()
    results = run_regress(suite, update, case)
    seconds = time.perf_counter() - start
    if json_out:
        out.print_json(json_document({
            "passed": all(r.status != "fail" for r in results),
            "seconds": round(seconds, 2),
            "cases": [{"case": r.name, "file": r.path.name, "status": r.status, "diffs": r.diffs,
                       "seconds": round(r.seconds, 2)} for r in results],
        }))
    else:
        _print_regress(results, seconds)
    if any(r.status == "fail" for r in results):
        raise typer.Exit(1)


def _tune_table(result: TuneResult) -> Table:
    table = Table(title="tune: the search's top plans, run (error = (pred - meas) / meas)", title_justify="left")
    for col in ("#", "plan", "pred s", "meas s", "err %", "calibrated s", "err %", "meas peak GiB", ""):
        table.add_column(col, justify="left" if col in ("plan", "") else "right")
    for t in result.trials:
        c = t.plan.config
        label = f"tp{c.tp} pp{c.pp} dp{c.dp} v{c.v} mbs{c.mbs} {c.schedule} {c.recompute_label} zero{c.zero}"
        if t.failure:
            table.add_row(str(t.index), label, f"{t.predicted_step_time_s:.4f}", "failed", "", "", "", "", t.failure[:60])
            continue
        table.add_row(
            str(t.index), label, f"{t.predicted_step_time_s:.4f}", f"{t.measured_step_time_s:.4f}",
            f"{error_pct(t.predicted_step_time_s, t.measured_step_time_s):+.1f}", f"{t.calibrated_step_time_s:.4f}",
            f"{error_pct(t.calibrated_step_time_s, t.measured_step_time_s):+.1f}", f"{t.measured_peak_memory_gib:.3f}",
            "winner" if t.index == result.winner.index else "",
        )  # fmt: skip
    return table


def _tune_json(result: TuneResult) -> dict:
    return {
        "winner": result.winner.index,
        "measured_ranking": result.measured_ranking,
        "calibrated_ranking": result.calibrated_ranking,
        "calibrated_terms": result.report.fit.terms,
        "trials": [
            {"index": t.index, "config": json.loads(t.plan.config.model_dump_json()), "predicted_step_time_s": t.predicted_step_time_s,
             "measured_step_time_s": t.measured_step_time_s, "calibrated_step_time_s": t.calibrated_step_time_s,
             "measured_peak_memory_gib": t.measured_peak_memory_gib, "failure": t.failure, "metrics": str(t.metrics_path)}
            for t in result.trials
        ],
    }  # fmt: skip


@app.command()
def tune(
    model: str = ModelOpt, cluster: str = ClusterOpt, gpus: int = GpusOpt, global_batch: int = BatchOpt,
    seq_len: Optional[int] = SeqOpt, precision: Optional[str] = PrecisionOpt,
    stack: str = typer.Option(DEFAULT_STACK, "--stack", help=f"{DEFAULT_STACK} only: the trials run on ppplan's runtime"),
    schedules: Optional[str] = typer.Option(None, "--schedules", help="comma list"),
    top_k: int = typer.Option(DEFAULT_TOP_K, "--top-k", min=1, max=64, help="plans to run"),
    steps: int = typer.Option(DEFAULT_STEPS, "--steps", min=2, max=MAX_STEPS, help="steps per plan (the first is warm-up)"),
    out_path: Path = output_option(Path("tuned.json"), "--out", help="the winning plan, priced with the calibrated cluster"),
    cluster_out: Optional[Path] = output_option(None, "--cluster-out", help="calibrated cluster YAML [default: <cluster>-calibrated.yaml]"),
    metrics_dir: Optional[Path] = typer.Option(None, "--metrics-dir", help="keep each trial's plan and metrics here", parser=output_dir,
                                               metavar="<path>"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace trial files already in --metrics-dir"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Run the search's top-k plans for a few steps, calibrate from what they measured, re-rank,
    and write the measured-fastest plan and the calibrated cluster."""
    model_spec, cluster_spec, stack_spec = load_model(model), load_cluster(cluster), load_stack(stack)
    # the default names a file in the current folder, whatever the cluster's name holds (a '/', say)
    cluster_out = cluster_out or Path(re.sub(r"[^\w.-]", "_", cluster_spec.name).lstrip(".") + "-calibrated.yaml")
    check_outputs(out_path, cluster_out, inputs=(model, cluster, stack))
    train = resolve_train(model_spec, cluster_spec, global_batch, seq_len, precision, stack_spec)
    names = parse_schedules(schedules) if schedules is not None else None
    with tempfile.TemporaryDirectory(prefix="ppplan-tune-") as tmp:
        work = metrics_dir or Path(tmp)
        if metrics_dir is not None:
            check_out_dir(metrics_dir, "--metrics-dir")  # made by the tune once every trial's checks passed

        def on_trial(index: int, total: int, plan: Plan) -> None:
            c = plan.config
            err.print(f"trial {index + 1}/{total}: tp{c.tp} pp{c.pp} dp{c.dp} {c.schedule} (predicted "
                      f"{plan.estimate.step_time_s:.4f} s/step)", markup=False)  # fmt: skip

        def on_step(progress: StepProgress) -> None:
            err.print(progress_line(progress, steps), markup=False, soft_wrap=True)

        opts = TuneOptions(top_k=top_k, steps=steps, work_dir=work, overwrite=overwrite, schedules=names, stack=stack_spec,
                           on_trial=on_trial, on_step=on_step)  # fmt: skip
        try:
            result = run_tune(model_spec, cluster_spec, train, gpus, opts)
        except JobInterrupted as exc:
            print(f"error: interrupted by {exc}: every rank of the job was stopped", file=sys.stderr, flush=True)
            raise typer.Exit(exc.exit_code) from None
        write_atomic(out_path, plan_json(result.winner_plan))
        write_atomic(cluster_out, cluster_yaml(result.calibrated_cluster))
    if json_out:
        out.print_json(json_document(_tune_json(result)))
        return
    out.print(_tune_table(result))
    agree = "yes" if result.calibrated_ranking == result.measured_ranking else "no"
    out.print(f"measured ranking {result.measured_ranking}; calibrated model's ranking {result.calibrated_ranking} (agree: {agree})",
              markup=False)  # fmt: skip
    out.print(f"wrote {out_path} (trial {result.winner.index}) and {cluster_out}", markup=False)
