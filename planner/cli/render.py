"""Rich tables and plan files: how results reach a person or a pipeline.

Human output rounds to three significant digits (the cost model's held-out error
is 10-30 %, DESIGN.md ``error_band_pct``); JSON and plan files keep full precision.
Tables fit the console: low-priority columns are dropped, widest first, until the
table fits its width (100 columns on a narrow terminal, 120 when piped).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from rich import box
from rich.table import Table

from profiles.errors import sig3
from profiles.schema import Estimate, ParallelConfig, Plan


def seconds(value_s: float, band_pct: float | None = None) -> str:
    """``58.8 s``, or ``58.8 s ± 12 %`` with the estimate's held-out error band."""
    text = f"{sig3(value_s)} s"
    return text if band_pct is None else f"{text} ± {band_pct:.0f} %"


def pct(fraction: float) -> str:
    return sig3(100 * fraction)


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


@dataclass(frozen=True)
class Column:
    """A table column: ``drop`` orders which go when the table is too wide (1 first; 0: never)."""

    header: str
    cell: Callable[[ParallelConfig, Estimate], str]
    drop: int = 0
    justify: str = "right"


def _memory_cell(cfg: ParallelConfig, est: Estimate) -> str:
    worst = max(est.peak_memory_gib)
    return f"{sig3(worst)}/{sig3(est.memory_limit_gib)}" + ("" if est.fits else " OOM")


def memory_band_line(est: Estimate, capacity_gib: float) -> str | None:
    """The peak's headroom to HBM against the stack's memory error band (``Estimate.memory_error_band_pct``: in %
    of the reading, how far 95 % of its published peaks exceeded the held-out prediction at most), or None where
    the stack has no validated memory readings. A reading ``u`` % above the prediction, in % of the reading, is
    ``peak / (1 - u/100)``: it fits while the peak is at most ``(100 - u)`` % of the capacity, i.e. while the
    headroom ``(capacity - peak) / capacity`` is at least ``u`` %."""
    band = est.memory_error_band_pct
    if band is None:
        return None
    headroom = 100.0 * (capacity_gib - max(est.peak_memory_gib)) / capacity_gib
    if band > 0:
        spread = f"95 % of this stack's published peaks were under-predicted by at most {band:.1f} % of the reading"
    else:
        spread = f"95 % of this stack's published peaks were over-predicted by at least {-band:.1f} % of the reading"
    if headroom < 0:
        room = f"the peak exceeds the {sig3(capacity_gib)} GiB by {-headroom:.1f} %"
    else:
        room = f"the peak leaves {headroom:.1f} % of the {sig3(capacity_gib)} GiB free"
    verdict = "enough for such an error" if headroom >= band else "NOT enough for such an error: it may run out of memory"
    return f"Memory: {spread} (ppplan validate); {room}, {verdict} (the fit check's limit is {sig3(est.memory_limit_gib)} GiB)"


def _step_cell(cfg: ParallelConfig, est: Estimate) -> str:
    text = sig3(est.step_time_s)
    return text if est.error_band_pct is None else f"{text} ±{est.error_band_pct:.0f}%"


PLAN_COLUMNS: tuple[Column, ...] = (
    Column("T", lambda c, e: f"{c.tp}{('sp*' if c.sp_regather else 'sp') if c.sequence_parallel else ''}"),
    Column("P", lambda c, e: str(c.pp)),
    Column("R", lambda c, e: str(c.dp)),
    Column("mbs", lambda c, e: str(c.mbs)),
    Column("M", lambda c, e: str(c.num_microbatches)),
    Column("v", lambda c, e: str(c.v)),
    Column("schedule", lambda c, e: c.schedule, justify="left"),
    Column("recompute", lambda c, e: c.recompute_label + (f"+o{c.offload_layers}" if c.offload_layers else ""),
           drop=5, justify="left"),
    Column("ZeRO", lambda c, e: str(c.zero), drop=4),
    Column("layers/stage", lambda c, e: compact_layers(c.stage_layers), drop=2, justify="left"),
    Column("step s", _step_cell),
    Column("tokens/s", lambda c, e: sig3(e.tokens_per_s), drop=1),
    Column("MFU %", lambda c, e: pct(e.mfu)),
    Column("GiB/HBM", _memory_cell),
    Column("bubble %", lambda c, e: pct(e.bubble_fraction), drop=3),
)


def _table_width(headers: list[str], rows: list[list[str]]) -> int:
    """Width of a ``box.SIMPLE_HEAD`` table without edges: each column's widest cell plus one space
    either side, and a one-space rule between columns."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    return sum(w + 2 for w in widths) + len(widths) - 1


def fitted_table(title: str | None, columns: list[Column], rows: list[tuple[ParallelConfig, Estimate]], width: int,
                 numbered: bool = True) -> Table:
    """A table of ``columns`` over ``rows``, dropping droppable columns (highest ``drop`` first) until
    it fits ``width`` characters."""
    keep = list(columns)
    cells = [[col.cell(cfg, est) for col in keep] for cfg, est in rows]
    extra = len(str(len(rows))) + 3 if numbered else 0
    while _table_width([c.header for c in keep], cells) + extra > width and any(c.drop for c in keep):
        worst = min((c for c in keep if c.drop), key=lambda c: c.drop)
        index = keep.index(worst)
        keep.pop(index)
        for row in cells:
            row.pop(index)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    if numbered:
        table.add_column("#", justify="right")
    for col in keep:
        table.add_column(col.header, justify=col.justify, no_wrap=True)
    for i, row in enumerate(cells, start=1):
        table.add_row(*([str(i)] if numbered else []), *row)
    return table


# Context- and expert-parallel degrees, shown after T when some plan of the table uses them.
CP_COLUMN = Column("C", lambda c, e: str(c.cp))
# E reads "8" with expert TP = tp and "8/1" with expert TP 1 (ep / etp, Megatron-Core's parallel folding).
EP_COLUMN = Column("E", lambda c, e: str(c.ep) if c.expert_tp == c.tp else f"{c.ep}/{c.expert_tp}")


def plans_table(rows: list[tuple[ParallelConfig, Estimate]], title: str | None, width: int = 100) -> Table:
    columns = list(PLAN_COLUMNS)
    extra = [col for col, used in ((CP_COLUMN, any(c.cp > 1 for c, _ in rows)), (EP_COLUMN, any(c.ep > 1 or c.expert_tp != c.tp for c, _ in rows)))
             if used]
    table = fitted_table(title, columns[:1] + extra + columns[1:], rows, width)
    if any(c.sp_regather for c, _ in rows):
        table.caption = "sp*: the sequence-parallel inputs kept as shards and gathered again in the backward (--sp-regather)"
        table.caption_justify = "left"
    return table


def memory_table(est: Estimate, width: int = 100) -> Table:
    """Peak GiB per pipeline rank by category; ranks beyond a screenful are summarised by the worst ones."""
    title = "Peak memory per pipeline rank (GiB)"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  min_width=len(title))  # a plan with peaks only makes a narrow table: its title stays one line
    every = list(dict.fromkeys(k for parts in est.memory_breakdown_gib for k in parts))  # a rank may lack a term
    keys = [k for k in every if any(parts.get(k, 0.0) for parts in est.memory_breakdown_gib)]
    short = {"runtime_reserved": "reserved", "fragmentation": "frag", "comm_buffers": "buffers", "nccl_buffers": "nccl",
             "activations": "activ.", "optimizer_step": "step"}
    table.add_column("rank", justify="right")
    for k in keys:
        table.add_column(short.get(k, k), justify="right")
    table.add_column("total", justify="right")
    table.add_column(f"of {sig3(est.memory_limit_gib)}", justify="right")
    for r in shown_ranks(est.peak_memory_gib):
        parts = est.memory_breakdown_gib[r] if est.memory_breakdown_gib else {}  # a plan may give peaks only
        total = est.peak_memory_gib[r]
        table.add_row(str(r), *(sig3(parts.get(k, 0.0)) for k in keys), sig3(total), "ok" if total <= est.memory_limit_gib else "OVER")
    return table


MAX_RANK_ROWS = 8


def shown_ranks(peaks: list[float]) -> list[int]:
    """All ranks, or the first, the last and the fullest ones when there are many."""
    if len(peaks) <= MAX_RANK_ROWS:
        return list(range(len(peaks)))
    fullest = sorted(range(len(peaks)), key=lambda r: (-peaks[r], r))[: MAX_RANK_ROWS - 2]
    return sorted({0, len(peaks) - 1, *fullest})


def plan_json(plan: Plan) -> str:
    """Canonical plan text: no timestamps, timings or paths, so identical inputs give identical bytes."""
    return plan.model_dump_json(indent=2) + "\n"


def finite_json(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by ``None``: RFC 8259 JSON has no NaN or Infinity,
    and Python's ``json`` writes them as bare tokens other parsers refuse (a MAPE over no rows, an error
    against a zero reading). ``None`` reads as "no value", as DESIGN.md's documents use it elsewhere."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(value) for value in data]
    return data


def json_document(data: Any) -> str:
    """One standard JSON document (no NaN or Infinity tokens: ``finite_json``) of a command's ``--json`` output."""
    return json.dumps(finite_json(data), allow_nan=False)
