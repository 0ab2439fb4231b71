"""``ppplan launch``: check a plan against the runtime rules, then run it with torchrun.

Rendezvous: one node with no ``--master-addr``/``--master-port`` runs
``torchrun --standalone`` (a free local port, so parallel jobs never collide);
otherwise torchrun's static rendezvous at ``--master-addr:--master-port`` with
an explicit ``--node-rank``, so global rank = node_rank * nproc_per_node +
local rank, the order the rank grid (``costmodels.rank_grid``) assumes.

Failure handling: torchrun (``--max-restarts 0``) stops every rank as soon as
one exits non-zero (it polls every 0.1 s); the failing rank writes
``rank<R>.json`` into a per-job directory (``PPPLAN_FAILURE_DIR``) and the
launcher reports the first one as the reason (exit 1). Collectives time out
after ``PPPLAN_PG_TIMEOUT_S`` (default 180 s) so a rank never waits forever
for a dead peer, and each worker exits when its torchrun parent disappears.
Ctrl-C sends SIGINT to torchrun (which stops its workers), then SIGTERM and
SIGKILL if it does not exit in time.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from costmodels.rules import check_config
from costmodels.schedules.torch_csv import parse_torch_csv
from launch.emit.common import node_layout
from profiles.errors import PlanError
from profiles.loader import DEFAULT_STACK, load_stack
from profiles.schema import Plan

RUNTIME_MODULE = "launch.runtime.train"
FAILURE_DIR_ENV = "PPPLAN_FAILURE_DIR"
STOP_GRACE_S = 10.0


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


def check_plan(plan: Plan, schedule_csv: Path | None = None) -> None:
    """The runtime rules of ppplan's own stack (``costmodels.rules``, ``ppplan-torch``);
    ``PlanError`` says how to fix it."""
    if plan.config.stack != DEFAULT_STACK:
        raise PlanError(
            f"the plan is for stack '{plan.config.stack}'; ppplan launch runs '{DEFAULT_STACK}' plans: emit it with "
            f"--emit {load_stack(plan.config.stack).emit}, or re-plan with --stack {DEFAULT_STACK}"
        )
    check_config(plan.model, plan.train, plan.config.world_size, plan.config, load_stack(DEFAULT_STACK))
    if plan.train.seq_len > plan.model.seq_len and plan.model.position_embedding == "learned":
        raise PlanError(
            f"seq_len {plan.train.seq_len} exceeds the model's {plan.model.seq_len} learned positions: lower --seq-len"
        )
    if plan.config.schedule == "custom":
        _check_custom_csv(plan, schedule_csv)


def _check_custom_csv(plan: Plan, schedule_csv: Path | None) -> None:

    if schedule_csv is None:
        return  # the plan carries its action list (config.schedule_csv), checked by the rules
    if not schedule_csv.is_file():
        raise PlanError(f"--schedule-csv {schedule_csv} not found")
    schedule = parse_torch_csv(schedule_csv.read_text())
    cfg = plan.config
    if (schedule.pp, schedule.v, schedule.num_microbatches) != (cfg.pp, cfg.v, cfg.num_microbatches):
        raise PlanError(
            f"--schedule-csv has pp={schedule.pp} v={schedule.v} M={schedule.num_microbatches} but the plan has "
            f"pp={cfg.pp} v={cfg.v} M={cfg.num_microbatches}: export the CSV of this plan"
        )


def _rendezvous_args(plan: Plan, opts: LaunchOptions) -> list[str]:
    layout = node_layout(plan.config.world_size, plan.cluster.gpus_per_node, opts.nnodes)
    sizes = ["--nnodes", str(layout.nnodes), "--nproc-per-node", str(layout.nproc_per_node)]
    if layout.nnodes == 1 and opts.master_addr is None and opts.master_port is None:
        return ["--standalone", *sizes]
    if layout.nnodes > 1 and (opts.node_rank is None or opts.master_addr is None):
        raise PlanError(
            f"the plan needs {layout.nnodes} nodes: run ppplan launch on each with --node-rank R "
            f"(0..{layout.nnodes - 1}) and --master-addr of node 0 (or pass --nnodes)"
        )
    node_rank = opts.node_rank or 0
    if not 0 <= node_rank < layout.nnodes:
        raise PlanError(f"--node-rank {node_rank} outside 0..{layout.nnodes - 1}")
    return [
        *sizes,
        "--node-rank", str(node_rank),
        "--master-addr", opts.master_addr or "127.0.0.1",
        "--master-port", str(opts.master_port or 29500),
    ]  # fmt: skip


def torchrun_command(plan: Plan, plan_path: Path, opts: LaunchOptions, python: str = sys.executable) -> list[str]:
    """The exact argv ``ppplan launch`` runs (``python -m torch.distributed.run`` is torchrun)."""
    argv = [python, "-m", "torch.distributed.run", *_rendezvous_args(plan, opts), "--max-restarts", "0"]
    argv += ["-m", RUNTIME_MODULE, "--plan", str(plan_path.resolve()), "--metrics", str(opts.metrics.resolve())]
    argv += ["--steps", str(opts.steps), "--seed", str(opts.seed)]
    if opts.schedule_csv is not None:
        argv += ["--schedule-csv", str(opts.schedule_csv.resolve())]
    return argv


def format_command(argv: list[str]) -> str:
    return shlex.join(argv)


@dataclass(frozen=True)
class LaunchResult:
    """How the job ended: ``returncode`` 0 on success; ``failure`` names the rank and reason otherwise."""

    returncode: int
    failure: str | None


def first_failure(failure_dir: Path) -> str | None:
    """'rank R: <error>' of the earliest failure record, plus how many other ranks failed."""
    records = []
    for path in failure_dir.glob("rank*.json"):
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    if not records:
        return None
    records.sort(key=lambda r: r.get("time", 0.0))
    first = records[0]
    others = sorted({r["rank"] for r in records[1:]} - {first["rank"]})
    tail = f" (then ranks {others} failed too)" if others else ""
    return f"rank {first['rank']} failed: {first['error']}{tail}"


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT torchrun (it stops its workers), then SIGTERM, then SIGKILL its process group."""
    for sig, wait_s in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGTERM, STOP_GRACE_S / 2), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_torchrun(argv: list[str], env: dict[str, str] | None = None) -> LaunchResult:
    """Run the job, inheriting stdout/stderr; Ctrl-C stops every rank and re-raises."""
    with tempfile.TemporaryDirectory(prefix="ppplan-failures-") as failure_dir:
        job_env = {**os.environ, **(env or {}), FAILURE_DIR_ENV: failure_dir}
        proc = subprocess.Popen(argv, env=job_env, start_new_session=True)
        try:
            returncode = proc.wait()
        except KeyboardInterrupt:
            print("interrupted: stopping every rank", file=sys.stderr, flush=True)
            _stop(proc)
            raise
        failure = first_failure(Path(failure_dir)) if returncode else None
    if returncode and failure is None:
        failure = f"torchrun exited with code {returncode} (no rank reported an exception; see the log above)"
    return LaunchResult(returncode, failure)


def prepare_metrics(path: Path) -> None:
    """Start a fresh metrics file (the runtime appends a line per step and rank)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    except OSError as exc:
        raise PlanError(f"cannot write --metrics {path}: {exc.strerror}; pick a writable path") from None
