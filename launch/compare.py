"""Predicted vs measured, per pipeline stage: ``ppplan compare metrics.jsonl plan.json``.

Measured step time is the median over steps after the first (step 0 pays
shape inference, process-group warm-up and allocator growth; with a single
step it is all there is). Measured memory is the stage's largest
``peak_memory_gib``. Errors are ``100 * (predicted - measured) / measured``:
positive when the plan over-predicts.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from costmodels.communicators import outside_allocator_gib
from profiles.errors import PlanError
from profiles.files import metrics_plan_problem, read_metrics_jsonl
from profiles.schema import Plan

REQUIRED_KEYS = ("step", "rank", "stage", "loss", "step_time_s", "peak_memory_gib")


@dataclass(frozen=True)
class StageComparison:
    stage: int
    rank: int
    steps: int
    predicted_step_time_s: float
    measured_step_time_s: float
    step_time_error_pct: float | None
    predicted_peak_memory_gib: float
    measured_peak_memory_gib: float
    memory_error_pct: float | None
    last_loss: float | None


def read_metrics(path: Path) -> list[dict]:
    """Metrics lines of ``path``; a malformed line is a ``PlanError`` naming it."""
    return read_metrics_jsonl(path, REQUIRED_KEYS)


def measurable_peak_memory_gib(plan: Plan) -> list[float]:
    """The plan's per-rank peak as the runtime can measure it: without what a rank holds outside
    the caching allocator (``costmodels.communicators.outside_allocator_gib``: the CUDA context and
    NCCL's buffers on GPU; torch and gloo's resident set on CPU), which neither
    ``max_memory_reserved`` nor the RSS growth the CPU runtime reports includes. A rank whose
    breakdown does not say what its runtime reserves leaves out its cluster's ``runtime_reserved_gib``."""
    parts = plan.estimate.memory_breakdown_gib
    reserved = {"runtime_reserved": plan.cluster.runtime_reserved_gib}
    return [max(0.0, peak - outside_allocator_gib(reserved | (parts[r] if r < len(parts) else {})))
            for r, peak in enumerate(plan.estimate.peak_memory_gib)]


def _error_pct(predicted: float, measured: float) -> float | None:
    return 100.0 * (predicted - measured) / measured if measured > 0 else None


def measured_step_time_s(times_s: list[float]) -> float:
    """Median step time, leaving out step 0 when later steps exist."""
    return statistics.median(times_s[1:] if len(times_s) > 1 else times_s)


def compare(records: list[dict], plan: Plan) -> list[StageComparison]:
    """One row per pipeline stage present in ``records``, in stage order."""
    problem = metrics_plan_problem(records, plan.config.pp, plan.config.world_size)
    if problem:
        raise PlanError(f"{problem}: compare with the plan that was launched")
    predicted_memory = measurable_peak_memory_gib(plan)
    rows = []
    for stage in sorted({r["stage"] for r in records}):
        lines = sorted((r for r in records if r["stage"] == stage), key=lambda r: r["step"])
        measured_s = measured_step_time_s([r["step_time_s"] for r in lines])
        measured_gib = max(r["peak_memory_gib"] for r in lines)
        predicted_gib = predicted_memory[stage] if stage < len(predicted_memory) else 0.0
        losses = [r["loss"] for r in lines if r["loss"] is not None]
        rows.append(
            StageComparison(
                stage=stage,
                rank=lines[0]["rank"],
                steps=len(lines),
                predicted_step_time_s=plan.estimate.step_time_s,
                measured_step_time_s=measured_s,
                step_time_error_pct=_error_pct(plan.estimate.step_time_s, measured_s),
                predicted_peak_memory_gib=predicted_gib,
                measured_peak_memory_gib=measured_gib,
                memory_error_pct=_error_pct(predicted_gib, measured_gib),
                last_loss=losses[-1] if losses else None,
            )
        )
    return rows


def comparison_json(rows: list[StageComparison]) -> dict:
    return {"per_stage": [asdict(row) for row in rows]}
