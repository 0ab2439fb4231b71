"""End to end on this machine (issue 7, part 4): profile -> evaluate -> launch -> compare.

For each plan of ``PLANS`` (tiny-gpt, and tiny-moe with expert and context parallelism, on
``cpu-local``, the same global batch, world <= 4): ``ppplan evaluate`` prices it (``--profile``
for tiny-gpt), ``ppplan launch`` runs it ``--reps`` times for
``--steps`` steps, and the table compares predicted and measured step time and peak memory;
then it prints the predicted and measured rankings. It prints figures and never asserts.

What is measured, exactly:
- step time: in each step, the slowest pipeline stage's ``step_time_s`` (every rank times
  the same barrier-started step); the median over the steps after the first (warm-up:
  shape inference, process-group warm-up, allocator growth), then the median over reps.
- peak memory: ``launch/runtime/metrics.py`` reports, per rank, peak RSS minus the RSS at
  plan start (torch imported, gloo group up). The planner's per-rank peak includes
  ``runtime_reserved_gib`` (for cpu-local: that start-of-plan RSS plus what the first
  steps page in). So both sides are put on the same footing, the whole resident set:
  measured = metrics peak + the start-of-plan RSS, measured here in a 1-rank gloo process
  the same way (``baseline_rss_gib``). "mem err %" is per pipeline stage, the worst
  (most negative) stage shown; the "above start" column gives the same comparison without
  the start-of-plan RSS on either side (the stricter view).
- load: before each launch the bench waits (up to 10 s) for other users to keep fewer than
  0.25 cores busy; "other cores" is what everything but this bench kept busy during the
  launches (median over reps; /proc/stat less our children's CPU time). The planner prices
  an otherwise idle machine: read rows with other cores well above 0 with that in mind.
- profile: ``ppplan profile --tp-group`` (TP degrees in a real TP group, so TP collectives
  and DTensor overhead are inside F and B), taken right before the runs so it sees the
  same machine load.

Run: python bench/e2e_cpu.py [--steps 4] [--reps 3] [--keep DIR] [--only tiny-moe]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MODEL = "tiny-gpt"
CLUSTER = "cpu-local"
GLOBAL_BATCH = 8
PPPLAN = [str(Path(sys.executable).with_name("ppplan"))]


@dataclass(frozen=True)
class PlanSpec:
    """One configuration, as ``ppplan evaluate`` options. Plans of ``MODEL`` are priced with the
    measured profile; tiny-moe plans (the profiler refuses mixture-of-experts layers) and plans with
    cp > 1 (a profile has no ring attention) with the roofline of the cpu-local cluster."""

    name: str
    tp: int
    pp: int
    dp: int
    mbs: int = 1
    schedule: str = "1f1b"
    recompute: str = "none"
    zero: int = 0
    model: str = MODEL
    cp: int = 1
    ep: int = 1

    @property
    def gpus(self) -> int:
        return self.tp * self.cp * self.pp * self.dp

    @property
    def profiled(self) -> bool:
        return self.model == MODEL and self.cp == 1

    def evaluate_args(self) -> list[str]:
        return [
            "--model", self.model, "--gpus", str(self.gpus), "--tp", str(self.tp), "--cp", str(self.cp), "--ep", str(self.ep),
            "--pp", str(self.pp), "--mbs", str(self.mbs), "--schedule", self.schedule, "--recompute", self.recompute,
            "--zero", str(self.zero),
        ]  # fmt: skip


# Step times at least 25 % apart, so that the ranking means something (tp, pp, dp and schedule
# all vary). Not here, and why: tp1 pp4 / tp1 pp2 dp2 / tp1 dp2 run within 25 % of the first
# plan, and are priced 20-35 % fast (see the closing note of issue 7).
PLANS = [
    PlanSpec("tp1 pp2 dp1 1f1b", tp=1, pp=2, dp=1),
    PlanSpec("tp1 pp2 dp1 gpipe full-rc", tp=1, pp=2, dp=1, schedule="gpipe", recompute="full"),
    PlanSpec("tp2 pp1 dp2 1f1b", tp=2, pp=1, dp=2),
    PlanSpec("tp4 pp1 dp1 1f1b", tp=4, pp=1, dp=1),
    # tiny-moe (issue 13): expert and context parallelism as the runtime runs them, against ep = cp = 1
    PlanSpec("moe dp2", tp=1, pp=1, dp=2, model="tiny-moe"),
    PlanSpec("moe ep2 dp2", tp=1, pp=1, dp=2, ep=2, model="tiny-moe"),
    PlanSpec("moe cp2 ep2", tp=1, pp=1, dp=1, cp=2, ep=2, model="tiny-moe"),
    PlanSpec("moe ep2 pp2 dp2", tp=1, pp=2, dp=2, ep=2, model="tiny-moe"),
    PlanSpec("moe tp2 cp2", tp=2, pp=1, dp=1, cp=2, model="tiny-moe"),
    # the dense tiny-llama (tiny-moe's attention and shapes) on the same roofline: the CPU roofline's own error
    PlanSpec("llama dp2", tp=1, pp=1, dp=2, model="tiny-llama"),
    PlanSpec("llama cp2", tp=1, pp=1, dp=1, cp=2, model="tiny-llama"),
]
PROFILE_TPS = "1,2,4"
PROFILE_RECOMPUTE = "none,full"
PROFILE_TRIES = 3
QUIET_CORES = 0.25
QUIET_WAIT_S = 10.0


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


def cpu_sample() -> tuple[float, float, float]:
    """(wall s, machine-wide busy CPU s from /proc/stat, CPU s used by our finished children)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    busy_s = (sum(fields) - fields[3] - fields[4]) / tick
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), busy_s, children.ru_utime + children.ru_stime


def other_cores(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Cores kept busy by everything but this bench's processes between two samples."""
    wall = after[0] - before[0]
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / wall if wall > 0 else 0.0


def wait_for_quiet(limit_s: float = QUIET_WAIT_S) -> float:
    """Wait (up to ``limit_s``) until other users keep fewer than ``QUIET_CORES`` cores busy;
    returns the last figure. Other load slows the ranks, which the planner does not price."""
    deadline = time.perf_counter() + limit_s
    while True:
        before = cpu_sample()
        time.sleep(0.5)
        load = other_cores(before, cpu_sample())
        if load < QUIET_CORES or time.perf_counter() > deadline:
            return load


BASELINE_SNIPPET = """
import os, tempfile
import launch.runtime.train  # everything a rank imports before its plan starts
import torch.distributed as dist
from launch.runtime.metrics import _current_rss_bytes
store = dist.FileStore(tempfile.mktemp(), 1)
dist.init_process_group("gloo", store=store, rank=0, world_size=1)
print(_current_rss_bytes() / 2**30)
"""


def baseline_rss_gib() -> float:
    """RSS of a rank at plan start (torch imported, gloo group up): metrics.py's baseline."""
    out = run([sys.executable, "-c", BASELINE_SNIPPET], env={**os.environ, "OMP_NUM_THREADS": "1"})
    return float(out.stdout.strip().splitlines()[-1])


def profile(path: Path) -> str:
    """``ppplan profile --tp-group``; retried because a TP-group worker sometimes aborts."""
    argv = [
        *PPPLAN, "profile", "--model", MODEL, "--cluster", CLUSTER, "--tp", PROFILE_TPS, "--mbs", "1",
        "--recompute", PROFILE_RECOMPUTE, "--tp-group", "--out", str(path),
    ]  # fmt: skip
    for attempt in range(1, PROFILE_TRIES + 1):
        out = run(argv)
        if out.returncode == 0:
            return f"profile: {' '.join(argv[3:])} (attempt {attempt})"
    raise SystemExit(f"ppplan profile failed {PROFILE_TRIES} times: {out.stderr.strip().splitlines()[-1:]}")


def evaluate(spec: PlanSpec, profile_path: Path, plan_path: Path) -> dict:
    profile_args = ["--profile", str(profile_path)] if spec.profiled else []
    argv = [
        *PPPLAN, "evaluate", "--cluster", CLUSTER, "--global-batch", str(GLOBAL_BATCH),
        *spec.evaluate_args(), *profile_args, "--out", str(plan_path), "--json",
    ]  # fmt: skip
    out = run(argv)
    if out.returncode != 0:
        raise SystemExit(f"evaluate {spec.name} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


@dataclass(frozen=True)
class Measured:
    step_s: float
    rep_step_s: list[float]
    peak_gib_by_stage: dict[int, float]
    other_cores: float = 0.0
    failure: str | None = None


def launch(plan_path: Path, metrics_dir: Path, steps: int, reps: int) -> Measured:
    rep_medians: list[float] = []
    peaks: dict[int, float] = {}
    loads: list[float] = []
    for rep in range(reps):
        metrics = metrics_dir / f"{plan_path.stem}.rep{rep}.jsonl"
        wait_for_quiet()
        before = cpu_sample()
        out = run([*PPPLAN, "launch", str(plan_path), "--steps", str(steps), "--metrics", str(metrics)])
        loads.append(other_cores(before, cpu_sample()))
        if out.returncode != 0:
            reason = (out.stderr.strip().splitlines() or ["?"])[-1]
            return Measured(float("nan"), rep_medians, peaks, failure=reason[:120])
        lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        by_step: dict[int, float] = {}
        for line in lines:
            by_step[line["step"]] = max(by_step.get(line["step"], 0.0), line["step_time_s"])
            peaks[line["stage"]] = max(peaks.get(line["stage"], 0.0), line["peak_memory_gib"])
        timed = [by_step[s] for s in sorted(by_step) if s >= 1] or list(by_step.values())
        rep_medians.append(statistics.median(timed))
    return Measured(statistics.median(rep_medians), rep_medians, peaks, statistics.median(loads))


def error_pct(predicted: float, measured: float) -> float:
    return 100.0 * (predicted - measured) / measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="steps per launch (the first is warm-up)")
    parser.add_argument("--reps", type=int, default=3, help="launches per plan")
    parser.add_argument("--keep", type=Path, default=None, help="keep plans, profile and metrics here")
    parser.add_argument("--only", default=None, help="run only the plans whose model or name contains this text")
    args = parser.parse_args()
    plans = [spec for spec in PLANS if args.only is None or args.only in spec.name or args.only in spec.model]
    os.chdir(Path(__file__).resolve().parents[1])
    work = args.keep or Path(tempfile.mkdtemp(prefix="ppplan-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}; other users' busy cores before the bench {wait_for_quiet(0.0):.2f}")
    base_gib = baseline_rss_gib()
    print(f"start-of-plan RSS of a rank (torch + gloo): {base_gib:.3f} GiB")
    profile_path = work / "profile.json"
    if any(spec.profiled for spec in plans):
        print(profile(profile_path))
    rows = []
    for spec in plans:
        plan_path = work / f"{spec.name.replace(' ', '_')}.json"
        est = evaluate(spec, profile_path, plan_path)["estimate"]
        reserved = json.loads(plan_path.read_text())["cluster"]["runtime_reserved_gib"]
        measured = launch(plan_path, work, args.steps, args.reps)
        rows.append((spec, est, reserved, measured))
    load = os.getloadavg()
    print()
    header = (f"{'plan':<28} {'pred step s':>11} {'meas step s':>11} {'err %':>7} {'pred peak GiB':>13} "
              f"{'meas peak GiB':>13} {'mem err %':>9} {'above start %':>13} {'other cores':>11}  reps (s)")
    print(header)
    print("-" * len(header))
    for spec, est, _reserved, m in rows:
        if m.failure:
            print(f"{spec.name:<28} {est['step_time_s']:>11.3f} {'failed':>11}  {m.failure}")
            continue
        worst = None
        for stage, meas in m.peak_gib_by_stage.items():
            pred = est["peak_memory_gib"][stage]
            total_err = error_pct(pred, meas + base_gib)
            above_err = error_pct(pred - base_gib, meas) if meas > 0 else float("nan")
            if worst is None or total_err < worst[2]:
                worst = (pred, meas + base_gib, total_err, above_err)
        pred_gib, meas_gib, mem_err, above_err = worst
        reps = " ".join(f"{x:.3f}" for x in m.rep_step_s)
        print(f"{spec.name:<28} {est['step_time_s']:>11.3f} {m.step_s:>11.3f} {error_pct(est['step_time_s'], m.step_s):>+7.1f} "
              f"{pred_gib:>13.3f} {meas_gib:>13.3f} {mem_err:>+9.1f} {above_err:>+13.1f} {m.other_cores:>11.2f}  {reps}")
    for model in dict.fromkeys(spec.model for spec in plans):
        ok = [(spec, est, m) for spec, est, _, m in rows if not m.failure and spec.model == model]
        predicted = [s.name for s, e, _ in sorted(ok, key=lambda r: r[1]["step_time_s"])]
        measured = [s.name for s, _, m in sorted(ok, key=lambda r: r[2].step_s)]
        print()
        print(f"{model} predicted ranking: " + " < ".join(predicted))
        print(f"{model} measured ranking:  " + " < ".join(measured))
        print(f"rankings agree: {'yes' if predicted == measured else 'no'}")
    print(f"load average after: {load[0]:.2f}; bench took {time.perf_counter() - started:.0f} s; files in {work}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
