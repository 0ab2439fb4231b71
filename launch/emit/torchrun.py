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

from launch.emit.common import (
    EmitContext,
    NodeLayout,
    Rendered,
    check_torch_rules,
    comment_block,
    dq_escape,
    header_lines,
    shell_command,
)

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


def runtime_args(ctx: EmitContext, plan_file: str) -> list[str]:
    """``-m <runtime module> --plan ...``: the ppplan runtime's entry point and its options."""
    argv = ["-m", ctx.options.runtime_module, "--plan", plan_file]
    if ctx.options.steps is not None:
        argv += ["--steps", str(ctx.options.steps)]
    if ctx.options.metrics is not None:
        argv += ["--metrics", ctx.options.metrics]
    return argv


def torchrun_command(ctx: EmitContext, endpoint: str = "127.0.0.1:29500", plan_file: str | None = None) -> list[str]:
    """The full argv (for ``ppplan launch --dry-run`` and the script below)."""
    plan = plan_file if plan_file is not None else str(ctx.plan_path)
    return torchrun_launcher_args(ctx.layout, endpoint) + runtime_args(ctx, plan)


def render_torchrun(ctx: EmitContext) -> Rendered:
    """``torchrun.sh`` (run it on every node with MASTER_ADDR = node 0) and the ``plan.json`` it reads."""
    check_torch_rules(ctx.plan)
    layout = ctx.layout
    head = header_lines(ctx.plan, "torchrun launch script for the ppplan runtime", [])
    head += [
        f"run this same script on each of the {layout.nnodes} node(s); {layout.nproc_per_node} ranks per node",
        "MASTER_ADDR: node 0's address (default 127.0.0.1); MASTER_PORT: a free port on it",
    ]
    argv = torchrun_command(ctx, endpoint='"${MASTER_ADDR}:${MASTER_PORT}"', plan_file='"${PLAN}"')
    text = (
        "#!/usr/bin/env bash\n"
        + comment_block(head)
        + "set -euo pipefail\n"
        + 'MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"\n'
        + f'MASTER_PORT="${{MASTER_PORT:-{ctx.options.master_port}}}"\n'
        + f'PLAN="${{PLAN:-{dq_escape(str(ctx.plan_path))}}}"\n'
        + "exec "
        + shell_command(argv)
    )
    return Rendered(files={"torchrun.sh": text, "plan.json": plan_json(ctx)}, executable={"torchrun.sh"})


def plan_json(ctx: EmitContext) -> str:
    return ctx.plan.model_dump_json(indent=2) + "\n"
