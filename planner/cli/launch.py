"""``ppplan launch`` (run a plan with torchrun, or emit configs for other launchers)
and ``ppplan compare`` (predicted vs measured per stage).

Nothing here imports torch: the runtime runs in the torchrun workers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from costmodels.rules import check_custom_schedule
from launch.compare import compare, comparison_json, read_metrics
from launch.job import JobInterrupted
from launch.launcher import LaunchOptions, check_schedule_csv, format_command, launch_plan, prepare_launch
from launch.progress import StepProgress
from planner.cli.app import app, err, out, output_dir, output_option, warn
from planner.cli.plans import load_checked_plan
from planner.cli.render import json_document
from profiles.errors import InfeasibleError, PlanError
from profiles.files import same_file
from profiles.loader import load_plan
from profiles.schema import Plan


def _emit(plan: Plan, target: str, out_dir: Optional[Path], opts: LaunchOptions) -> None:
    from launch.emit import EmitOptions, emit

    if out_dir is None:
        raise PlanError(f"--emit {target} writes files: add --out-dir DIR")
    check_custom_schedule(plan.config)  # a job is written only for an action list that runs
    check_schedule_csv(plan, opts.schedule_csv)
    options = EmitOptions(
        nnodes=opts.nnodes,
        steps=opts.steps,
        metrics=str(opts.metrics.resolve()),
        custom_schedule_csv=opts.schedule_csv,
        **({"master_port": opts.master_port} if opts.master_port else {}),
    )
    for path in emit(plan, target, out_dir, options=options, on_warning=warn):
        out.print(str(path), markup=False)


def _check_emit_options(*, dry_run: bool, node_rank: int | None, master_addr: str | None, overwrite: bool,
                        hang_timeout_s: float | None) -> None:
    """Options of a run on this node are bad input with ``--emit``, which writes a job and would ignore them: an
    emitted job takes its node rank and rendezvous from its own launcher (SLURM, torchrun on each node), and
    ppplan neither watches it (``--hang-timeout-s``) nor writes its metrics file (``--overwrite``)."""
    if dry_run:
        raise PlanError("--dry-run prints the command of a run and --emit writes a job's files: pick one")
    for option, given in (("--node-rank", node_rank is not None), ("--master-addr", master_addr is not None),
                          ("--overwrite", overwrite), ("--hang-timeout-s", hang_timeout_s is not None)):
        if given:
            raise PlanError(f"{option} is for a run on this node, not for an emitted job: drop {option}")


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


def progress_line(p: StepProgress, steps: int) -> str:
    """One step of the run, as the launcher reports it (measured, then predicted)."""
    loss = "-" if p.loss is None else f"{p.loss:.4f}"
    step_err = 100.0 * (p.predicted_step_time_s - p.step_time_s) / p.step_time_s if p.step_time_s > 0 else 0.0
    return (
        f"step {p.step + 1}/{steps}  loss {loss}  {p.tokens_per_s:,.0f} tokens/s  MFU {100 * p.mfu:.1f}%  "
        f"step {p.step_time_s:.3f} s (pred {p.predicted_step_time_s:.3f}, {step_err:+.0f}%)  "
        f"peak {p.peak_memory_gib:.3f} GiB (pred {p.predicted_peak_memory_gib:.3f})"
    )


@app.command("launch")
def launch_cmd(
    plan_path: Path = typer.Argument(..., help="plan.json from search or evaluate --out"),
    steps: int = typer.Option(10, min=1, max=10**6, help="optimizer steps to run"),
    metrics: Path = output_option(Path("metrics.jsonl"), "--metrics", help="metrics JSONL (one line per step and pipeline stage)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --metrics file"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the exact torchrun command; run and write nothing"),
    nnodes: Optional[int] = typer.Option(None, min=1, max=2**20, help="nodes (default: as few as hold the plan's GPUs)"),
    node_rank: Optional[int] = typer.Option(None, min=0, max=2**20, help="this node's rank (multi-node)"),
    master_addr: Optional[str] = typer.Option(None, help="node 0's address (multi-node)"),
    master_port: Optional[int] = typer.Option(None, min=1, max=65535, help="rendezvous port on node 0"),
    schedule_csv: Optional[Path] = typer.Option(None, help="action list (torch pipeline CSV) of a 'custom' plan"),
    emit: Optional[str] = typer.Option(None, help="torchrun|slurm|megatron|torchtitan|csv: write configs instead of running"),
    out_dir: Optional[Path] = typer.Option(None, help="where --emit writes", parser=output_dir, metavar="<path>"),
    hang_timeout_s: Optional[float] = typer.Option(
        None, min=1.0, max=86400.0, help="end the job when a rank makes no progress this long (default 60 on gloo, 600 on NCCL)"
    ),
    seed: int = typer.Option(0, hidden=True, help="model-init and data seed"),
    force: bool = typer.Option(False, "--force", help="launch or emit a plan predicted not to fit in memory"),
) -> None:
    """Run a plan with torchrun on the ppplan runtime (or --emit configs for other launchers)."""
    if out_dir is not None and emit is None:
        raise PlanError("--out-dir is where --emit writes its files: add --emit, or drop --out-dir")
    if emit is not None:
        _check_emit_options(dry_run=dry_run, node_rank=node_rank, master_addr=master_addr, overwrite=overwrite,
                            hang_timeout_s=hang_timeout_s)
    if emit is None and any(i is not None and i.is_file() and same_file(metrics, i) for i in (plan_path, schedule_csv)):
        raise PlanError(f"--metrics {metrics} is an input of this launch: the ranks would overwrite it; pick another file")
    plan = load_plan(plan_path)
    if not force:
        _refuse_unfit(plan, "emit" if emit is not None else "launch")
    opts = LaunchOptions(
        steps=steps, metrics=metrics, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr,
        master_port=master_port, schedule_csv=schedule_csv, seed=seed, overwrite=overwrite,
        hang_timeout_s=hang_timeout_s,
    )  # fmt: skip
    if emit is not None:
        _emit(plan, emit, out_dir, opts)
        return
    if dry_run:  # what a run would refuse, a dry run refuses (the devices aside: it may be made on a login node)
        print(format_command(prepare_launch(plan, plan_path, opts, devices=False)))  # plain: rich would wrap it
        return

    def on_start(argv: list[str]) -> None:
        print(f"launching {plan.config.world_size} ranks: {format_command(argv)}", file=sys.stderr, flush=True)

    def on_step(progress: StepProgress) -> None:
        err.print(progress_line(progress, steps), markup=False, soft_wrap=True)

    try:
        result = launch_plan(plan, plan_path, opts, on_step=on_step, on_start=on_start)
    except JobInterrupted as exc:
        print(f"error: interrupted by {exc}: every rank of the job was stopped", file=sys.stderr, flush=True)
        raise typer.Exit(exc.exit_code) from None
    if result.returncode:
        print(f"error: {result.failure}", file=sys.stderr, flush=True)
        raise typer.Exit(1)
    rows = compare(read_metrics(metrics), plan)
    out.print(comparison_table(rows, _compare_title(plan)))
    out.print(f"ran {steps} steps on {plan.config.world_size} ranks: {_loss_summary(metrics)}; metrics in {metrics}", markup=False)


def _compare_title(plan: Plan) -> str:
    cfg = plan.config
    return f"{plan.model.name}: tp={cfg.tp} pp={cfg.pp} dp={cfg.dp} {cfg.schedule} (error = (pred - meas) / meas)"


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
    plan = load_checked_plan(plan_path)
    rows = compare(read_metrics(metrics_path), plan)
    if as_json:
        print(json_document(comparison_json(rows)))
        return
    out.print(comparison_table(rows, _compare_title(plan)))
