"""A lead, not a shipped constant: host time per pipeline action in DeepSpeed's PipelineEngine (megatron-deepspeed).

BigScience's tr11 sweeps rank poorly under ppplan's price (Spearman's rho 0.0-0.8 in 8 sweeps) although the
source's own repeats agree within about 3 %: micro-batch-1 layouts measured slower than priced and several
micro-batch 4-8 layouts faster. DeepSpeed's engine interprets each pipeline instruction in Python, with several
small synchronous transfers per send (runtime/pipe/engine.py), so each action may carry host time the GPU waits on.
This prices BigScience's A100 rows at the A100 constants fitted without BigScience (the held-out ones ``validate``
uses) with ``StackOverlap.host_overhead_per_action_s`` set to each value, and prints their MAPE, the MAPE after
one common rescale (every price times the factor that zeroes the median log error: what a refit of the compute
constants could at most recover), the mean signed error and rho per sweep. It is not shipped: a stack constant
fitted on BigScience would be in sample for its only source, and holding it out by sweep needs the family refit in
every fold. Prints and never asserts (about 3 minutes on 2 cores: one ``validate`` fit, then the pricing).

Run: python bench/pipe_engine_overhead.py [--ms 0 10 20 30 40]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from planner.trust.accuracy import error_pct, grouped, mape_pct, spearman_rho
from planner.trust.calibration import estimate_with
from planner.trust.validation import RowResult, _as_run, _prediction, validate

SOURCE, FAMILY, STACK = "bigscience", "A100", "megatron-deepspeed"


def priced_at(rows: list[RowResult], terms: dict[str, float], overhead_s: float) -> list[tuple[RowResult, float, float]]:
    """(row, predicted metric, predicted tokens/s per GPU) with the stack's per-action host time ``overhead_s``."""
    out = []
    for r in rows:
        run = _as_run(r.row, r.measured_step_time_s)
        run = replace(run, stack=run.stack.with_changes({"overlap": {"host_overhead_per_action_s": overhead_s}}))
        priced = replace(r, heldout=_prediction(r.row, estimate_with(run, terms)))
        out.append((r, priced.heldout.value, priced.throughput_per_gpu("heldout")))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", type=float, nargs="+", default=[0, 10, 20, 30, 40])
    args = parser.parse_args()
    report = validate()
    terms = report.family_fits[FAMILY].heldout_terms[SOURCE]
    rows = [r for r in report.priced if r.row.source == SOURCE and r.family == FAMILY and r.row.stack_spec.name == STACK]
    print(f"{len(rows)} {SOURCE} rows on {FAMILY}, priced at the {FAMILY} constants fitted without {SOURCE}")
    for ms in args.ms:
        priced = priced_at(rows, terms, ms / 1000)
        ratios = [value / float(r.row.measured) for r, value, _ in priced]
        scale = math.exp(-statistics.median(math.log(q) for q in ratios))
        errors = [error_pct(value, float(r.row.measured)) for r, value, _ in priced]
        sweeps = grouped([p for p in priced if p[0].row.sweep], lambda p: p[0].row.sweep)
        rhos = [spearman_rho([t for _, _, t in ps], [r.throughput_per_gpu("measured") for r, _, _ in ps])
                for _, ps in sorted(sweeps.items()) if len(ps) >= 3]
        print(f"{ms:5.1f} ms per action: MAPE {mape_pct(errors):5.2f} %, after one common rescale "
              f"{mape_pct((scale * q - 1) * 100 for q in ratios):5.2f} % (x{scale:.3f}), mean {statistics.fmean(errors):+5.2f} %; "
              f"rho per sweep {' '.join('-' if x is None else f'{x:+.2f}' for x in rhos)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
