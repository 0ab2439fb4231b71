"""Hand-made plans for the runtime tests (a fixed Estimate; the runtime only
reads its predicted step time and memory)."""

from __future__ import annotations

from pathlib import Path

from costmodels.layout import uniform_split
from profiles.loader import load_cluster, load_model
from profiles.schema import Breakdown, Estimate, ParallelConfig, Plan, TrainSpec


def fake_estimate(pp: int, step_time_s: float = 1.0, memory_gib: float = 0.5) -> Estimate:
    zero = {k: 0.0 for k, f in Breakdown.model_fields.items() if f.annotation is float}
    return Estimate(
        step_time_s=step_time_s,
        tokens_per_s=1.0,
        model_tflops_per_gpu=0.0,
        hw_tflops_per_gpu=0.0,
        mfu=0.0,
        hfu=0.0,
        bubble_fraction=0.0,
        peak_memory_gib=[memory_gib] * pp,
        memory_limit_gib=5.0,
        fits=True,
        breakdown=Breakdown(**zero),
        memory_breakdown_gib=[{} for _ in range(pp)],
    )


def _zb_h2_csv(pp: int, v: int, num_microbatches: int) -> str:
    from costmodels.schedules.generate import generate_schedule
    from costmodels.schedules.torch_csv import format_torch_csv

    return format_torch_csv(generate_schedule("zb-h2", pp, v, num_microbatches))


def make_plan(
    model: str = "tiny-gpt",
    *,
    tp: int = 1,
    pp: int = 1,
    dp: int = 1,
    cp: int = 1,
    ep: int = 1,
    v: int = 1,
    mbs: int = 1,
    global_batch: int | None = None,
    seq_len: int = 32,
    schedule: str = "1f1b",
    stage_layers: list[int] | None = None,
    zero: int = 0,
    recompute: str | list[str] = "none",
    sequence_parallel: bool = False,
    sp_regather: bool = False,
    precision: str = "fp32",
    schedule_csv: str | None = "auto",
) -> Plan:
    """A cpu-local plan; a ``custom`` schedule defaults to carrying the zb-h2 order as its action list."""
    spec = load_model(model)
    stages = pp * v
    if stage_layers is None:
        stage_layers = uniform_split(spec.num_layers, stages)
    batch = global_batch if global_batch is not None else mbs * dp * max(pp, 2)
    config = ParallelConfig(
        tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, v=v, mbs=mbs, num_microbatches=batch // (mbs * dp), schedule=schedule,
        recompute=recompute, sequence_parallel=sequence_parallel, sp_regather=sp_regather, zero=zero,
        stage_layers=stage_layers,
        schedule_csv=(_zb_h2_csv(pp, v, batch // (mbs * dp)) if schedule == "custom" else None)
        if schedule_csv == "auto" else schedule_csv,
    )
    return Plan(
        model=spec,
        cluster=load_cluster("cpu-local"),
        train=TrainSpec(global_batch=batch, seq_len=seq_len, precision=precision),
        config=config,
        estimate=fake_estimate(pp),
    )


def write_plan(plan: Plan, path: Path) -> Path:
    path.write_text(plan.model_dump_json(indent=1))
    return path
