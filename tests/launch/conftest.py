"""Hand-built plans for the emitter tests (the cost model is not needed to emit a config).

``make_plan`` fills ``Estimate`` with dummy numbers: emitters read only the
model, cluster, train and config parts of a plan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from costmodels.layout import uniform_split
from profiles.loader import load_cluster, load_model
from profiles.schema import Breakdown, Estimate, ParallelConfig, Plan, TrainSpec


def dummy_estimate(pp: int) -> Estimate:
    zero = {k: 0.0 for k, f in Breakdown.model_fields.items() if f.annotation is float}
    return Estimate(
        step_time_s=1.0, tokens_per_s=1.0, model_tflops_per_gpu=1.0, hw_tflops_per_gpu=1.0, mfu=0.5, hfu=0.5,
        bubble_fraction=0.1, peak_memory_gib=[1.0] * pp, memory_limit_gib=80.0, fits=True,
        breakdown=Breakdown(**zero), memory_breakdown_gib=[],
    )  # fmt: skip


def make_plan(
    model: str = "tiny-gpt",
    cluster: str = "dgx-h100",
    *,
    tp: int = 1,
    pp: int = 1,
    dp: int = 1,
    v: int = 1,
    mbs: int = 1,
    global_batch: int | None = None,
    num_microbatches: int | None = None,
    precision: str = "bf16",
    stage_layers: list[int] | None = None,
    **config: Any,
) -> Plan:
    """A plan for ``model`` on ``cluster`` with these degrees (M = pp by default)."""
    spec = load_model(model)
    m = num_microbatches or (global_batch // (dp * mbs) if global_batch else pp)
    batch = global_batch or m * dp * mbs
    cfg = ParallelConfig(
        tp=tp, pp=pp, dp=dp, v=v, mbs=mbs, num_microbatches=m,
        stage_layers=stage_layers or uniform_split(spec.num_layers, pp * v), **config,
    )  # fmt: skip
    train = TrainSpec(global_batch=batch, seq_len=spec.seq_len, precision=precision)
    return Plan(
        model=spec, cluster=load_cluster(cluster), train=train, config=cfg,
        estimate=dummy_estimate(pp), rationale=[],
    )  # fmt: skip


@pytest.fixture
def build_plan() -> Callable[..., Plan]:
    """``make_plan`` as a fixture (test modules do not import conftest)."""
    return make_plan
