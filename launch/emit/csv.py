"""The plan's pipeline schedule as torch's pipeline CSV (``schedule.csv``).

One row per pipeline rank, one cell per action (``0F0`` = stage 0 forward of
microbatch 0, ``I`` backward-input, ``W`` backward-weight, ``B`` full
backward), the format ``torch.distributed.pipelining.schedules.
_PipelineScheduleRuntime._load_csv`` reads (torch 2.13). The actions come from
the same generator the simulator prices (``costmodels.schedules``), formatted
by ``costmodels.schedules.torch_csv.format_torch_csv``. A ``custom`` schedule is not
generated from its name: the CSV its search exported is copied
(``EmitOptions.custom_schedule_csv``).
"""

from __future__ import annotations

from pathlib import Path

from costmodels.schedules.generate import generate_schedule
from costmodels.schedules.torch_csv import format_torch_csv, parse_torch_csv
from launch.emit.common import EmitContext, Rendered
from profiles.errors import PlanError
from profiles.files import read_text
from profiles.schema import ParallelConfig

CSV_NAME = "schedule.csv"


def generated_csv(cfg: ParallelConfig) -> str:
    """``format_torch_csv(generate_schedule(...))`` for the plan's schedule, pp, v and microbatches."""
    schedule = generate_schedule(cfg.schedule, cfg.pp, cfg.v, cfg.num_microbatches)
    return format_torch_csv(schedule)


def copied_csv(path: Path, cfg: ParallelConfig) -> str:
    """The exported CSV of a ``custom`` schedule, checked (``parse_torch_csv``) to fit the plan's pp, v and M."""
    text = read_text(path, "custom schedule CSV")
    schedule = parse_torch_csv(text)
    found, planned = (schedule.pp, schedule.v, schedule.num_microbatches), (cfg.pp, cfg.v, cfg.num_microbatches)
    if found != planned:
        raise PlanError(
            f"custom schedule CSV {path} is for (pp, v, M) = {found} but the plan has {planned}: export it for this plan"
        )
    return text if text.endswith("\n") else text + "\n"


def schedule_csv_text(ctx: EmitContext) -> str:
    cfg = ctx.cfg
    if cfg.schedule != "custom":
        return generated_csv(cfg)
    source = ctx.options.custom_schedule_csv
    if source is not None:
        return copied_csv(Path(source), cfg)
    if cfg.schedule_csv is None:
        raise PlanError(
            "the plan's schedule is 'custom' but it carries no action list (config.schedule_csv): "
            "make one with `ppplan simulate plan.json --custom-out custom.json`, or pass custom_schedule_csv"
        )
    return cfg.schedule_csv if cfg.schedule_csv.endswith("\n") else cfg.schedule_csv + "\n"


def render_csv(ctx: EmitContext) -> Rendered:
    """``schedule.csv`` for the plan (no header: torch's loader reads every row as a rank)."""
    if ctx.cfg.pp == 1:
        raise PlanError("the plan has pp=1: there is no pipeline schedule to write")
    return Rendered(files={CSV_NAME: schedule_csv_text(ctx)})
