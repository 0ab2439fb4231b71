"""What glibc's heap keeps on top of the bytes the cost model allocates on tensor-parallel ranks (issue 14).

On CPU a rank's peak memory is its resident set, and freed tensors stay resident in glibc's heap until
the heap reuses them. Under DTensor tensor parallelism the heap grows past the live tensors far more than
without it (the torch profiler's allocation events: tiny-gpt tp 2 mbs 1 holds 70 MiB of live tensors at
its peak, 111 MiB resident; ``malloc_trim`` between steps does not lower the peak, which builds within a
step), and by about the same number of bytes at every degree: a share of a tp rank's shrinking
allocation (``allocator_fragmentation``) does not cover it.

For each model x tp x mbs this launches ``--reps`` one-stage plans (``ppplan evaluate --pp 1`` on
cpu-local, ``--global-batch`` sequences) for ``--steps`` steps and prints the measured peak (the
runtime's own figure: anonymous RSS growth, ``launch/runtime/metrics.py``, the largest over ranks,
steps and launches) against the bytes the cost model allocates (the plan's ``memory_breakdown_gib``
less ``fragmentation``, ``tp_heap`` and ``runtime_reserved``) times 1 + cpu-local's
``allocator_fragmentation``. The reserve a tp rank needs (``ClusterSpec.tp_heap_reserve_gib``) is the
largest excess of the ``--fit`` models' tp > 1 runs; the ``--held-out`` models are priced with it and
their error printed. It prints and never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PPPLAN = [sys.executable, "-c", "from planner.cli.main import main; main()"]
NOT_ALLOCATED = ("fragmentation", "tp_heap", "runtime_reserved")


@dataclass(frozen=True)
class Run:
    model: str
    tp: int
    mbs: int
    allocated_mib: float
    measured_mib: float
    fragmentation: float

    @property
    def priced_without_reserve_mib(self) -> float:
        return self.allocated_mib * (1 + self.fragmentation)

    @property
    def excess_mib(self) -> float:
        return self.measured_mib - self.priced_without_reserve_mib


def _ppplan(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(PPPLAN + args, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def measure(model: str, tp: int, mbs: int, args: argparse.Namespace, workdir: Path) -> Run | None:
    """One configuration's allocated bytes and its largest measured peak over ``args.reps`` launches."""
    name = f"{model}_tp{tp}_mbs{mbs}"
    plan_path = workdir / f"{name}.yaml"
    priced = _ppplan(["evaluate", "--model", model, "--cluster", "cpu-local", "--gpus", str(tp), "--global-batch",
                      str(args.global_batch), "--tp", str(tp), "--pp", "1", "--mbs", str(mbs), "--out", str(plan_path)])
    if priced.returncode != 0:
        print(f"{name}: not priced ({(priced.stderr or priced.stdout).strip().splitlines()[-1]})")
        return None
    plan = yaml.safe_load(plan_path.read_text())
    fragmentation = plan["cluster"]["allocator_fragmentation"]
    breakdown = plan["estimate"]["memory_breakdown_gib"][0]
    allocated = sum(v for k, v in breakdown.items() if k not in NOT_ALLOCATED) * 1024
    peaks = []
    for rep in range(args.reps):
        metrics = workdir / f"{name}_{rep}.jsonl"
        if not (args.reuse and metrics.is_file()):
            metrics.unlink(missing_ok=True)
            launched = _ppplan(["launch", str(plan_path), "--steps", str(args.steps), "--metrics", str(metrics)])
            if launched.returncode != 0:
                print(f"{name}: launch failed ({(launched.stderr or launched.stdout).strip().splitlines()[-1]})")
                return None
        peaks += [json.loads(line)["peak_memory_gib"] * 1024 for line in metrics.read_text().splitlines()]
    return Run(model, tp, mbs, allocated, max(peaks), fragmentation)


def fitted_reserve_mib(runs: list[Run]) -> float:
    """The largest excess of the runs with tp > 1 over their allocation and fragmentation share (MiB, rounded up)."""
    return float(-(-max((run.excess_mib for run in runs if run.tp > 1), default=0.0) // 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", default="tiny-gpt")
    parser.add_argument("--held-out", default="tiny-llama,tiny-moe")
    parser.add_argument("--tp", default="1,2,4,8")
    parser.add_argument("--mbs", default="1,4")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--keep", type=Path, default=None, help="keep plans and metrics here")
    parser.add_argument("--reuse", action="store_true", help="re-read the metrics --keep already holds instead of launching")
    args = parser.parse_args()
    tps = [int(x) for x in args.tp.split(",")]
    mbss = [int(x) for x in args.mbs.split(",")]
    with tempfile.TemporaryDirectory(prefix="ppplan-heap-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        runs: dict[str, list[Run]] = {"fit": [], "held-out": []}
        for part, models in (("fit", args.fit), ("held-out", args.held_out)):
            for model in filter(None, models.split(",")):
                for tp in tps:
                    for mbs in mbss:
                        run = measure(model, tp, mbs, args, workdir)
                        if run:
                            runs[part].append(run)
                            print(f"{part:8s} {model:11s} tp{tp} mbs{mbs}: allocated {run.allocated_mib:7.1f} MiB, "
                                  f"x {1 + run.fragmentation:.2f} = {run.priced_without_reserve_mib:7.1f}, measured "
                                  f"{run.measured_mib:7.1f} MiB, excess {run.excess_mib:+6.1f}", flush=True)
    reserve = fitted_reserve_mib(runs["fit"])
    print(f"\ntp > 1 heap reserve from {args.fit} (largest excess): {reserve:g} MiB = {reserve / 1024:.4f} GiB")
    worst = None
    for run in runs["held-out"] + [r for r in runs["fit"] if r.tp == 1]:
        priced = run.priced_without_reserve_mib + (reserve if run.tp > 1 else 0.0)
        err = 100.0 * (priced - run.measured_mib) / run.measured_mib
        worst = err if worst is None else min(worst, err)
        part = "held-out" if run in runs["held-out"] else "fit tp 1"
        print(f"{part:8s} {run.model:11s} tp{run.tp} mbs{run.mbs}: priced {priced:7.1f} MiB against "
              f"{run.measured_mib:7.1f} measured: {err:+.1f} %")
    if worst is not None:
        print(f"worst error {worst:+.1f} % (target: no run below -5 %)")


if __name__ == "__main__":
    main()
