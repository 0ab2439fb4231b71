"""Per-rank entry point of the TP-collective count test (``torchrun -m tests.launch.runtime.tp_comm_worker``).

For tiny-llama and tiny-gpt, with and without sequence parallelism, and without and with full recompute: one
transformer layer of ppplan's runtime sharded over all ranks (``launch.runtime.tp.parallelize_layer``), its forward
and its backward each under torch's profiler, counting the functional collectives each pass issues (the
``_c10d_functional`` ops DTensor redistributes with, waits left out). Rank 0 writes
``{model: {"sp"|"nosp": {recompute: {"forward"|"backward": {op: count}}}}}`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.profiler import ProfilerActivity, profile

from launch.runtime.model import build_layer
from launch.runtime.tp import parallelize_layer
from profiles.loader import load_model

PREFIX = "_c10d_functional::"
COLLECTIVES = ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor")


def _collectives(prof: profile) -> dict[str, int]:
    names = Counter(e.name.removeprefix(PREFIX) for e in prof.events() if e.name.startswith(PREFIX))
    return {name: names[name] for name in COLLECTIVES if names[name]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    result: dict[str, dict[str, dict[str, dict[str, dict[str, int]]]]] = {}
    for name in ("tiny-llama", "tiny-gpt"):
        spec = load_model(name)
        for sp in (False, True):
            for recompute in ("none", "full"):
                torch.manual_seed(0)
                layer = build_layer(spec, 0)
                layer.set_recompute(recompute)
                parallelize_layer(layer, mesh, sp)
                x = torch.randn(2, 16 // world if sp else 16, spec.hidden_size, requires_grad=True)
                with profile(activities=[ProfilerActivity.CPU]) as forward:
                    out = layer(x)
                with profile(activities=[ProfilerActivity.CPU]) as backward:
                    out.sum().backward()
                passes = {"forward": _collectives(forward), "backward": _collectives(backward)}
                result.setdefault(name, {}).setdefault("sp" if sp else "nosp", {})[recompute] = passes
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
