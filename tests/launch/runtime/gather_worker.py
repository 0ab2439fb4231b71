"""Per-rank entry point of the FSDP gather-count test (``torchrun -m tests.launch.runtime.gather_worker``).

For each ``--plan/--out`` pair: build the plan's runtime, run two training steps' forward and backward, and count
the all-gathers FSDP2 issues in the second (the first also infers the stages' shapes and initialises FSDP lazily).
A parameter group issues an all-gather when its ``unshard`` leaves a pending result where it found none
(``FSDPParamGroup.unshard``: already unsharded or already pending is a no-op). Each rank writes, per virtual stage
it runs, the counts of the stage's FSDP units to ``<out>/rank<R>.json``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup

from launch.launcher import check_plan
from launch.runtime.build import build_runtime
from launch.runtime.parallel import init_distributed
from profiles.loader import load_plan
from tests.launch.runtime.grad_worker import step_loss

GATHERS: Counter[int] = Counter()


def _counting(unshard: Callable[..., Any]) -> Callable[..., Any]:
    """``FSDPParamGroup.unshard`` that counts the all-gathers it issues in ``GATHERS``."""

    def unshard_counted(self: FSDPParamGroup, async_op: bool = False) -> Any:
        pending = self._all_gather_result is not None
        out = unshard(self, async_op)
        if not pending and self._all_gather_result is not None:
            GATHERS[id(self)] += 1
        return out

    return unshard_counted


def stage_counts(modules: dict) -> dict[str, list[int]]:
    """Per virtual stage this rank runs, the all-gathers of each of its FSDP units, in module order."""
    out = {}
    for stage, module in modules.items():
        groups = [m._get_fsdp_state()._fsdp_param_group for m in module.modules() if isinstance(m, FSDPModule)]
        out[str(stage)] = [GATHERS[id(g)] for g in groups if g is not None]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="append", required=True)
    parser.add_argument("--out", action="append", required=True)
    args = parser.parse_args()
    FSDPParamGroup.unshard = _counting(FSDPParamGroup.unshard)
    device = init_distributed()
    for plan_path, out in zip(args.plan, args.out):
        plan = load_plan(plan_path)
        check_plan(plan)
        rt = build_runtime(plan, device, 0, lr=1e-3)
        step_loss(rt, 0)
        GATHERS.clear()
        step_loss(rt, 0)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"rank{rt.rank}.json").write_text(json.dumps(stage_counts(rt.modules)))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
