"""Per-rank entry point of the FSDP gather-count test (``torchrun -m tests.launch.runtime.gather_worker``).

For each ``--plan/--out`` pair: build the plan's runtime, run two training steps' forward and backward, and count
the all-gathers FSDP2 waits for in the second (the first also infers the stages' shapes and initialises FSDP
lazily), by the kind of pipeline action that waits: a parameter group's ``wait_for_unshard`` with a gather pending
(``FSDPParamGroup.unshard`` issues none where the group is unsharded or a gather is pending already). An UNSHARD
action's gather is waited for by the stage's next compute action, which it is counted for. The action is read
from the name the multi-stage runtime gives the profiler range around it (``record_function("PP:<stage><kind><mb>")``,
which also covers its wait for an UNSHARD), and from the stage's compute call itself (``forward_one_chunk``,
``backward_one_chunk``, ``backward_weight_one_chunk``: the single-stage schedules name no range). Each rank writes, per virtual
stage it runs, each FSDP unit's counts by kind (F, B, W) to ``<out>/rank<R>.json``, and the most of its stages
that held unsharded parameters (a group unsharded, or its gather's output pending) at any of those waits, the most
bytes they held, and the bytes of its FSDP shards (each sharded parameter's local tensor).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup
from torch.distributed.pipelining import schedules as torch_schedules
from torch.distributed.pipelining.stage import _PipelineStageBase

from launch.launcher import check_plan
from launch.runtime.build import build_runtime
from launch.runtime.parallel import init_distributed
from profiles.loader import load_plan
from tests.launch.runtime.grad_worker import step_loss

GATHERS: Counter[tuple[int, str]] = Counter()
ACTION = {"kind": "other"}
STAGE_GROUPS: dict[int, list[FSDPParamGroup]] = {}  # this rank's virtual stages' FSDP parameter groups
UNSHARDED = {"stages": 0, "bytes": 0}  # the most stages of this rank, and bytes, unsharded (or gathering) at any wait
ACTION_NAME = re.compile(r"^PP:\d+([FIBW])\d+$")


def _action_kind(name: str) -> str:
    """F, B (an I or a full backward) or W from the profiler range's name; "other" for the rest."""
    if name.startswith("Forward"):
        return "F"
    if name.startswith("Backward"):
        return "B"
    match = ACTION_NAME.match(name)
    return {"F": "F", "I": "B", "B": "B", "W": "W"}[match.group(1)] if match else "other"


@contextlib.contextmanager
def _tagged(name: str) -> Iterator[None]:
    """torch's ``record_function`` in the schedules' module: remembers which action runs."""
    ACTION["kind"] = _action_kind(name)
    yield


def _tagging(compute: Callable[..., Any], kind: str) -> Callable[..., Any]:
    """A stage's compute call that remembers its kind while it runs."""

    def tagged(*args: Any, **kwargs: Any) -> Any:
        ACTION["kind"] = kind
        return compute(*args, **kwargs)

    return tagged


def _counting(wait_for_unshard: Callable[..., Any]) -> Callable[..., Any]:
    """``FSDPParamGroup.wait_for_unshard`` that counts, in ``GATHERS``, the gathers it waits for."""

    def wait_counted(self: FSDPParamGroup) -> Any:
        if self._all_gather_result is not None:
            GATHERS[id(self), ACTION["kind"]] += 1
        UNSHARDED["stages"] = max(UNSHARDED["stages"], unsharded_stages())
        UNSHARDED["bytes"] = max(UNSHARDED["bytes"], unsharded_bytes())
        return wait_for_unshard(self)

    return wait_counted


def unsharded_stages() -> int:
    """How many of this rank's stages hold unsharded parameters now: a group unsharded, or its all-gather's output
    allocated and pending (an UNSHARD action's)."""
    return sum(any(g.is_unsharded or g._all_gather_result is not None for g in groups) for groups in STAGE_GROUPS.values())


def unsharded_bytes() -> int:
    """Bytes this rank holds in unsharded parameters now: each FSDP parameter's all-gather outputs (its unsharded
    data, freed by a reshard) and each pending all-gather's flat output."""
    total = 0
    for groups in STAGE_GROUPS.values():
        for g in groups:
            total += sum(t.untyped_storage().nbytes() for fp in g.fsdp_params for t in fp.all_gather_outputs)
            if g._all_gather_result is not None:
                total += g._all_gather_result.all_gather_output.untyped_storage().nbytes()
    return total


def stage_groups(modules: dict) -> dict[int, list[FSDPParamGroup]]:
    """Per virtual stage this rank runs, its FSDP units' parameter groups."""
    out = {}
    for stage, module in modules.items():
        groups = [m._get_fsdp_state()._fsdp_param_group for m in module.modules() if isinstance(m, FSDPModule)]
        out[stage] = [g for g in groups if g is not None]
    return out


def stage_counts() -> dict[str, object]:
    """Per virtual stage this rank runs, the gathers each of its FSDP units waited for, by action kind; and the most
    of its stages unsharded at once (``"unsharded_stages"``)."""
    out: dict[str, object] = {str(stage): [{kind: n for (gid, kind), n in GATHERS.items() if gid == id(g)} for g in groups]
                              for stage, groups in STAGE_GROUPS.items()}
    out["unsharded_stages"] = UNSHARDED["stages"]
    out["unsharded_bytes"] = UNSHARDED["bytes"]
    out["sharded_bytes"] = sum(fp.sharded_param._local_tensor.untyped_storage().nbytes()
                               for groups in STAGE_GROUPS.values() for g in groups for fp in g.fsdp_params)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="append", required=True)
    parser.add_argument("--out", action="append", required=True)
    args = parser.parse_args()
    FSDPParamGroup.wait_for_unshard = _counting(FSDPParamGroup.wait_for_unshard)
    torch_schedules.record_function = _tagged
    for name, kind in (("forward_one_chunk", "F"), ("backward_one_chunk", "B"), ("backward_weight_one_chunk", "W")):
        setattr(_PipelineStageBase, name, _tagging(getattr(_PipelineStageBase, name), kind))
    device = init_distributed()
    for plan_path, out in zip(args.plan, args.out):
        plan = load_plan(plan_path)
        check_plan(plan)
        rt = build_runtime(plan, device, 0, lr=1e-3)
        step_loss(rt, 0)
        STAGE_GROUPS.clear()
        STAGE_GROUPS.update(stage_groups(rt.modules))
        GATHERS.clear()
        UNSHARDED.update(stages=0, bytes=0)
        step_loss(rt, 0)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"rank{rt.rank}.json").write_text(json.dumps(stage_counts()))
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
