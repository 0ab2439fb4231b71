"""Leads, not shipped constants: what would make BigScience's tr11 sweeps rank right.

BigScience's tr11 sweeps rank poorly under ppplan's price although the source's own repeats agree within
3.3 % (``validate``'s ``rho_noise_ceiling``: an exact predictor reaches rho 0.8 in 6.6 of its 9 sweeps, the cost
model in 1). At TP 8 a micro-batch of 4 runs about 8 % faster than one of 2, where ppplan prices it 1.5 % slower.
This prices BigScience's A100 rows at the A100 constants fitted without BigScience (the held-out ones ``validate``
uses) with one lever changed at a time, and prints their MAPE, the MAPE after one common rescale (every price
times the factor that zeroes the median log error: what a refit of the compute constants could at most
recover), the mean signed error, rho and the pick's loss per sweep (``accuracy.pick_regret_pct``):

- ``--action-ms``: host milliseconds per pipeline action (``StackOverlap.host_overhead_per_action_s``): DeepSpeed's
  PipelineEngine interprets each instruction in Python, with several small synchronous transfers per send
  (runtime/pipe/engine.py).
- ``--nvlink GBS:US``: the jean-zay-a100-80g preset's intra-node link, bandwidth per direction and latency per
  ring step: a cost per collective that grows with the TP group (2(t-1) ring steps an all-reduce), as every rank
  waiting on its own GPU under ``CUDA_LAUNCH_BLOCKING=1`` (set in every 384-GPU tr11 run) would make each
  all-reduce wait on its slowest rank. NCCL's own model puts a ring step on NVLink at 3.4 us (src/graph/tuning.cc).

Neither is shipped: a constant fitted on BigScience would be in sample for its only source, and holding it out by
sweep needs the family refit in every fold. Prints and never asserts (about 3 minutes on 2 cores: one
``validate`` fit, then the pricing).

Run: python bench/bigscience_leads.py [--action-ms 0 10 20 30] [--nvlink 100:8 100:40 300:80]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from planner.trust.accuracy import error_pct, grouped, mape_pct, pick_regret_pct, spearman_rho
from planner.trust.calibration import MeasuredRun, estimate_with
from planner.trust.validation import SWEEP_MIN_ROWS, TARGET_SWEEP_RHO, RowResult, _as_run, _prediction, validate
from profiles.schema import LinkSpec

SOURCE, FAMILY, STACK = "bigscience", "A100", "megatron-deepspeed"
Lever = Callable[[MeasuredRun], MeasuredRun]


def action_overhead(seconds: float) -> Lever:
    """The stack's host time per pipeline action set to ``seconds``."""
    return lambda run: replace(run, stack=run.stack.with_changes({"overlap": {"host_overhead_per_action_s": seconds}}))


def intra_node_link(bandwidth_gbs: float, latency_us: float) -> Lever:
    """The cluster's intra-node link replaced (validated as a cluster file's would be)."""
    link = LinkSpec(bandwidth_gbs=bandwidth_gbs, latency_us=latency_us)
    return lambda run: replace(run, cluster=run.cluster.model_copy(update={"intra_node": link}))


def priced_with(rows: list[RowResult], terms: dict[str, float], lever: Lever) -> list[tuple[RowResult, float, float]]:
    """(row, predicted metric, predicted tokens/s per GPU) with ``lever`` applied to the row's run."""
    out = []
    for r in rows:
        run = lever(_as_run(r.row, r.measured_step_time_s))
        priced = replace(r, heldout=_prediction(r.row, estimate_with(run, terms)))
        out.append((r, priced.heldout.value, priced.throughput_per_gpu("heldout")))
    return out


def summary(label: str, priced: list[tuple[RowResult, float, float]]) -> str:
    ratios = [value / float(r.row.measured) for r, value, _ in priced]
    scale = math.exp(-statistics.median(math.log(q) for q in ratios))
    errors = [error_pct(value, float(r.row.measured)) for r, value, _ in priced]
    sweeps = [ps for _, ps in sorted(grouped([p for p in priced if p[0].row.sweep], lambda p: p[0].row.sweep).items())
              if len(ps) >= SWEEP_MIN_ROWS]
    rhos, losses = [], []
    for ps in sweeps:
        predicted, measured = [t for _, _, t in ps], [r.throughput_per_gpu("measured") for r, _, _ in ps]
        rhos.append(spearman_rho(predicted, measured))
        losses.append(pick_regret_pct(predicted, measured))
    reached = sum(1 for x in rhos if x is not None and x >= TARGET_SWEEP_RHO)
    return (f"{label}: MAPE {mape_pct(errors):5.2f} %, after one common rescale {mape_pct((scale * q - 1) * 100 for q in ratios):5.2f} % "
            f"(x{scale:.3f}), mean {statistics.fmean(errors):+5.2f} %; rho >= {TARGET_SWEEP_RHO:g} in {reached} of {len(sweeps)} sweeps: "
            f"{' '.join('-' if x is None else f'{x:+.2f}' for x in rhos)}; the pick loses {' '.join(f'{x:.1f}' for x in losses)} %")


def parse_link(text: str) -> tuple[float, float]:
    bandwidth, _, latency = text.partition(":")
    try:
        return float(bandwidth), float(latency)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nvlink takes GBS:US (e.g. 100:8), got {text!r}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--action-ms", type=float, nargs="*", default=[0, 10, 20, 30])
    parser.add_argument("--nvlink", type=parse_link, nargs="*", default=[(100, 8), (100, 40), (100, 80), (300, 80)])
    args = parser.parse_args()
    report = validate()
    terms = report.family_fits[FAMILY].heldout_terms[SOURCE]
    rows = [r for r in report.priced if r.row.source == SOURCE and r.family == FAMILY and r.row.stack_spec.name == STACK]
    print(f"{len(rows)} {SOURCE} rows on {FAMILY}, priced at the {FAMILY} constants fitted without {SOURCE}; sweeps in name order")
    for ms in args.action_ms:
        print(summary(f"{ms:5.1f} ms per action", priced_with(rows, terms, action_overhead(ms / 1000))))
    for bandwidth, latency in args.nvlink:
        print(summary(f"NVLink {bandwidth:g} GB/s, {latency:g} us a ring step", priced_with(rows, terms, intra_node_link(bandwidth, latency))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
