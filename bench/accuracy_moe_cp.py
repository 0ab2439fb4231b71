"""Held-out accuracy on the published mixture-of-experts and long-context runs (issue 13, part 6).

``ppplan validate`` prices every row of the corpus (``planner.trust.published_runs``: one parser for
every category); the GPU families' constants are fitted on the dense rows only, so each
mixture-of-experts (``moe``, with or without cp) and context-parallel (``long-context``) row is held
out by construction. This prints their error by category, by category and GPU family, by source,
the worst rows with the assumptions they were priced under, and why the others are skipped. It
prints and never asserts (about 90 CPU s: it runs the whole validation, fits included).

Run: python bench/accuracy_moe_cp.py [--runs public_runs.csv] [--verbose]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from planner.trust.accuracy import grouped, mape_pct
from planner.trust.published_runs import DEFAULT_RUNS_CSV
from planner.trust.validation import FIT_CATEGORY, RowResult, validate


def _line(label: str, rows: list[RowResult]) -> str:
    signed = statistics.median(r.error("heldout") for r in rows)
    return (f"  {label:<34} {len(rows):>4} rows  held-out MAPE {mape_pct(r.error('heldout') for r in rows):5.1f} %  "
            f"a priori {mape_pct(r.error('apriori') for r in rows):5.1f} %  median signed {signed:+6.1f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS_CSV, help="the published-runs corpus")
    parser.add_argument("--verbose", action="store_true", help="every priced row with its assumptions")
    args = parser.parse_args()
    report = validate(args.runs)
    rows = [r for r in report.held_out if r.row.category != FIT_CATEGORY]
    in_sample = [r for r in report.stack_fit if r.row.category != FIT_CATEGORY]
    skipped = [s for s in report.skipped if s.category != FIT_CATEGORY]
    print(f"{len(rows) + len(in_sample) + len(skipped)} rows with experts or cp > 1 in {args.runs.name}; {len(rows)} priced "
          f"held out, {len(in_sample)} priced in sample of a stack constant (below), {len(skipped)} skipped")
    print("error = (predicted - measured) / measured; held-out: the GPU family's constants fitted on dense rows only")
    print("\nby category")
    for category, group in sorted(grouped(rows, lambda r: r.row.category).items()):
        print(_line(category, group))
    print(_line("all", rows))
    print("\nby category and GPU family")
    for (category, family), group in sorted(grouped(rows, lambda r: (r.row.category, r.family)).items()):
        print(_line(f"{category} {family}", group))
    print("\nby source")
    for source, group in sorted(grouped(rows, lambda r: r.row.source_id).items(), key=lambda kv: -len(kv[1])):
        print(_line(source, group))
    print("\nworst rows")
    for r in sorted(rows, key=lambda r: -abs(r.error("heldout")))[:10]:
        print(f"  {r.error('heldout'):+7.1f} %  {r.row.category:<12} {r.row.run}  "
              f"({r.row.metric} {r.predicted('heldout'):.4g} vs {r.row.measured:.4g})")
    print("\npublished runs that ran, called infeasible by the planner (not a target: it would reject them)")
    ran = [r for r in report.results if r.row.category != FIT_CATEGORY and not r.row.oom]
    for category, group in sorted(grouped(ran, lambda r: r.row.category).items()):
        print(f"  {category:<12} {sum(1 for r in group if not r.predicted_fits):>4} of {len(group)}")
    print("\nin sample of a stack constant (fitted on them, not in the figures above)")
    for r in in_sample:
        print(f"  {r.error('heldout'):+7.1f} %  {r.row.category:<12} {r.row.source_id}: {r.row.run}")
    print("\nskipped, by reason")
    for (category, why), n in Counter((s.category, s.reason) for s in skipped).most_common():
        print(f"  {n:>4}  {category:<12} {why}")
    if args.verbose:
        print("\nevery priced row")
        for r in rows:
            print(f"  {r.error('heldout'):+7.1f} %  {r.row.run}: {'; '.join(r.row.assumptions)}")


if __name__ == "__main__":
    main()
