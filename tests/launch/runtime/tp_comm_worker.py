"""Per-rank entry point of the TP-collective count test (``torchrun -m tests.launch.runtime.tp_comm_worker``).

For tiny-llama, tiny-gpt and tiny-moe (without and with a shared expert), with and without sequence parallelism, and
without and with full recompute: one transformer layer of ppplan's runtime sharded over all ranks
(``launch.runtime.tp.parallelize_layer``; an MoE block joins the tp group as ``launch.runtime.build`` joins it), its
forward and its backward each under torch's profiler, counting the functional collectives each pass issues (the
``_c10d_functional`` ops DTensor and the MoE block's sequence-parallel entry and exit run, waits left out) and the rows
of h each collective moves: a functional one's from the profiler's input shapes, the MoE block's own ``dist.all_reduce``
calls (``launch.runtime.moe``: its exit without sequence parallelism, its input and score gradients) recorded as they
are made, as values / h (the fp32 scores' T·k values are T·k / h rows). Each case also checks the sharded layer
against the same layer unsharded on the same input (``"max_relative_error"`` of its output, input gradient and router
gradient). With sequence parallelism the layer also runs with its inputs kept as shards (``"sp_regather"``, no
recompute: ``launch.runtime.regather``). Rank 0 writes ``{model: {"sp"|"nosp"|"sp_regather": {recompute:
{"saved_bytes": bytes, "forward"|"backward": {op: count},
"forward_rows"|"backward_rows": [[op, rows], ...]}}}}`` to ``--out``: an all-gather's rows are its output's, a
reduce-scatter's its input's, an all-reduce's its buffer's. Under ``"expert_parallel"``, tiny-moe with its experts
split over all ranks (ep = world, tp 1): ``{"forward"|"backward": [[rows sent, rows received], ...]}``, one entry per
all-to-all (the tokens-per-expert counts exchange first, its rows the experts').
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight
from torch.profiler import ProfilerActivity, profile

from launch.profiler.cases import storages_of
from launch.runtime.model import build_layer
from launch.runtime.moe import ExpertGroups, ExpertShard, MoEFeedForward
from launch.runtime.tp import parallelize_layer
from profiles.loader import load_model
from profiles.schema import ModelSpec

PREFIX = "_c10d_functional::"
COLLECTIVES = ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor")
SHARED_EXPERT_FFN = 512  # tiny-moe's expert FFN: the shared-expert variant adds one such always-on MLP
DIRECT: list[tuple[str, float]] = []  # the MoE block's dist.all_reduce calls, rows of h each (values / h)
HIDDEN = [1]  # the hidden size of the layer being counted


def _models() -> dict[str, ModelSpec]:
    moe = load_model("tiny-moe")
    shared = moe.model_copy(update={"name": "tiny-moe-shared", "shared_expert_ffn_hidden_size": SHARED_EXPERT_FFN})
    return {name: load_model(name) for name in ("tiny-llama", "tiny-gpt")} | {"tiny-moe": moe, "tiny-moe-shared": shared}


def _record_all_reduce(tensor: torch.Tensor, *args: object, **kwargs: object) -> object:
    DIRECT.append(("all_reduce", tensor.numel() / HIDDEN[0]))
    return _ALL_REDUCE(tensor, *args, **kwargs)


_ALL_REDUCE = dist.all_reduce


def _collectives(prof: profile) -> dict[str, int]:
    names = Counter(e.name.removeprefix(PREFIX) for e in prof.events() if e.name.startswith(PREFIX))
    return {name: names[name] for name in COLLECTIVES if names[name]}


def _rows(prof: profile, world: int) -> list[list[object]]:
    """Rows of h each functional collective of a pass moves, then the direct all-reduces made during it."""
    rows: list[list[object]] = []
    for e in prof.events():
        op = e.name.removeprefix(PREFIX)
        if e.name.startswith(PREFIX) and op in COLLECTIVES:
            shape = e.input_shapes[0]
            local = math.prod(shape[:-1])
            rows.append([op, local * world if op == "all_gather_into_tensor" else local])
    rows += [list(r) for r in DIRECT]
    DIRECT.clear()
    return rows


def _all_to_alls(prof: profile) -> list[list[int]]:
    """[rows sent, rows received] of each all-to-all of a pass (``c10d::alltoall_base_``: output, then input)."""
    return [[math.prod(e.input_shapes[1][:1]), math.prod(e.input_shapes[0][:1])]
            for e in prof.events() if e.name == "c10d::alltoall_base_"]  # fmt: skip


def _expert_parallel(spec: ModelSpec) -> dict[str, list[list[int]]]:
    """One MoE layer with its experts split over all ranks (ep = world, tp 1): the all-to-alls of F and B."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    layer = build_layer(spec, 0, experts=ExpertShard.of_rank(spec.num_experts or 0, world, rank))
    layer.feed_forward.set_parallel(ExpertGroups(ep=dist.group.WORLD, ep_size=world), 0, 1)
    x = torch.randn(2, 16, spec.hidden_size, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as forward:
        out = layer(x)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as backward:
        out.sum().backward()
    return {"forward": _all_to_alls(forward), "backward": _all_to_alls(backward)}


def _split_backward_gathers(spec: ModelSpec, mesh: object) -> dict[str, int]:
    """All-gathers of a sequence-parallel layer keeping its inputs as shards whose backward is split as torch's pipeline
    splits it: B (``stage_backward_input``), then W (``stage_backward_weight``)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    layer = build_layer(spec, 0)
    parallelize_layer(layer, mesh, True, sp_regather=True)
    if isinstance(layer.feed_forward, MoEFeedForward):
        layer.feed_forward.set_parallel(ExpertGroups(tp=mesh.get_group()), rank, world, True)
    full = torch.randn(2, 16, spec.hidden_size, generator=torch.Generator().manual_seed(0))
    x = full.chunk(world, dim=1)[rank].clone().requires_grad_(True)
    out = layer(x)
    with profile(activities=[ProfilerActivity.CPU]) as backward_input:
        _, groups = stage_backward_input([out], [torch.ones_like(out)], [x], layer.parameters())
    with profile(activities=[ProfilerActivity.CPU]) as backward_weight:
        stage_backward_weight(layer.parameters(), groups)
    return {name: _collectives(prof).get("all_gather_into_tensor", 0)
            for name, prof in (("backward_input", backward_input), ("backward_weight", backward_weight))}


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach(), want.detach()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def _count_layer(spec: ModelSpec, mesh: object, sp: bool, recompute: str, sp_regather: bool = False) -> dict[str, object]:
    """One sharded layer's collectives per pass, the bytes its forward saves for the backward (``"saved_bytes"``, the
    profiler's count: ``launch.profiler.cases.saved_activation_bytes``), and its output, input gradient and router
    gradient against the same layer unsharded on the same input (``"max_relative_error"``; the loss is the sum of the
    full output)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    reference = build_layer(spec, 0)
    layer = build_layer(spec, 0)
    layer.set_recompute(recompute)
    parallelize_layer(layer, mesh, sp, sp_regather)
    if isinstance(layer.feed_forward, MoEFeedForward):
        layer.feed_forward.set_parallel(ExpertGroups(tp=mesh.get_group()), rank, world, sp)
    full = torch.randn(2, 16, spec.hidden_size, generator=torch.Generator().manual_seed(0))
    x = (full.chunk(world, dim=1)[rank] if sp else full).clone().requires_grad_(True)
    DIRECT.clear()
    params = {storage.data_ptr() for p in layer.parameters() for storage in storages_of(p)}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.update((st.data_ptr(), st.nbytes()) for st in storages_of(t) if st.data_ptr() not in params)
        return t

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as forward, \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    forward_rows = _rows(forward, world)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as backward:
        out.sum().backward()
    passes: dict[str, object] = {
        "saved_bytes": sum(saved.values()),
        "forward": _collectives(forward),
        "backward": _collectives(backward),
        "forward_rows": forward_rows,
        "backward_rows": _rows(backward, world),
    }
    full.requires_grad_(True)
    want = reference(full)
    want.sum().backward()
    assert full.grad is not None and x.grad is not None
    errors = [_relative_error(out, want.chunk(world, dim=1)[rank] if sp else want),
              _relative_error(x.grad, full.grad.chunk(world, dim=1)[rank] if sp else full.grad)]  # fmt: skip
    if isinstance(layer.feed_forward, MoEFeedForward):
        gate, want_gate = layer.feed_forward.router.gate.weight.grad, reference.feed_forward.router.gate.weight.grad
        assert gate is not None and want_gate is not None
        errors.append(_relative_error(gate, want_gate))
    passes["max_relative_error"] = max(errors)
    return passes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    dist.all_reduce = _record_all_reduce  # the MoE block calls dist.all_reduce by attribute
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    result: dict[str, dict[str, dict[str, dict[str, object]]]] = {}
    for name, spec in _models().items():
        HIDDEN[0] = spec.hidden_size
        for sp in (False, True):
            for recompute in ("none", "full"):
                passes = _count_layer(spec, mesh, sp, recompute)
                result.setdefault(name, {}).setdefault("sp" if sp else "nosp", {})[recompute] = passes
        result[name]["sp_regather"] = {"none": _count_layer(spec, mesh, True, "none", sp_regather=True),
                                       "split": _split_backward_gathers(spec, mesh)}
    experts = {"tiny-moe": _expert_parallel(load_model("tiny-moe"))}
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(result | {"expert_parallel": experts}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
