"""Pipeline parallelism with ``torch.distributed.pipelining``.

Each local virtual stage becomes a ``PipelineStage`` over the pipeline group;
the plan's schedule name picks torch's class. ``zb-h1``, ``zb-h2`` and
``custom`` have no torch class: their action list comes from our schedule
generator (the same list the simulator prices), written in torch's pipeline
CSV format and run by ``_PipelineScheduleRuntime``.

Loss and gradient scale: ``lm_loss`` is a per-microbatch mean and the schedule
divides gradients by the microbatch count (``scale_grads=True``), so
gradients are those of the mean over the data-parallel replica's batch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining import schedules as torch_schedules

from costmodels.layout import StageLayout
from costmodels.schedules.generate import generate_schedule
from costmodels.schedules.registry import SCHEDULES, schedule_spec
from costmodels.schedules.torch_csv import format_torch_csv
from launch.runtime.model import StageModule
from profiles.schema import ParallelConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_stages(
    modules: dict[int, StageModule], layouts: list[StageLayout], num_stages: int, device: torch.device, group: dist.ProcessGroup
) -> list[PipelineStage]:
    """One ``PipelineStage`` per local virtual stage, in stage order (shapes inferred at the first step)."""
    return [PipelineStage(modules[lay.stage], lay.stage, num_stages, device, group=group) for lay in layouts]


def schedule_csv_text(cfg: ParallelConfig, custom_csv: str | None = None) -> str:
    """Torch pipeline CSV (compute actions only) of a zb-h1 / zb-h2 plan, from the
    schedule generator the simulator prices; a ``custom`` plan brings its own."""
    if cfg.schedule == "custom":
        text = custom_csv or cfg.schedule_csv
        if text is None:
            raise ValueError("schedule 'custom' needs its action list: the plan's config.schedule_csv or --schedule-csv FILE")
        return text
    return format_torch_csv(generate_schedule(cfg.schedule, cfg.pp, cfg.v, cfg.num_microbatches))


def _csv_schedule(
    cfg: ParallelConfig, stages: list[PipelineStage], loss_fn: LossFn, custom_csv: str | None
) -> torch_schedules._PipelineScheduleRuntime:
    runtime = torch_schedules._PipelineScheduleRuntime(stages, cfg.num_microbatches, loss_fn=loss_fn, scale_grads=True)
    with tempfile.TemporaryDirectory(prefix="ppplan-schedule-") as tmp:
        path = Path(tmp) / f"{cfg.schedule}.csv"
        path.write_text(schedule_csv_text(cfg, custom_csv))
        runtime._load_csv(str(path), format="compute_only")
    return runtime


def build_schedule(
    cfg: ParallelConfig, stages: list[PipelineStage], loss_fn: LossFn, custom_csv: str | None = None
) -> torch_schedules._PipelineSchedule:
    """The torch schedule object that runs the plan's schedule over ``stages``."""
    spec = schedule_spec(cfg.schedule)
    if spec.torch_csv:
        return _csv_schedule(cfg, stages, loss_fn, custom_csv)
    if spec.torch_class is None:
        raise ValueError(f"schedule '{cfg.schedule}' has no runtime; pick one of {sorted(n for n, s in SCHEDULES.items() if s.torch_class or s.torch_csv)}")
    schedule_class = getattr(torch_schedules, spec.torch_class)
    if spec.stages_per_rank == "one":
        (stage,) = stages
        return schedule_class(stage, cfg.num_microbatches, loss_fn=loss_fn, scale_grads=True)
    return schedule_class(stages, cfg.num_microbatches, loss_fn=loss_fn, scale_grads=True)
