"""The runtime's own costs around the layers (``ppplan profile``, ``ProfileFile.runtime``).

One process joins a one-rank gloo group and builds stages of the model with the
runtime's own pieces (``launch.runtime.model``, ``launch.runtime.fsdp``); medians of
``repeats`` interleaved rounds after ``warmup``, with the profile's clock.

- Host overhead per pipeline action: ``M`` microbatches of forward and backward of a
  one-layer stage, called directly and through torch.distributed.pipelining's
  ``Schedule1F1B`` over a ``PipelineStage`` (what ``ppplan launch`` runs,
  ``launch/runtime/pp.py``); the difference over the 2·M actions. With one rank there is
  no p2p: transfers are priced by the p2p link (``ppplan profile-comm``). What a real pipeline
  of two ranks adds on top (slower actions, host time between them) is measured by
  ``launch/profiler/pipelined.py``.
- FSDP host overhead per layer and step: a training step (the same schedule, then the AdamW
  step) of a ``FSDP_LAYERS``-layer stage wrapped as the runtime wraps it for ZeRO-0
  (``apply_data_parallel``: each layer, then the stage, on a one-rank (replicate, shard) mesh),
  less the unwrapped stage's, per layer (an MoE layer's experts and router wrapped first, on a one-rank expert mesh). FSDP2's
  copy-in/copy-out of parameters and gradients, its hooks and the optimizer's DTensor dispatch run
  on the host whatever the group size; the collectives themselves are priced by the measured
  links (``ppplan profile-comm``).
- The optimizer step: the runtime's AdamW over a stage's parameters, seconds per parameter (priced
  by the parameters each rank updates instead of the cluster file's memory bandwidth).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from launch.profiler.pipelined import crowded_factors, pipelined_costs
from launch.profiler.pipelined import median_iqr as _median_iqr
from launch.profiler.pipelined import mse as _mse
from launch.profiler.timeshare import node_cores
from profiles.profile_schema import CrowdedPipelinePoint, RuntimeMeasurement
from profiles.schema import ModelSpec

ACTION_MICROBATCHES = 8
FSDP_LAYERS = 2
FSDP_MICROBATCHES = 4




def runtime_overheads(
    model: ModelSpec, mbs: int, seq_len: int, warmup: int, repeats: int, clock: Callable[[], float],
    crowded_ranks_per_core: tuple[int, ...] = (), crowded_mbss: tuple[int, ...] = (),
) -> RuntimeMeasurement:
    """See the module docstring; must run in a process with no process group yet. ``crowded_ranks_per_core``
    x ``crowded_mbss``: the crowded pipelines to time (``launch.profiler.pipelined.crowded_factors``)."""
    import torch.distributed as dist

    pipelined = pipelined_costs(model, mbs, seq_len, warmup, repeats)  # spawns its two ranks: before our group
    cores = node_cores()
    crowded = [CrowdedPipelinePoint(ranks_per_core=k, mbs=size, compute_factor=factor, compute_factor_iqr=iqr)
               for size in crowded_mbss
               for k, factor, iqr in crowded_factors(model, size, seq_len, warmup, repeats, cores, crowded_ranks_per_core)]
    with tempfile.TemporaryDirectory(prefix="ppplan-profile-") as tmp:
        dist.init_process_group("gloo", store=dist.FileStore(str(Path(tmp) / "store"), 1), rank=0, world_size=1)
        try:
            action = _action_overhead(model, mbs, seq_len, warmup, repeats, clock)
            fsdp = _fsdp_overhead(model, mbs, seq_len, warmup, repeats, clock)
            optimizer = _optimizer_s_per_param(model, warmup, repeats, clock)
        finally:
            dist.destroy_process_group()
    return RuntimeMeasurement(
        pipeline_action_overhead_s=action[0], pipeline_action_overhead_iqr_s=action[1],
        fsdp_overhead_per_layer_step_s=fsdp[0], fsdp_overhead_per_layer_step_iqr_s=fsdp[1],
        optimizer_s_per_param=optimizer, crowded_pipeline=crowded,
        pipelined_action_overhead_s=pipelined.host_per_action_s, pipelined_action_overhead_iqr_s=pipelined.host_per_action_iqr_s,
        pipelined_compute_factor=pipelined.compute_factor, pipelined_compute_factor_iqr=pipelined.compute_factor_iqr,
    )  # fmt: skip


def _schedule(module, microbatches: int):
    import torch
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    return Schedule1F1B(PipelineStage(module, 0, 1, torch.device("cpu")), microbatches, loss_fn=_mse, scale_grads=True)


def _inputs(model: ModelSpec, rows: int, seq_len: int):
    import torch

    return torch.randn(rows, seq_len, model.hidden_size), torch.randn(rows, seq_len, model.hidden_size)


def _paired(first: Callable[[], float], second: Callable[[], float], warmup: int, repeats: int, per: float) -> tuple[float, float]:
    """Median (and IQR) of (second - first) / per over ``repeats`` interleaved rounds."""
    for _ in range(max(1, warmup)):
        first(), second()
    return _median_iqr([(second() - first()) / per for _ in range(repeats)])


def _timer(run: Callable[[], None], clock: Callable[[], float]) -> Callable[[], float]:
    def timed() -> float:
        start = clock()
        run()
        return clock() - start

    return timed


def _action_overhead(model: ModelSpec, mbs: int, seq_len: int, warmup: int, repeats: int, clock) -> tuple[float, float]:
    from launch.runtime.model import build_stage_module

    m = ACTION_MICROBATCHES
    module = build_stage_module(model, 0, 1, False, False, 0)
    inputs, targets = _inputs(model, mbs * m, seq_len)
    schedule = _schedule(module, m)

    def direct() -> None:
        for x, t in zip(inputs.chunk(m), targets.chunk(m)):
            (_mse(module(x), t) / m).backward()

    return _paired(_timer(direct, clock), _timer(lambda: schedule.step(inputs, target=targets), clock), warmup, repeats, 2 * m)


def _fsdp_overhead(model: ModelSpec, mbs: int, seq_len: int, warmup: int, repeats: int, clock) -> tuple[float, float]:
    from torch.distributed.device_mesh import init_device_mesh

    from launch.runtime.fsdp import apply_data_parallel
    from launch.runtime.model import build_stage_module
    from launch.runtime.parallel import EXPERT_MESH_DIMS, MESH_DIMS

    m = FSDP_MICROBATCHES
    inputs, targets = _inputs(model, mbs * m, seq_len)
    plain_module = build_stage_module(model, 0, FSDP_LAYERS, False, False, 0)
    wrapped_module = build_stage_module(model, 0, FSDP_LAYERS, False, False, 0)
    mesh = init_device_mesh("cpu", (1, 1, 1, 1), mesh_dim_names=MESH_DIMS)
    experts = init_device_mesh("cpu", (1,) * len(EXPERT_MESH_DIMS), mesh_dim_names=EXPERT_MESH_DIMS) if model.is_moe else None
    apply_data_parallel(wrapped_module, mesh, zero=0, expert_mesh=experts)
    return _paired(
        _timer(_training_step(plain_module, m, inputs, targets), clock),
        _timer(_training_step(wrapped_module, m, inputs, targets), clock),
        warmup, repeats, FSDP_LAYERS,
    )  # fmt: skip


def _optimizer_s_per_param(model: ModelSpec, warmup: int, repeats: int, clock) -> float:
    """Median seconds of the runtime's AdamW step (``launch.runtime.optim``, torch's foreach kernels) per
    parameter, on a ``FSDP_LAYERS``-layer stage with gradients in place: on cpu-local tiny-gpt's whole model
    (6.6 M parameters) stepped in 20 ms, 3.0 ns per parameter, where 30 B per parameter at the cluster file's
    memory bandwidth priced 12 ms."""
    import torch

    from launch.runtime.model import build_stage_module
    from launch.runtime.optim import build_optimizer

    module = build_stage_module(model, 0, FSDP_LAYERS, False, False, 0)
    params = list(module.parameters())
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer = build_optimizer(params)
    step = _timer(optimizer.step, clock)
    for _ in range(max(1, warmup)):
        step()
    return _median_iqr([step() for _ in range(repeats)])[0] / sum(p.numel() for p in params)


def _training_step(module, microbatches: int, inputs, targets) -> Callable[[], None]:
    """One step as ``launch/runtime/train.py`` runs it: the schedule over the microbatches, then the
    AdamW step and ``zero_grad``. FSDP2's parameters are DTensors, and the optimizer's foreach
    kernels then dispatch through DTensor per parameter (measured on cpu-local, tiny-gpt's 8 layers,
    embedding and head, one thread: 18.7 ms plain, 59.6 ms wrapped): host work of the wrapped step."""
    from launch.runtime.optim import build_optimizer

    schedule = _schedule(module, microbatches)
    optimizer = build_optimizer(module.parameters())

    def step() -> None:
        schedule.step(inputs, target=targets)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step
