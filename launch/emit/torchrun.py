"""The torchrun command that runs a plan on the ppplan runtime, as a shell script.

torchrun's elastic launcher (torch 2.13 ``torch/distributed/run.py``) starts
``--nproc-per-node`` workers on each of ``--nnodes`` nodes; with
``--rdzv-backend c10d`` the rendezvous is hosted at ``--rdzv-endpoint`` (node
0's address) and node ranks are assigned at rendezvous, so the same command
runs unchanged on every node. Ranks are numbered node by node, which is the
order the rank grid (``costmodels.rank_grid``) assumes: TP groups are
consecutive ranks and stay inside a node when ``tp`` divides the ranks per node.
"""

from __future__ import annotations

from costmodels.layer_costs import runs_on_cpu
from launch.emit.common import (
    EmitContext,
    NodeLayout,
    Rendered,
    comment_block,
    dq_escape,
    header_lines,
    shell_command,
)
from launch.emit.csv import CSV_NAME, render_csv

RDZV_ID = "ppplan"


def torchrun_launcher_args(layout: NodeLayout, endpoint: str, rdzv_id: str = RDZV_ID) -> list[str]:
    """``torchrun`` and its own options (everything before the training module/script)."""
    return [
        "torchrun",
        "--nnodes", str(layout.nnodes),
        "--nproc-per-node", str(layout.nproc_per_node),
        "--rdzv-id", rdzv_id,
        "--rdzv-backend", "c10d",
        "--rdzv-endpoint", endpoint,
    ]  # fmt: skip


def runtime_args(ctx: EmitContext, plan_file: str, metrics_file: str, schedule_csv: str | None = None) -> list[str]:
    """``-m <runtime module> --plan ... --metrics ...`` (``launch/runtime/train.py``'s options)."""
    argv = ["-m", ctx.options.runtime_module, "--plan", plan_file, "--metrics", metrics_file]
    if ctx.options.steps is not None:
        argv += ["--steps", str(ctx.options.steps)]
    if schedule_csv is not None:
        argv += ["--schedule-csv", schedule_csv]
    return argv


def default_metrics(ctx: EmitContext) -> str:
    return ctx.options.metrics or str(ctx.out_dir.resolve() / "metrics.jsonl")


def torchrun_command(ctx: EmitContext, endpoint: str = "127.0.0.1:29500") -> list[str]:
    """The full argv with concrete paths (for ``ppplan launch --dry-run``)."""
    csv_file = str(ctx.out_dir.resolve() / CSV_NAME) if ctx.cfg.schedule == "custom" else None
    runtime = runtime_args(ctx, str(ctx.plan_path), default_metrics(ctx), csv_file)
    return torchrun_launcher_args(ctx.layout, endpoint) + runtime


def script_files(ctx: EmitContext) -> tuple[Rendered, str | None]:
    """``plan.json`` (and ``schedule.csv`` for a custom schedule) beside the script; the CSV's shell reference."""
    files = Rendered(files={"plan.json": plan_json(ctx)})
    if ctx.cfg.schedule != "custom":
        return files, None
    return files.merge(render_csv(ctx)), '"${SCHEDULE_CSV}"'


def script_variables(ctx: EmitContext, csv_ref: str | None) -> str:
    """Shell variables for the paths the runtime reads and writes (overridable from the environment)."""
    lines = [
        f'PLAN="${{PLAN:-{dq_escape(str(ctx.plan_path))}}}"',
        f'METRICS="${{METRICS:-{dq_escape(default_metrics(ctx))}}}"',
    ]
    if csv_ref is not None:
        lines.append(f'SCHEDULE_CSV="${{SCHEDULE_CSV:-{dq_escape(str(ctx.out_dir.resolve() / CSV_NAME))}}}"')
    if runs_on_cpu(ctx.plan.cluster):  # one thread per rank, as priced and as `ppplan launch` runs it (cpu_thread_env)
        lines.append('export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"')
    return "".join(line + "\n" for line in lines)


def render_torchrun(ctx: EmitContext) -> Rendered:
    """``torchrun.sh`` (run it on every node with MASTER_ADDR = node 0) and the ``plan.json`` it reads."""
    rendered, csv_ref = script_files(ctx)
    layout = ctx.layout
    head = header_lines(ctx.plan, "torchrun launch script for the ppplan runtime", [])
    head += [
        f"run this same script on each of the {layout.nnodes} node(s); {layout.nproc_per_node} ranks per node",
        "MASTER_ADDR: node 0's address (default 127.0.0.1); MASTER_PORT: a free port on it",
    ]
    launcher = torchrun_launcher_args(layout, '"${MASTER_ADDR}:${MASTER_PORT}"')
    text = (
        "#!/usr/bin/env bash\n"
        + comment_block(head)
        + "set -euo pipefail\n"
        + 'MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"\n'
        + f'MASTER_PORT="${{MASTER_PORT:-{ctx.options.master_port}}}"\n'
        + script_variables(ctx, csv_ref)
        + "exec "
        + shell_command(launcher + runtime_args(ctx, '"${PLAN}"', '"${METRICS}"', csv_ref))
    )
    return rendered.merge(Rendered(files={"torchrun.sh": text}, executable={"torchrun.sh"}))


def plan_json(ctx: EmitContext) -> str:
    return ctx.plan.model_dump_json(indent=2) + "\n"
