"""``ppplan validate``: the cost model against the published-runs corpus.

    ppplan validate [--runs public_runs.csv] [--no-fit] [--json] [--plot out.png] [--update [--tables-dir D]]

Tables (stdout): per source (rows priced and skipped, a-priori, held-out fit, held-out and in-sample
MAPE), the fitted constants per GPU family, Spearman's rho per sweep, the memory check,
the worst rows, the skipped rows grouped by reason, and each issue-12 target met or not.
``--update`` writes ``profiles/calibration/error_bands.yaml`` and the fitted constants with their
provenance into ``profiles/gpu_families.yaml`` (both into ``--tables-dir`` when given).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from planner.cli.app import app, err, out, output_dir, output_option
from planner.cli.render import json_document
from planner.trust.accuracy import grouped
from planner.trust.error_bands import write_tables
from planner.trust.published_runs import DEFAULT_RUNS_CSV
from planner.trust.validation import FIT_CATEGORY, PREDICTIONS, ValidationReport, target_lines
from planner.trust.validation import validate as run_validate
from planner.trust.validation_plot import plot_validation
from profiles.errors import PlanError
from profiles.files import check_outputs

WORST_ROWS = 10


def _fit_note(report: ValidationReport) -> str:
    if not report.family_fits:
        return "no constants fitted: a-priori, held-out and in-sample figures are the same"
    return ("held-out fit = each row priced with its GPU family's constants fitted without its source "
            "(leave-one-source-out); held-out = what the presets would ship without that source: that fit "
            "where it beats the a-priori constants on the family's other sources, else a priori (the "
            "targets); in-sample = fitted to every row of the family")


def _sources_table(report: ValidationReport) -> Table:
    table = Table(title=f"MAPE % per independent source ({FIT_CATEGORY} rows: the fit and the targets)", title_justify="left")
    for col in ("source", "priced", "memory only", "skipped", "a priori", "held-out fit", "held-out", "in-sample"):
        table.add_column(col, justify="left" if col == "source" else "right")
    mapes = {w: report.mape(w) for w in PREDICTIONS}
    skipped = grouped(report.skipped, lambda s: s.source)
    memory_only = grouped([r for r in report.results if not r.row.has_metric], lambda r: r.row.source)
    sources = sorted(set(mapes["heldout"]["per_source"]) | set(skipped) | set(memory_only))
    for source in sources:
        priced = sum(1 for r in report.priced if r.row.source == source)
        cells = [f"{mapes[w]['per_source'][source]:.1f}" if priced else "-" for w in PREDICTIONS]
        table.add_row(source, str(priced), str(len(memory_only.get(source, []))), str(len(skipped.get(source, []))), *cells)
    table.add_row("overall", str(len(report.priced)), str(sum(len(v) for v in memory_only.values())), str(len(report.skipped)),
                  *(f"{mapes[w]['overall']:.1f}" for w in PREDICTIONS))
    return table


def _families_table(report: ValidationReport) -> Table:
    table = Table(title="Constants per GPU family (in sample; a priori in brackets)", title_justify="left")
    summary = report.family_summary()
    names = list(next(iter(summary.values()))["terms"]) if summary else []
    for col in ("family", "rows", *names, "held-out fit", "in-sample", "at bound"):
        table.add_column(col, justify="left" if col in ("family", "at bound") else "right")
    for family, s in summary.items():
        terms = [f"{s['terms'][n]:.3g} ({s['a_priori'][n]:.3g})" for n in names]
        table.add_row(family, str(s["rows"]), *terms, f"{s['heldout_mape_pct']:.1f}", f"{s['in_sample_mape_pct']:.1f}",
                      ", ".join(s["at_bounds"]) if s["fitted"] else "not fitted: one source")
    return table


def _sweeps_table(report: ValidationReport) -> Table:
    table = Table(title="Spearman rho within each sweep (held-out throughput per GPU vs measured)", title_justify="left")
    for col in ("sweep", "rows", "rho", "measured best ranked"):
        table.add_column(col, justify="left" if col == "sweep" else "right")
    for s in report.sweeps():
        table.add_row(s.sweep, str(s.rows), "n/a" if s.rho is None else f"{s.rho:.2f}", str(s.measured_best_predicted_rank))
    return table


def _memory_table(report: ValidationReport) -> Table:
    table = Table(title="Peak memory per source (predicted vs measured; OOM rows)", title_justify="left")
    for col in ("source", "rows with memory", "mean under %", "worst under %", "OOM rows", "OOM called feasible",
                "ran, called infeasible"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for source, rows in grouped(report.memory(), lambda r: r.row.source).items():
        under = [r.memory_under_pct for r in rows if r.memory_under_pct is not None]
        ooms = [r for r in rows if r.row.oom]
        table.add_row(source, str(len(under)), f"{sum(under) / len(under):+.1f}" if under else "-",
                      f"{max(under):+.1f}" if under else "-", str(len(ooms)), str(sum(1 for r in ooms if r.predicted_fits)),
                      str(sum(1 for r in rows if not r.row.oom and not r.predicted_fits)))
    return table


def _worst_table(report: ValidationReport) -> Table:
    table = Table(title=f"Worst {WORST_ROWS} rows (held-out)", title_justify="left")
    for col in ("run", "source", "metric", "measured", "predicted", "err %"):
        table.add_column(col, justify="left" if col in ("run", "source", "metric") else "right")
    for r in report.worst(WORST_ROWS):
        table.add_row(r.row.run, r.row.source, r.row.metric, f"{r.row.measured:.4g}", f"{r.predicted('heldout'):.4g}",
                      f"{r.error('heldout'):+.1f}")
    return table


def _skipped_table(report: ValidationReport) -> Table:
    table = Table(title=f"Skipped rows ({len(report.skipped)}; every one with its reason in --json)", title_justify="left")
    for col in ("source", "rows", "reason"):
        table.add_column(col, justify="right" if col == "rows" else "left")
    counts = Counter((s.source, s.reason) for s in report.skipped)
    for (source, reason), count in sorted(counts.items()):
        table.add_row(source, str(count), reason)
    return table


def _categories_table(report: ValidationReport) -> Table:
    table = Table(title="MAPE % per category (constants fitted on dense rows only)", title_justify="left")
    for col in ("category", "priced", "skipped", "a priori", "held-out fit", "held-out", "in-sample"):
        table.add_column(col, justify="left" if col == "category" else "right")
    mapes = {w: report.mape(w, "category")["per_category"] for w in PREDICTIONS}
    skipped = grouped(report.skipped, lambda s: s.category)
    for category in sorted(set(mapes["heldout"]) | set(skipped)):
        priced = sum(1 for r in report.held_out if r.row.category == category)
        cells = [f"{mapes[w][category]:.1f}" if priced else "-" for w in PREDICTIONS]
        table.add_row(category, str(priced), str(len(skipped.get(category, []))), *cells)
    return table


def _print_report(report: ValidationReport) -> None:
    dense = report.of_category(FIT_CATEGORY)
    for table in (_sources_table(dense), _families_table(dense), _sweeps_table(dense), _memory_table(dense),
                  _categories_table(report), _worst_table(report), _skipped_table(report)):
        out.print(table)
    out.print(_fit_note(report), markup=False)
    for line in target_lines(report):
        out.print(f"target: {line}", markup=False)


@app.command()
def validate(
    runs: Path = typer.Option(DEFAULT_RUNS_CSV, "--runs", help="published runs CSV (columns: profiles/calibration/README.md)"),
    no_fit: bool = typer.Option(False, "--no-fit", help="a-priori constants only (no fit, no held-out figures)"),
    json_out: bool = typer.Option(False, "--json", help="print the validate document (DESIGN.md) on stdout"),
    plot: Optional[Path] = output_option(None, "--plot", help="write predicted vs measured per source (PNG)"),
    update: bool = typer.Option(False, "--update", help="write the error bands and the GPU families' fitted constants"),
    tables_dir: Optional[Path] = typer.Option(None, "--tables-dir", parser=output_dir, metavar="<path>", help="where --update writes both files (default: "
                                              "profiles/calibration/error_bands.yaml and profiles/gpu_families.yaml)"),
) -> None:
    """Price every published run with a complete configuration and compare with its measurement."""
    check_outputs(plot, inputs=(runs,))
    if update and no_fit:
        raise PlanError("--update writes fitted constants and held-out bands: drop --no-fit")
    if tables_dir is not None and not update:
        raise PlanError("--tables-dir is where --update writes its tables: add --update, or drop --tables-dir")
    if update and tables_dir is not None and not tables_dir.is_dir():
        raise PlanError(f"--tables-dir {tables_dir} is not a directory")
    report = run_validate(runs, fit=not no_fit)
    if not report.priced:
        raise PlanError(f"no row of {runs} has a complete configuration to price")
    if plot is not None:
        plot_validation(report, plot)
        err.print(f"wrote {plot}", markup=False)
    if update:
        for path in write_tables(report, runs, tables_dir):
            err.print(f"wrote {path}", markup=False)
    if json_out:
        err.print(f"note: {_fit_note(report)}", markup=False, soft_wrap=True)
        out.print_json(json_document(report.to_json()))
    else:
        _print_report(report)
