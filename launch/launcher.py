"""``ppplan launch``: check a plan against the runtime rules, then run it with torchrun.

Rendezvous: one node with no ``--master-addr``/``--master-port`` runs
``torchrun --standalone`` (a free local port, so parallel jobs never collide);
otherwise torchrun's static rendezvous at ``--master-addr:--master-port`` with
an explicit ``--node-rank``, so global rank = node_rank * nproc_per_node +
local rank, the order the rank grid (``costmodels.rank_grid``) assumes.

torchrun is torch's own launcher run through ``launch.runtime.torchrun`` (the same
arguments; it dies with ``ppplan launch`` and records how each failed rank exited).
Failure handling: torchrun (``--max-restarts 0``) stops every rank as soon as one
exits non-zero (it polls every 0.1 s). ``launch/job.py`` owns the job: signals,
hangs (``hang_timeout_s``, default 60 s on gloo), stopping every process, and the
rank that failed first. Before anything starts, the plan is checked against the
runtime rules and this machine's devices (``launch/devices.py``), and the metrics
path is checked (an existing file is kept unless ``overwrite``).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from costmodels.layer_costs import runs_on_cpu
from costmodels.rules import check_plan as check_plan_rules
from costmodels.schedules.torch_csv import parse_torch_csv
from costmodels.simulator import schedule_graph
from launch.devices import check_devices
from launch.emit.common import node_layout
from launch.job import JobOptions, LaunchResult, run_job
from launch.progress import ProgressTracker, StepProgress
from profiles.errors import PlanError
from profiles.files import read_text
from profiles.loader import DEFAULT_STACK, load_stack, plan_stack
from profiles.schema import Plan

RUNTIME_MODULE = "launch.runtime.train"
TORCHRUN_MODULE = "launch.runtime.torchrun"
# hang timeout per backend: gloo 60 s (issue 14); NCCL torch's default process-group timeout (10 min)
DEFAULT_HANG_TIMEOUT_S = {"gloo": 60.0, "nccl": 600.0}


@dataclass(frozen=True, kw_only=True)
class LaunchOptions:
    """What ``ppplan launch`` was asked; ``None`` fields take the plan's defaults."""

    steps: int = 10
    metrics: Path = Path("metrics.jsonl")
    nnodes: int | None = None
    node_rank: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    schedule_csv: Path | None = None
    seed: int = 0
    overwrite: bool = False
    hang_timeout_s: float | None = None

    def hang_timeout_for(self, plan: Plan) -> float:
        """``hang_timeout_s``, or the default of the plan's backend (gloo on a CPU cluster)."""
        if self.hang_timeout_s is not None:
            return self.hang_timeout_s
        return DEFAULT_HANG_TIMEOUT_S["gloo" if plan.cluster.gpu.name == "cpu" else "nccl"]


def check_plan(plan: Plan, schedule_csv: Path | None = None) -> None:
    """The runtime rules of ppplan's own stack (``costmodels.rules``, ``ppplan-torch``);
    ``PlanError`` says how to fix it."""
    if plan.config.stack != DEFAULT_STACK:
        emit = plan_stack(plan).emit  # none: ppplan writes no job for it; ppplan: a copy of ppplan-torch
        way = f"emit it with --emit {emit}, or " if emit not in ("none", "ppplan") else ""
        raise PlanError(
            f"the plan is for stack '{plan.config.stack}'; ppplan launch runs '{DEFAULT_STACK}' plans: "
            f"{way}re-plan with --stack {DEFAULT_STACK}"
        )
    check_plan_rules(plan, load_stack(DEFAULT_STACK))
    check_schedule_csv(plan, schedule_csv)


def check_schedule_csv(plan: Plan, schedule_csv: Path | None) -> None:
    """``--schedule-csv`` gives a 'custom' plan its action list (and only such a plan): it must be this plan's."""
    if schedule_csv is not None and plan.config.schedule != "custom":
        raise PlanError(f"--schedule-csv is for a 'custom' plan; this plan runs '{plan.config.schedule}': drop --schedule-csv")
    if plan.config.schedule == "custom":
        _check_custom_csv(plan, schedule_csv)


def _check_custom_csv(plan: Plan, schedule_csv: Path | None) -> None:
    if schedule_csv is None:
        return  # the plan carries its action list (config.schedule_csv), checked by the rules
    schedule = parse_torch_csv(read_text(schedule_csv, "--schedule-csv"))
    cfg = plan.config
    if (schedule.pp, schedule.v, schedule.num_microbatches) != (cfg.pp, cfg.v, cfg.num_microbatches):
        raise PlanError(
            f"--schedule-csv has pp={schedule.pp} v={schedule.v} M={schedule.num_microbatches} but the plan has "
            f"pp={cfg.pp} v={cfg.v} M={cfg.num_microbatches}: export the CSV of this plan"
        )
    schedule_graph(schedule)  # walked as torch lowers it, as the plan's own list is (costmodels.rules.check_custom_schedule)


def _rendezvous_args(plan: Plan, opts: LaunchOptions) -> list[str]:
    layout = node_layout(plan.config.world_size, plan.cluster.gpus_per_node, opts.nnodes)
    sizes = ["--nnodes", str(layout.nnodes), "--nproc-per-node", str(layout.nproc_per_node)]
    if opts.node_rank is not None and not 0 <= opts.node_rank < layout.nnodes:
        raise PlanError(f"--node-rank {opts.node_rank} outside 0..{layout.nnodes - 1}")
    if layout.nnodes == 1 and opts.master_addr is None and opts.master_port is None:
        return ["--standalone", *sizes]
    if layout.nnodes > 1 and (opts.node_rank is None or opts.master_addr is None):
        raise PlanError(
            f"the plan needs {layout.nnodes} nodes: run ppplan launch on each with --node-rank R "
            f"(0..{layout.nnodes - 1}) and --master-addr of node 0 (or pass --nnodes)"
        )
    node_rank = opts.node_rank or 0
    return [
        *sizes,
        "--node-rank", str(node_rank),
        "--master-addr", opts.master_addr or "127.0.0.1",
        "--master-port", str(opts.master_port or 29500),
    ]  # fmt: skip


def torchrun_command(plan: Plan, plan_path: Path, opts: LaunchOptions, python: str = sys.executable) -> list[str]:
    """The exact argv ``ppplan launch`` runs: torchrun (``torch.distributed.run``) through
    ``launch.runtime.torchrun``, which adds only the job ownership of ``launch/job.py``."""
    argv = [python, "-m", TORCHRUN_MODULE, *_rendezvous_args(plan, opts), "--max-restarts", "0"]
    argv += ["-m", RUNTIME_MODULE, "--plan", str(plan_path.resolve()), "--metrics", str(opts.metrics.resolve())]
    argv += ["--steps", str(opts.steps), "--seed", str(opts.seed)]
    if opts.schedule_csv is not None:
        argv += ["--schedule-csv", str(opts.schedule_csv.resolve())]
    return argv


def format_command(argv: list[str]) -> str:
    return shlex.join(argv)


def check_metrics_path(path: Path, overwrite: bool) -> None:
    """Refuse to touch an existing metrics file unless ``overwrite`` (a failed run must not
    destroy earlier results), and a path that cannot be written; writes nothing."""
    if path.is_dir():
        raise PlanError(f"--metrics {path} is a directory: give a file path")
    if path.exists() and not overwrite:
        raise PlanError(f"--metrics {path} exists: pass --overwrite to replace it, or pick another path")
    parent = path.parent if str(path.parent) else Path(".")
    existing = next((p for p in (parent, *parent.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise PlanError(f"cannot write --metrics {path}: {existing} is not a writable directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise PlanError(f"cannot write --metrics {path}: permission denied")


def start_metrics(path: Path) -> None:
    """Create (or empty, when ``--overwrite`` allowed it) the metrics file the ranks append to."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    except OSError as exc:
        raise PlanError(f"cannot write --metrics {path}: {exc.strerror}; pick a writable path") from None


def prepare_launch(plan: Plan, plan_path: Path, opts: LaunchOptions, devices: bool = True) -> list[str]:
    """Every check that can fail before a process starts (exit 2), then the torchrun argv; ``devices`` False leaves
    out this machine's devices (``launch --dry-run`` may be made on a login node)."""
    check_plan(plan, opts.schedule_csv)
    argv = torchrun_command(plan, plan_path, opts)
    if devices:
        check_devices(plan, node_layout(plan.config.world_size, plan.cluster.gpus_per_node, opts.nnodes))
    check_metrics_path(opts.metrics, opts.overwrite)
    return argv


def launch_plan(
    plan: Plan, plan_path: Path, opts: LaunchOptions, on_step: Callable[[StepProgress], None] | None = None,
    on_start: Callable[[list[str]], None] | None = None,
) -> LaunchResult:
    """Check (``PlanError`` before anything is written or started), start and watch the job;
    ``on_start`` gets the argv just before it starts, ``on_step`` each completed step."""
    argv = prepare_launch(plan, plan_path, opts)
    start_metrics(opts.metrics)
    if on_start is not None:
        on_start(argv)
    job = JobOptions(hang_timeout_s=opts.hang_timeout_for(plan), on_step=on_step)
    return run_job(argv, job, metrics=opts.metrics, tracker=ProgressTracker(plan), env=cpu_thread_env(plan))


def cpu_thread_env(plan: Plan, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``OMP_NUM_THREADS=1`` for the ranks of a CPU plan, unless the user set it: the cost model prices a CPU
    rank as one thread (``profiles/clusters/cpu-local.yaml``, ``ppplan profile``'s one intra-op thread), and
    torchrun sets 1 only where a node runs several processes. A one-rank tiny-gpt plan (batch 8) priced
    0.643 s ran 0.41 s on cpu-local's two cores without it, 0.637 s with it."""
    if not runs_on_cpu(plan.cluster) or "OMP_NUM_THREADS" in environ:
        return {}
    return {"OMP_NUM_THREADS": "1"}
