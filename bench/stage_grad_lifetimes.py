"""When a pipeline rank's unsharded gradients are alive: measured on ppplan's own runtime (CPU, gloo).

Under torch.distributed.pipelining with FSDP2 the gradient sync stays off until the REDUCE_GRAD action torch lowers
right after a stage's last W or full backward, which reduce-scatters the stage's unsharded gradients and frees
them (``costmodels.memory.gradients_held_per_stage``). A rank of one stage holds its gradients at its activation
peak; a rank of several may have freed one stage's before the next one's appear.

The bench prices and launches one model twice on ``cpu-local`` (pp 2 x dp 2, ZeRO 1, fp32, M 2): 1F1B, one stage
of 4 layers per rank, and interleaved 1F1B with v 4, four stages of one layer each per rank, whose backwards run
stage by stage (stage 6's two, then 4's, 2's, 0's). A wide, shallow model (hidden 2048, sequence 16) makes the
gradients (180 MiB per layer, fp32) outweigh the activations. It prints, per pipeline rank, the predicted and the
measured peak (the runtime's own figure: peak anonymous RSS growth, ``launch/runtime/metrics.py``; largest over
the steps) of each plan, and the difference between the two plans, predicted and measured. It prints and never
asserts; about 5 minutes and 13 GiB of memory on the 2-core VM.

Run: python bench/stage_grad_lifetimes.py [--steps 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wide_llama import ppplan, workspace

PLANS = {"1f1b": 1, "interleaved-1f1b": 4}  # schedule: virtual stages per rank


def peaks(metrics: Path) -> dict[int, tuple[float, float]]:
    """Per global rank: (predicted, largest measured) peak GiB."""
    out: dict[int, tuple[float, float]] = {}
    for line in metrics.read_text().splitlines():
        d = json.loads(line)
        if d.get("peak_memory_gib") is None:
            continue
        pred, meas = out.get(d["rank"], (d["predicted_peak_memory_gib"], 0.0))
        out[d["rank"]] = (pred, max(meas, d["peak_memory_gib"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the plans and metrics here")
    args = parser.parse_args()
    work, model = workspace(args.keep, "ppplan-grad-lifetimes-")
    measured = {}
    for schedule, v in PLANS.items():
        plan, metrics = work / f"plan_{schedule}.json", work / f"metrics_{schedule}.jsonl"
        ppplan("evaluate", "--model", str(model), "--cluster", "cpu-local", "--gpus", "4", "--global-batch", "4",
               "--tp", "1", "--pp", "2", "--mbs", "1", "--schedule", schedule, "--v", str(v), "--zero", "1",
               "--precision", "fp32", "--out", str(plan))
        ppplan("launch", str(plan), "--steps", str(args.steps), "--metrics", str(metrics), "--overwrite")
        measured[schedule] = peaks(metrics)
    print(f"{'rank':>4}  " + "  ".join(f"{s + ' pred':>22} {s + ' meas':>22}" for s in PLANS) + "  diff pred  diff meas  (GiB)")
    one, several = (measured[s] for s in PLANS)
    for rank in sorted(one):
        (p1, m1), (p2, m2) = one[rank], several[rank]
        print(f"{rank:>4}  {p1:22.3f} {m1:22.3f}  {p2:22.3f} {m2:22.3f}  {p1 - p2:9.3f}  {m1 - m2:9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
