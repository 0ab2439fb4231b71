"""Where the mixture-of-experts host floor comes from (``StackOverlap.moe_host_s_per_operator``).

Megatron-Core's dropless alltoall dispatcher waits on the host for the tokens-per-expert counts in every
MoE layer, so a layer's pass cannot run faster than the host issues its operators. For each published
row this prints the per-operator host time at which ppplan's price of the row equals its measurement
(bisection on the stack constant, the GPU family's shipped constants held fixed), or "-" where the row
is priced at or over its measurement with no host floor at all (GPU-bound: no floor can explain it),
and the row's price with no floor and with the stack's. The stack preset's constant is the mean over
its ``moe_host_fit_rows``; every other row is held out. It prints and never asserts (about 10 CPU s).

Run: python bench/moe_host_floor.py [--stack megatron-core] [--model Qwen3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from costmodels.layer_costs import RooflineTimes, host_operator_counts
from planner.trust.calibration import estimate_with
from planner.trust.published_runs import PublishedRow, read_published_runs
from planner.trust.validation import _as_run, equivalent_step_time_s, gpu_family_of
from profiles.loader import load_stack

BISECTION_STEPS = 40
UPPER_S = 2e-3  # 2 ms per operator: above any host-bound row of the corpus


def _terms(row: PublishedRow) -> dict[str, float]:
    """The constants validate prices the row's held-out prediction with: the family's shipped fit."""
    family = gpu_family_of(row)
    return dict(family.fit.values) if family.fit else family.apriori_constants()


def operators_per_layer(row: PublishedRow) -> int:
    """Host operators of one MoE layer's forward and backward (``costmodels.layer_costs.host_operator_counts``)."""
    c = row.config
    recompute = c.recompute if isinstance(c.recompute, str) else "none"
    times = RooflineTimes(row.model, row.cluster, row.train.precision, stack=row.stack_spec)
    ops = times.operators("transformer", c.tp, c.mbs, row.train.seq_len, c.sequence_parallel, recompute, c.cp, c.ep,
                          True, c.etp)
    return sum(host_operator_counts(ops))


def matching_host_s(row: PublishedRow) -> tuple[float | None, float, float, float]:
    """(per-operator host seconds that price the row at its measurement or None, the measured step, the step
    priced with no floor, the step priced with the row's stack as shipped)."""
    terms = _terms(row)
    measured = equivalent_step_time_s(row, estimate_with(_as_run(row, 1.0), terms))
    run = _as_run(row, measured)

    def step_s(host_s: float) -> float:
        stack = row.stack_spec.with_changes({"overlap": {"moe_host_s_per_operator": host_s}})
        return estimate_with(replace(run, stack=stack), terms).step_time_s

    shipped = estimate_with(run, terms).step_time_s
    bare = step_s(0.0)
    if bare >= measured or step_s(UPPER_S) <= measured:
        return None, measured, bare, shipped
    lo, hi = 0.0, UPPER_S
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if step_s(mid) < measured else (lo, mid)
    return lo, measured, bare, shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="megatron-core", help="the stack preset whose MoE rows to read")
    parser.add_argument("--model", default="", help="only rows whose run name contains this")
    args = parser.parse_args()
    stack = load_stack(args.stack)
    rows = [p for p in read_published_runs() if isinstance(p, PublishedRow) and p.has_metric and p.model.num_experts
            and p.stack == args.stack and args.model in p.run]
    print(f"{args.stack}: moe_host_s_per_operator {stack.overlap.moe_host_s_per_operator * 1e6:.1f} us, fitted on "
          f"{len(stack.overlap.moe_host_fit_rows)} rows; error = priced / measured step - 1 (negative: priced too slow)")
    print(f"{'row':<62} {'ops':>4} {'match us':>9} {'no floor':>9} {'shipped':>9}")
    fit = []
    for row in rows:
        host_s, measured, bare, shipped = matching_host_s(row)
        row_host = row.stack_spec.overlap.moe_host_s_per_operator
        tag = " (fit row)" if row.stack_fit_row else ("" if row_host else " (no floor: notes)")
        if row.stack_fit_row and host_s is not None:
            fit.append(host_s)
        match = "-" if host_s is None else f"{host_s * 1e6:.1f}"
        print(f"{(row.source_id + ': ' + row.run)[:62]:<62} {operators_per_layer(row):>4} {match:>9} "
              f"{100 * (measured / bare - 1):+8.1f}% {100 * (measured / shipped - 1):+8.1f}%{tag}")
    if fit:
        print(f"\nmean over the fit rows: {statistics.mean(fit) * 1e6:.1f} us per operator ({len(fit)} rows)")


if __name__ == "__main__":
    main()
