"""What a rank of more than three FSDP-wrapped stages pays for gathering evicted stages again: measured on ppplan's
own runtime (CPU, gloo) against the estimate.

torch's pipeline runtime keeps at most three stages of a rank unsharded (``costmodels.schedules.fsdp_lowering``):
interleaved 1F1B at v 4 gathers a stage again each time its list comes back to it, at v 2 never. The bench prices
and launches one wide, shallow Llama (hidden 2048, 8 layers, sequence 16: 205 MB of fp32 parameters per layer) at
pp 2, M 8, fp32, four ways: v 4 and v 2 at dp 2 (ZeRO 1: each gather again is an all-gather over the two data
ranks), and v 4 and v 2 at dp 1 (no FSDP, nothing gathered: the control, which keeps every other difference between
the two schedules). It prints each plan's predicted and measured step time (the median of the steps after the
first two, which warm the heap) and, per dp, v 4 less v 2. It prints and never asserts; about 10 minutes and 13 GiB
on the 2-core VM.

Run: python bench/evicted_regathers.py [--steps 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from wide_llama import ppplan, workspace

MICROBATCHES = 8
PLANS = [(2, 4), (2, 2), (1, 4), (1, 2)]  # (dp, v)


def step_times(metrics: Path) -> tuple[float, float]:
    """(predicted, measured) step seconds: the slowest rank's time per step, median over the steps after the first two."""
    by_step: dict[int, float] = {}
    predicted = 0.0
    for line in metrics.read_text().splitlines():
        d = json.loads(line)
        predicted = d["predicted_step_time_s"]
        by_step[d["step"]] = max(by_step.get(d["step"], 0.0), d["step_time_s"])
    steady = [t for step, t in sorted(by_step.items()) if step >= 2] or list(by_step.values())
    return predicted, statistics.median(steady)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="keep the plans and metrics here")
    args = parser.parse_args()
    work, model = workspace(args.keep, "ppplan-regathers-")
    times: dict[tuple[int, int], tuple[float, float]] = {}
    for dp, v in PLANS:
        plan, metrics = work / f"plan_dp{dp}_v{v}.json", work / f"metrics_dp{dp}_v{v}.jsonl"
        ppplan("evaluate", "--model", str(model), "--cluster", "cpu-local", "--gpus", str(2 * dp),
               "--global-batch", str(MICROBATCHES * dp), "--tp", "1", "--pp", "2", "--mbs", "1",
               "--schedule", "interleaved-1f1b", "--v", str(v), "--zero", "1" if dp > 1 else "0",
               "--precision", "fp32", "--out", str(plan))
        # --force: at dp 1 (no ZeRO) the plan is priced a few hundred MiB above cpu-local's 4.5 GiB a rank,
        # which this 24 GiB machine has room for
        ppplan("launch", str(plan), "--steps", str(args.steps), "--metrics", str(metrics), "--overwrite", "--force")
        times[dp, v] = step_times(metrics)
    print(f"{'dp':>3} {'v':>3} {'pred s':>8} {'meas s':>8} {'err %':>7}")
    for (dp, v), (pred, meas) in times.items():
        print(f"{dp:>3} {v:>3} {pred:8.3f} {meas:8.3f} {100 * (pred - meas) / meas:+7.1f}")
    for dp in sorted({dp for dp, _ in PLANS}, reverse=True):
        (p4, m4), (p2, m2) = times[dp, 4], times[dp, 2]
        print(f"dp {dp}: v 4 less v 2, predicted {p4 - p2:+.3f} s, measured {m4 - m2:+.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
