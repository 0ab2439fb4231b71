"""What glibc's heap keeps on top of the bytes the cost model allocates on ranks that communicate (issue 14).

On CPU a rank's peak memory is its resident set, and freed tensors stay resident in glibc's heap until
the heap reuses them. A one-process run holds about its allocated bytes (1.00-1.22x, cpu-local's
``allocator_fragmentation`` share). A rank that exchanges tensors with other ranks during its step holds
more, by a near-constant number of bytes that a share of its (shrinking) allocation does not cover:

- tensor parallelism (``tp``): under DTensor, tiny-gpt tp 2 mbs 1 holds 70 MiB of live tensors at its
  peak and 111 MiB resident (the torch profiler's allocation events), about the same excess at tp 2, 4, 8;
- pipeline parallelism (``pp``): torch.distributed.pipelining keeps every send's buffer until the step
  ends, so small blocks stay pinned between the microbatches' activations (tiny-gpt pp 8 1F1B mbs 2: the
  head's rank holds 26.6 MiB of live tensors at its peak and 51.4 MiB resident);
- ZeRO 3 (``zero3``): FSDP2's per-layer all-gathers and reduce-scatters, by more the more microbatches
  a step runs and the larger the rank (tiny-gpt dp 2 mbs 1: 110 MiB live and 223-277 MiB resident at 4
  microbatches, 122 MiB live and 355-432 MiB resident at 16; glibc's arenas hold the rest as free
  blocks: ``mallinfo2``), so it is priced per allocated byte and microbatch.

For each model x layout x mbs this launches ``--reps`` plans (``ppplan evaluate`` on cpu-local) for
``--steps`` steps and compares each rank's measured peak (the runtime's own figure: anonymous RSS growth,
``launch/runtime/metrics.py``, the largest over steps and launches) with the bytes the cost model
allocates on that rank (``memory_breakdown_gib`` less the heap rows and ``runtime_reserved``) times
1 + ``allocator_fragmentation``. The reserve a kind of rank needs (``ClusterSpec.heap_reserve``) is the
largest excess of the ``--fit`` models' ranks of that kind (in MiB for tp and pp; for ZeRO 3 per
allocated byte and microbatch); the ``--held-out`` models are priced with it (a rank of several kinds takes
the largest) and their error printed. It prints and never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

from costmodels.rank_memory import heap_reserve_gib, heap_reserve_kinds
from profiles.loader import load_cluster
from profiles.schema import ClusterSpec, HeapReserve

ROOT = Path(__file__).resolve().parents[1]
PPPLAN = [sys.executable, "-c", "from planner.cli.main import main; main()"]
NOT_ALLOCATED = ("fragmentation", "heap_reserve", "runtime_reserved")


@dataclass(frozen=True)
class Layout:
    """One plan shape: ``tp4``, ``pp8`` or ``dp2z3`` (data parallel with ZeRO 3), with ``@B`` for a global
    batch other than the default (``dp2z3@32``: 16 microbatches per data rank at mbs 1)."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    zero: int = 0
    global_batch: int | None = None

    @classmethod
    def parse(cls, text: str) -> Layout:
        shape, _, batch = text.partition("@")
        extra = {"global_batch": int(batch)} if batch else {}
        if shape.startswith("tp"):
            return cls(tp=int(shape[2:]), **extra)
        if shape.startswith("pp"):
            return cls(pp=int(shape[2:]), **extra)
        if shape.startswith("dp") and shape.endswith("z3"):
            return cls(dp=int(shape[2:-2]), zero=3, **extra)
        raise SystemExit(f"error: layout {text!r} is not tpN, ppN or dpNz3, with an optional @B")

    @property
    def name(self) -> str:
        shape = f"pp{self.pp}" if self.pp > 1 else f"dp{self.dp}z3" if self.zero == 3 else f"tp{self.tp}"
        return shape if self.global_batch is None else f"{shape}b{self.global_batch}"

    @property
    def kinds(self) -> tuple[str, ...]:
        return heap_reserve_kinds(self.tp, self.pp, self.dp, self.zero)

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp


@dataclass(frozen=True)
class RankRun:
    model: str
    layout: Layout
    mbs: int
    microbatches: int
    rank: int
    allocated_mib: float
    measured_mib: float
    fragmentation: float

    @property
    def priced_without_reserve_mib(self) -> float:
        return self.allocated_mib * (1 + self.fragmentation)

    @property
    def excess_mib(self) -> float:
        return self.measured_mib - self.priced_without_reserve_mib

    @property
    def label(self) -> str:
        return f"{self.model:11s} {self.layout.name:9s} mbs{self.mbs} M{self.microbatches:<2d} rank {self.rank}"


def _ppplan(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(PPPLAN + args, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _last_line(done: subprocess.CompletedProcess) -> str:
    return ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]


def measure(model: str, layout: Layout, mbs: int, args: argparse.Namespace, workdir: Path) -> list[RankRun]:
    """Each pipeline rank's allocated bytes and its largest measured peak over ``args.reps`` launches."""
    name = f"{model}_{layout.name}_mbs{mbs}"
    plan_path = workdir / f"{name}.yaml"
    batch = layout.global_batch or (args.pp_global_batch if layout.pp > 1 else args.global_batch)
    priced = _ppplan(["evaluate", "--model", model, "--cluster", "cpu-local", "--gpus", str(layout.gpus),
                      "--global-batch", str(batch), "--tp", str(layout.tp), "--pp", str(layout.pp),
                      "--zero", str(layout.zero), "--schedule", "1f1b", "--mbs", str(mbs), "--out", str(plan_path)])
    if priced.returncode != 0:
        print(f"{name}: not priced ({_last_line(priced)})")
        return []
    plan = yaml.safe_load(plan_path.read_text())
    fragmentation = plan["cluster"]["allocator_fragmentation"]
    allocated = [sum(v for k, v in b.items() if k not in NOT_ALLOCATED) * 1024
                 for b in plan["estimate"]["memory_breakdown_gib"]]
    peaks: dict[int, float] = defaultdict(float)
    for rep in range(args.reps):
        metrics = workdir / f"{name}_{rep}.jsonl"
        if not (args.reuse and metrics.is_file()):
            metrics.unlink(missing_ok=True)
            launched = _ppplan(["launch", str(plan_path), "--steps", str(args.steps), "--metrics", str(metrics)])
            if launched.returncode != 0:
                print(f"{name}: launch failed ({_last_line(launched)})")
                return []
    launches = sorted(workdir.glob(f"{name}_*.jsonl")) if args.reuse else [
        workdir / f"{name}_{rep}.jsonl" for rep in range(args.reps)]
    for metrics in launches:  # --reuse reads every launch --keep holds, beyond --reps too
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            peaks[record["stage"]] = max(peaks[record["stage"]], record["peak_memory_gib"] * 1024)
    microbatches = plan["config"]["num_microbatches"]
    return [RankRun(model, layout, mbs, microbatches, stage, allocated[stage], peak, fragmentation)
            for stage, peak in sorted(peaks.items())]


def fitted_reserve(runs: list[RankRun]) -> HeapReserve:
    """Per kind, what its ranks need beyond their allocation and fragmentation share: the largest excess
    (rounded up to a MiB) for ``tp`` and ``pp``; for ``zero3`` the largest excess per allocated byte and
    microbatch (rounded up to 0.001). Kinds no fit run has stay 0."""
    need: dict[str, float] = defaultdict(float)
    for run in runs:
        for kind in run.layout.kinds:
            if kind == "zero3":
                value = -(-1000 * run.excess_mib / (run.allocated_mib * run.microbatches) // 1) / 1000
            else:
                value = -(-run.excess_mib // 1) / 1024
            need[kind] = max(need[kind], value)
    return HeapReserve(tp_gib=need["tp"], pp_gib=need["pp"], zero3_share_per_microbatch=need["zero3"])


def reserve_mib(run: RankRun, cluster: ClusterSpec) -> float:
    """The reserve the rank is priced with, as the estimate prices it (``costmodels.rank_memory.heap_reserve_gib``)."""
    layout = run.layout
    return 1024 * heap_reserve_gib(cluster, layout.tp, layout.pp, layout.dp, layout.zero, run.allocated_mib / 1024,
                                   run.microbatches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", default="tiny-gpt")
    parser.add_argument("--held-out", default="tiny-llama,tiny-moe")
    parser.add_argument("--layouts", default="tp1,tp2,tp4,tp8,pp4,pp8,dp2z3,dp4z3,dp2z3@32")
    parser.add_argument("--mbs", default="1,4")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--pp-global-batch", type=int, default=16, help="pipelines run more microbatches")
    parser.add_argument("--keep", type=Path, default=None, help="keep plans and metrics here")
    parser.add_argument("--reuse", action="store_true", help="re-read the metrics --keep already holds instead of launching")
    args = parser.parse_args()
    layouts = [Layout.parse(x) for x in args.layouts.split(",")]
    mbss = [int(x) for x in args.mbs.split(",")]
    runs: dict[str, list[RankRun]] = {"fit": [], "held-out": []}
    with tempfile.TemporaryDirectory(prefix="ppplan-heap-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for part, models in (("fit", args.fit), ("held-out", args.held_out)):
            for model in filter(None, models.split(",")):
                for layout in layouts:
                    for mbs in mbss:
                        for run in measure(model, layout, mbs, args, workdir):
                            runs[part].append(run)
                            print(f"{part:8s} {run.label}: allocated {run.allocated_mib:7.1f} MiB, "
                                  f"x {1 + run.fragmentation:.2f} = {run.priced_without_reserve_mib:7.1f}, measured "
                                  f"{run.measured_mib:7.1f} MiB, excess {run.excess_mib:+6.1f}", flush=True)
    reserve = fitted_reserve(runs["fit"])
    fitted = load_cluster("cpu-local").model_copy(update={"heap_reserve": reserve})
    print(f"\nheap reserve from {args.fit} (largest excess per kind of rank; a kind not fitted stays 0): "
          f"tp_gib {reserve.tp_gib:.4f} ({reserve.tp_gib * 1024:g} MiB), pp_gib {reserve.pp_gib:.4f} "
          f"({reserve.pp_gib * 1024:g} MiB), zero3_share_per_microbatch {reserve.zero3_share_per_microbatch:g}")
    worst = None
    for run in runs["held-out"] + [r for r in runs["fit"] if not r.layout.kinds]:
        priced = run.priced_without_reserve_mib + reserve_mib(run, fitted)
        err = 100.0 * (priced - run.measured_mib) / run.measured_mib
        worst = err if worst is None else min(worst, err)
        part = "held-out" if run in runs["held-out"] else "fit, none"
        print(f"{part:9s} {run.label}: priced {priced:7.1f} MiB against {run.measured_mib:7.1f} measured: {err:+.1f} %")
    if worst is not None:
        print(f"worst error {worst:+.1f} % (target: no rank below -5 %)")


if __name__ == "__main__":
    main()
