"""An sbatch script: one ``srun`` task per node, each running torchrun with a c10d rendezvous.

The pattern is the one torchrun's documentation gives for SLURM (torch 2.13
``docs/source/elastic/run.rst``, "Deployment"): allocate ``--nodes`` with
``--ntasks-per-node=1``, take the first host of ``$SLURM_JOB_NODELIST``
(``scontrol show hostnames``) as the rendezvous endpoint, and let torchrun start
``--nproc-per-node`` workers per node. ``--gpus-per-node`` asks SLURM for the
GPUs those workers use (left out on CPU clusters).
"""

from __future__ import annotations

from launch.emit.common import EmitContext, Rendered, comment_block, header_lines, shell_command
from launch.emit.torchrun import runtime_args, script_files, script_variables, torchrun_launcher_args


def sbatch_directives(ctx: EmitContext) -> list[str]:
    """``#SBATCH`` lines: nodes, one task (torchrun) per node, GPUs per node."""
    layout = ctx.layout
    lines = [
        f"#SBATCH --job-name=ppplan-{ctx.plan.model.name}",
        f"#SBATCH --nodes={layout.nnodes}",
        "#SBATCH --ntasks-per-node=1",
    ]
    if not ctx.is_cpu:
        lines.append(f"#SBATCH --gpus-per-node={layout.nproc_per_node}")
    lines.append("#SBATCH --output=ppplan-%x-%j.out")
    return lines


def render_slurm(ctx: EmitContext) -> Rendered:
    """``ppplan.sbatch`` (submit with ``sbatch``) and the ``plan.json`` it reads."""
    rendered, csv_ref = script_files(ctx)
    layout = ctx.layout
    head = header_lines(ctx.plan, "SLURM batch script for the ppplan runtime", [])
    head += [
        f"{layout.nnodes} node(s) x {layout.nproc_per_node} ranks = world size {layout.world_size}",
        "PLAN, METRICS (and SCHEDULE_CSV) must be on a filesystem every node sees",
    ]
    launcher = torchrun_launcher_args(layout, '"${HEAD_NODE}:${MASTER_PORT}"', rdzv_id='"${SLURM_JOB_ID}"')
    srun = ["srun", f"--nodes={layout.nnodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    text = (
        "#!/bin/bash\n"
        + "\n".join(sbatch_directives(ctx))
        + "\n"
        + comment_block(head)
        + "set -euo pipefail\n"
        + 'HEAD_NODE="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)"\n'
        + f'MASTER_PORT="${{MASTER_PORT:-{ctx.options.master_port}}}"\n'
        + script_variables(ctx, csv_ref)
        + shell_command(srun + launcher + runtime_args(ctx, '"${PLAN}"', '"${METRICS}"', csv_ref))
    )
    return rendered.merge(Rendered(files={"ppplan.sbatch": text}, executable={"ppplan.sbatch"}))
