"""Rich tables and plan files: how results reach a person or a pipeline."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from profiles.schema import Estimate, ParallelConfig, Plan


def compact_layers(stage_layers: list[int]) -> str:
    """``[5, 6, 6, 6, 5]`` -> ``5,6x3,5``."""
    parts: list[str] = []
    i = 0
    while i < len(stage_layers):
        j = i
        while j + 1 < len(stage_layers) and stage_layers[j + 1] == stage_layers[i]:
            j += 1
        count = j - i + 1
        parts.append(f"{stage_layers[i]}x{count}" if count > 1 else str(stage_layers[i]))
        i = j + 1
    return ",".join(parts)


def plans_table(rows: list[tuple[ParallelConfig, Estimate]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name in ("#", "T", "P", "R", "mbs", "M", "v", "schedule", "recompute", "SP", "ZeRO", "layers/stage",
                 "step s", "tokens/s", "MFU %", "peak GiB / HBM", "bubble %"):
        table.add_column(name, justify="right" if name not in {"schedule", "recompute", "layers/stage"} else "left")
    for i, (cfg, est) in enumerate(rows, start=1):
        worst = max(est.peak_memory_gib)
        mem = f"{worst:.1f} / {est.memory_limit_gib:.0f}" + ("" if est.fits else " OOM")
        table.add_row(
            str(i), str(cfg.tp), str(cfg.pp), str(cfg.dp), str(cfg.mbs), str(cfg.num_microbatches), str(cfg.v),
            cfg.schedule, cfg.recompute_label, "y" if cfg.sequence_parallel else "n", str(cfg.zero),
            compact_layers(cfg.stage_layers), f"{est.step_time_s:.3f}", f"{est.tokens_per_s:,.0f}",
            f"{100 * est.mfu:.1f}", mem, f"{100 * est.bubble_fraction:.1f}",
        )
    return table


def memory_table(est: Estimate) -> Table:
    table = Table(title="Peak memory per pipeline rank (GiB)", title_justify="left")
    keys = list(est.memory_breakdown_gib[0].keys())
    table.add_column("rank", justify="right")
    for k in keys:
        table.add_column(k, justify="right")
    table.add_column("total", justify="right")
    table.add_column(f"limit {est.memory_limit_gib:.1f}", justify="right")
    for r, parts in enumerate(est.memory_breakdown_gib):
        total = est.peak_memory_gib[r]
        table.add_row(str(r), *(f"{parts[k]:.2f}" for k in keys), f"{total:.2f}", "ok" if total <= est.memory_limit_gib else "OVER")
    return table


def plan_json(plan: Plan) -> str:
    """Canonical plan text: no timestamps, timings or paths, so identical inputs give identical bytes."""
    return plan.model_dump_json(indent=2) + "\n"


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)
