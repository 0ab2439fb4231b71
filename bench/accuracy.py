"""Accuracy of the cost model on the published-runs corpus (issue 12).

Prints, from one ``ppplan validate`` run (``planner.trust.validation.validate``):
per independent source the rows priced and skipped with a-priori, held-out fit
(leave-one-source-out), held-out (what the presets' procedure ships for a source it never saw,
the targets' figure) and in-sample MAPE; the fitted constants per GPU family;
Spearman's rho within every sweep, beside what an exact predictor scores against the
source's own repeat scatter where the source measured a configuration twice
(``planner.trust.repeat_noise``); the memory check; the worst rows with their
error; MAPE per category (dense / moe / long-context) and per stack; each target
met or not. Writes the predicted-vs-measured plot (``--plot``, default
``accuracy.png``). The CPU seconds of the validation are printed (process time:
wall time on a shared machine is noise).

Run: python bench/accuracy.py [--runs public_runs.csv] [--plot accuracy.png] [--worst 10]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from planner.trust.accuracy import grouped
from planner.trust.published_runs import DEFAULT_RUNS_CSV
from planner.trust.validation import PREDICTIONS, ValidationReport, target_lines, validate
from planner.trust.validation_plot import plot_validation


def print_sources(report: ValidationReport) -> None:
    print(f"{'source':22s} {'priced':>6s} {'skipped':>7s} {'a priori':>9s} {'fit h-o':>9s} {'held-out':>9s} {'in-sample':>9s}")
    mapes = {w: report.mape(w)["per_source"] for w in PREDICTIONS}
    skipped = grouped(report.skipped, lambda s: s.source)
    for source in sorted(set(mapes["heldout"]) | set(skipped)):
        priced = sum(1 for r in report.priced if r.row.source == source)
        figures = [f"{mapes[w][source]:9.1f}" if priced else f"{'-':>9s}" for w in PREDICTIONS]
        print(f"{source:22s} {priced:6d} {len(skipped.get(source, [])):7d} {' '.join(figures)}")
    overall = [f"{report.mape(w)['overall']:9.1f}" for w in PREDICTIONS]
    print(f"{'overall':22s} {len(report.priced):6d} {len(report.skipped):7d} {' '.join(overall)}")


def print_families(report: ValidationReport) -> None:
    for family, s in report.family_summary().items():
        terms = ", ".join(f"{k}={v:.4g}" for k, v in s["terms"].items())
        state = f"at bounds: {', '.join(s['at_bounds']) or 'none'}" if s["fitted"] else "not fitted (one source)"
        print(f"{family:10s} rows={s['rows']:3d} held-out fit={s['heldout_mape_pct']:.1f}% in-sample={s['in_sample_mape_pct']:.1f}% "
              f"{terms}; {state}")


def print_sweeps(report: ValidationReport) -> None:
    for s in report.sweeps():
        rho = "n/a" if s.rho is None else f"{s.rho:+.2f}"
        c = s.rho_noise_ceiling
        exact = "" if c is None else f"; exact predictor: rho {c.expected_rho:.2f}, >= {c.target:g} in {100 * c.share_reaching_target:.0f} %"
        print(f"{s.sweep:50s} rows={s.rows:3d} rho={rho:>5s} measured best ranked {s.measured_best_predicted_rank} "
              f"(the pick loses {s.pick_regret_pct:.1f} %){exact}")


def print_memory(report: ValidationReport) -> None:
    for source, rows in grouped(report.memory(), lambda r: r.row.source).items():
        under = [r.memory_under_pct for r in rows if r.memory_under_pct is not None]
        ooms = [r for r in rows if r.row.oom]
        worst = f"{max(under):+.1f}%" if under else "-"
        print(f"{source:22s} rows with memory={len(under):3d} worst under-prediction={worst:>7s} "
              f"OOM rows={len(ooms)} called feasible={sum(1 for r in ooms if r.predicted_fits)}")


def print_worst(report: ValidationReport, count: int) -> None:
    for r in report.worst(count):
        print(f"{r.error('heldout'):+7.1f}%  {r.row.source:18s} {r.row.metric:22s} measured {r.row.measured:<10.4g} "
              f"predicted {r.predicted('heldout'):<10.4g} {r.row.run}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS_CSV)
    parser.add_argument("--plot", type=Path, default=Path("accuracy.png"))
    parser.add_argument("--worst", type=int, default=10)
    args = parser.parse_args()
    start = time.process_time()
    report = validate(args.runs)
    seconds = time.process_time() - start
    print(f"== validate: {len(report.priced)} rows priced, {len(report.skipped)} skipped, {seconds:.1f} CPU s")
    print("\n== MAPE % per independent source")
    print_sources(report)
    print("\n== constants per GPU family")
    print_families(report)
    print("\n== Spearman rho per sweep (held-out throughput per GPU vs measured)")
    print_sweeps(report)
    print("\n== memory")
    print_memory(report)
    print(f"\n== worst {args.worst} rows (held-out)")
    print_worst(report, args.worst)
    print("\n== held-out MAPE % per category and per stack")
    print("category:", report.mape("heldout", "category")["per_category"])
    print("stack:   ", report.mape("heldout", "stack")["per_stack"])
    print("\n== targets")
    for line in target_lines(report):
        print(line)
    plot_validation(report, args.plot)
    print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
