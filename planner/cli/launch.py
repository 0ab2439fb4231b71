"""``ppplan launch`` (run a plan with torchrun, or emit configs for other launchers)
and ``ppplan compare`` (predicted vs measured per stage).

Nothing here imports torch: the runtime runs in the torchrun workers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from launch.compare import compare, comparison_json, read_metrics
from launch.launcher import (
    LaunchOptions,
    check_plan,
    format_command,
    prepare_metrics,
    run_torchrun,
    torchrun_command,
)
from planner.cli.app import app, out, warn
from profiles.errors import InfeasibleError, PlanError
from profiles.loader import load_plan
from profiles.schema import Plan


def _emit(plan: Plan, target: str, out_dir: Optional[Path], opts: LaunchOptions) -> None:
    from launch.emit import EmitOptions, emit

    if out_dir is None:
        raise PlanError(f"--emit {target} writes files: add --out-dir DIR")
    options = EmitOptions(
        nnodes=opts.nnodes,
        steps=opts.steps,
        metrics=str(opts.metrics.resolve()),
        custom_schedule_csv=opts.schedule_csv,
        **({"master_port": opts.master_port} if opts.master_port else {}),
    )
    for path in emit(plan, target, out_dir, options=options, on_warning=warn):
        out.print(str(path), markup=False)


def _refuse_unfit(plan: Plan, what: str) -> None:
    """A plan predicted not to fit is neither run nor emitted (exit 1) unless --force."""
    est = plan.estimate
    if est.fits:
        return
    worst = max(est.peak_memory_gib)
    rank = est.peak_memory_gib.index(worst)
    raise InfeasibleError(
        f"the plan does not fit: pipeline rank {rank} needs {worst:.3g} GiB of {est.memory_limit_gib:.3g} GiB "
        f"(over by {worst - est.memory_limit_gib:.3g} GiB); re-plan, or add --force to {what} it anyway"
    )


def _loss_summary(metrics: Path) -> str:
    losses = [r["loss"] for r in sorted(read_metrics(metrics), key=lambda r: r["step"]) if r["loss"] is not None]
    if not losses:
        return "no loss recorded"
    return f"loss {losses[0]:.4f} -> {losses[-1]:.4f}"


@app.command("launch")
def launch_cmd(
    plan_path: Path = typer.Argument(..., help="plan.json from search or evaluate --out"),
    steps: int = typer.Option(10, min=1, help="optimizer steps to run"),
    metrics: Path = typer.Option(Path("metrics.jsonl"), help="metrics JSONL (one line per step and pipeline stage)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the exact torchrun command; run and write nothing"),
    nnodes: Optional[int] = typer.Option(None, min=1, help="nodes (default: as few as hold the plan's GPUs)"),
    node_rank: Optional[int] = typer.Option(None, min=0, help="this node's rank (multi-node)"),
    master_addr: Optional[str] = typer.Option(None, help="node 0's address (multi-node)"),
    master_port: Optional[int] = typer.Option(None, min=1, max=65535, help="rendezvous port on node 0"),
    schedule_csv: Optional[Path] = typer.Option(None, help="action list (torch pipeline CSV) of a 'custom' plan"),
    emit: Optional[str] = typer.Option(None, help="torchrun|slurm|megatron|torchtitan|csv: write configs instead of running"),
    out_dir: Optional[Path] = typer.Option(None, help="where --emit writes"),
    seed: int = typer.Option(0, hidden=True, help="model-init and data seed"),
    force: bool = typer.Option(False, "--force", help="launch or emit a plan predicted not to fit in memory"),
) -> None:
    """Run a plan with torchrun on the ppplan runtime (or --emit configs for other launchers)."""
    plan = load_plan(plan_path)
    if not force:
        _refuse_unfit(plan, "emit" if emit is not None else "launch")
    opts = LaunchOptions(
        steps=steps, metrics=metrics, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
        master_port=master_port, schedule_csv=schedule_csv, seed=seed,
    )  # fmt: skip
    if emit is not None:
        _emit(plan, emit, out_dir, opts)
        return
    check_plan(plan, schedule_csv)
    argv = torchrun_command(plan, plan_path, opts)
    if dry_run:
        print(format_command(argv))  # plain: rich would wrap a long command
        return
    prepare_metrics(metrics)
    print(f"launching {plan.config.world_size} ranks: {format_command(argv)}", file=sys.stderr, flush=True)
    result = run_torchrun(argv)
    if result.returncode:
        print(f"error: {result.failure}", file=sys.stderr, flush=True)
        raise typer.Exit(1)
    out.print(f"ran {steps} steps on {plan.config.world_size} ranks: {_loss_summary(metrics)}; metrics in {metrics}", markup=False)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def comparison_table(rows: list, title: str) -> Table:
    table = Table(title=title)
    for name in ("stage", "rank", "steps", "step s pred", "step s meas", "err %", "mem GiB pred", "mem GiB meas", "err %", "loss"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(
            str(r.stage), str(r.rank), str(r.steps),
            f"{r.predicted_step_time_s:.3f}", f"{r.measured_step_time_s:.3f}", _fmt(r.step_time_error_pct, "+.1f"),
            f"{r.predicted_peak_memory_gib:.3f}", f"{r.measured_peak_memory_gib:.3f}", _fmt(r.memory_error_pct, "+.1f"),
            _fmt(r.last_loss, ".4f"),
        )  # fmt: skip
    return table


@app.command("compare")
def compare_cmd(
    metrics_path: Path = typer.Argument(..., help="metrics.jsonl written by ppplan launch"),
    plan_path: Path = typer.Argument(..., help="the plan.json that was launched"),
    as_json: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
) -> None:
    """Predicted vs measured step time and peak memory, per pipeline stage."""
    plan = load_plan(plan_path)
    rows = compare(read_metrics(metrics_path), plan)
    if as_json:
        print(json.dumps(comparison_json(rows)))
        return
    cfg = plan.config
    title = f"{plan.model.name}: tp={cfg.tp} pp={cfg.pp} dp={cfg.dp} {cfg.schedule} (error = (pred - meas) / meas)"
    out.print(comparison_table(rows, title))
