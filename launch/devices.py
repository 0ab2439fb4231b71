"""Does this machine have what a plan needs? Checked before ``ppplan launch`` starts anything.

Without torch (the launcher never imports it; DESIGN.md "Packages"): NVIDIA's kernel
driver lists one directory per GPU under ``/proc/driver/nvidia/gpus`` (what
``nvidia-smi`` and CUDA enumerate), and ``CUDA_VISIBLE_DEVICES`` narrows what a process
may use (CUDA documentation, "CUDA Environment Variables"). A plan for a cluster whose
``gpu.name`` is ``cpu`` runs one gloo process per rank and needs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from launch.emit.common import NodeLayout
from profiles.errors import PlanError
from profiles.schema import Plan

NVIDIA_GPUS_DIR = Path("/proc/driver/nvidia/gpus")


def visible_cuda_devices(driver_dir: Path | None = None, env: dict[str, str] | None = None) -> int:
    """CUDA devices this process may use: the driver's GPUs, narrowed by ``CUDA_VISIBLE_DEVICES``."""
    env = os.environ if env is None else env
    driver_dir = NVIDIA_GPUS_DIR if driver_dir is None else driver_dir
    try:
        installed = sum(1 for _ in driver_dir.iterdir())
    except OSError:
        installed = 0
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return installed
    listed = [d for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return min(installed, len(listed))


def check_devices(plan: Plan, layout: NodeLayout, cuda_devices: int | None = None) -> None:
    """``PlanError`` (exit 2) naming what is missing when this node cannot run its share of ``plan``."""
    gpu = plan.cluster.gpu.name
    if gpu == "cpu":
        return
    have = visible_cuda_devices() if cuda_devices is None else cuda_devices
    if have >= layout.nproc_per_node:
        return
    where = "no CUDA device" if have == 0 else f"only {have} visible CUDA device(s)"
    raise PlanError(
        f"the plan runs {layout.nproc_per_node} ranks per node, one {gpu} GPU (CUDA) each, but this machine has {where}: "
        f"launch it on the cluster it was planned for (or --emit slurm), or re-plan with --cluster cpu-local"
    )
