"""Timelines of a simulated schedule: ASCII (terminal), Chrome/Perfetto trace JSON, SVG.

All three draw the same thing: one track per pipeline rank, one box per action
(F forward, B backward-input, W backward-weight, BW full backward) labelled
with its microbatch, from the simulator's start/end times.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from xml.sax.saxutils import escape

from costmodels.simulator import SimulationResult

COLORS = {"F": "#4C72B0", "B": "#DD8452", "W": "#55A868", "BW": "#8172B3"}
LABELS = {"F": "F forward", "B": "B backward-input", "W": "W backward-weight", "BW": "BW full backward"}
ASCII_FILL = {"F": "F", "B": "B", "W": "W", "BW": "X"}
ASCII_MAX_WIDTH = 160
MIN_BOX_PX = 4.0  # narrower boxes are slivers: the SVG elides the steady state instead
GAP_PX = 44.0  # width of the band standing for the elided steady state


def ascii_timeline(result: SimulationResult, max_width: int = ASCII_MAX_WIDTH) -> str | None:
    """One text row per rank ('.' = idle; a box is its kind letter and microbatch, then '-';
    X = full backward; lower-case letters mark a rank's second, fourth, ... stage chunk),
    or None when a rank has more actions than fit legibly in ``max_width`` columns."""
    if result.makespan_s <= 0 or max(len(r) for r in result.schedule.ranks) * 2 > max_width:
        return None
    durations = [e - s for r in range(result.schedule.pp) for _, s, e in result.rank_timeline(r) if e > s]
    label = len(str(result.schedule.num_microbatches - 1)) + 1
    scale = min(max(label, 2) / min(durations), max_width / result.makespan_s)
    if not math.isfinite(scale * result.makespan_s):  # durations of a few subnormal seconds: no width to draw
        return None
    width = max(1, round(result.makespan_s * scale))
    lines = []
    for rank in range(result.schedule.pp):
        row = ["."] * width
        for action, start, end in result.rank_timeline(rank):
            lo = min(width - 1, round(start * scale))
            hi = max(lo + 1, round(end * scale))
            letter = ASCII_FILL[action.kind]
            letter = letter.lower() if (action.stage // result.schedule.pp) % 2 else letter
            text = f"{letter}{action.microbatch}".ljust(hi - lo, "-")
            row[lo:hi] = text[: hi - lo]
        lines.append(f"rank {rank:>2d} |{''.join(row[:width])}|")
    return "\n".join(lines)


def chrome_trace(result: SimulationResult) -> dict:
    """Chrome/Perfetto trace events: one thread per rank, times in microseconds, plus a counter track per rank
    of the bytes the simulator holds (activations and, where they live per stage, unsharded gradients)."""
    events: list[dict] = [{"name": "process_name", "ph": "M", "pid": 0, "args": {"name": f"schedule {result.schedule.name}"}}]
    for rank in range(result.schedule.pp):
        events.append({"name": "thread_name", "ph": "M", "pid": 0, "tid": rank, "args": {"name": f"rank {rank}"}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": 0, "tid": rank, "args": {"sort_index": rank}})
        for action, start, end in result.rank_timeline(rank):
            events.append({
                "name": f"{action.kind}{action.microbatch}", "cat": action.kind, "ph": "X", "pid": 0, "tid": rank,
                "ts": start * 1e6, "dur": (end - start) * 1e6,
                "args": {"stage": action.stage, "microbatch": action.microbatch},
            })
        for time_s, held in result.memory_timeline(rank):
            events.append({"name": f"held bytes rank {rank}", "ph": "C", "pid": 0, "ts": time_s * 1e6,
                           "args": {"bytes": held}})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def chrome_trace_json(result: SimulationResult) -> str:
    return json.dumps(chrome_trace(result), indent=None, separators=(",", ":")) + "\n"


def _nice_step(span: float, target_ticks: int = 8) -> float:
    """A 1/2/5 x 10^k tick step giving about ``target_ticks`` ticks over ``span``."""
    raw = span / target_ticks
    power = 10 ** math.floor(math.log10(raw))
    return next((m * power for m in (1, 2, 5, 10) if m * power >= raw), raw)  # raw: below 1e-308 the power underflows


def _format_time(value_s: float, step_s: float) -> str:
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if step_s >= factor:
            digits = max(0, -math.floor(math.log10(step_s / factor)))
            return f"{value_s / factor:.{digits}f} {unit}"
    return f"{value_s:.3g} s"


@dataclass(frozen=True)
class TimeAxis:
    """Maps seconds to x pixels, with the steady state between ``cut_start_s`` and ``cut_end_s``
    elided into a ``gap_px`` band when the schedule is too long to draw every box legibly."""

    left: float
    scale: float  # px per second on both sides of the cut
    makespan_s: float
    cut_start_s: float | None = None
    cut_end_s: float | None = None
    gap_px: float = 0.0

    def x(self, t: float) -> float:
        if self.cut_start_s is None or t <= self.cut_start_s:
            return self.left + t * self.scale
        if t < self.cut_end_s:
            return self.left + self.cut_start_s * self.scale + self.gap_px / 2
        return self.left + self.cut_start_s * self.scale + self.gap_px + (t - self.cut_end_s) * self.scale

    def windows(self) -> list[tuple[float, float]]:
        """The drawn time spans."""
        if self.cut_start_s is None:
            return [(0.0, self.makespan_s)]
        return [(0.0, self.cut_start_s), (self.cut_end_s, self.makespan_s)]


def time_axis(result: SimulationResult, left: float, plot_w: float) -> TimeAxis:
    """The whole makespan when every box gets ``MIN_BOX_PX``; otherwise keep each rank's first and
    last ``actions_kept`` actions (its fill and drain, and a few steady-state rounds) and elide the
    steady state between them, which repeats the same pattern."""
    whole = TimeAxis(left, plot_w / result.makespan_s, result.makespan_s)
    timelines = [result.rank_timeline(r) for r in range(result.schedule.pp)]
    count = sum(len(t) for t in timelines)
    mean_s = sum(e - s for t in timelines for _, s, e in t) / max(1, count)
    if mean_s * whole.scale >= MIN_BOX_PX:
        return whole
    kept = actions_kept(result)
    start = max(t[min(kept, len(t)) - 1][2] for t in timelines)
    end = min(t[max(0, len(t) - kept)][1] for t in timelines)
    if end - start < 0.2 * result.makespan_s:
        return whole
    shown = start + (result.makespan_s - end)
    return TimeAxis(left, (plot_w - GAP_PX) / shown, result.makespan_s, start, end, GAP_PX)


def actions_kept(result: SimulationResult) -> int:
    """Actions per rank kept at each end of a compressed timeline: a full warm-up (pp·v forwards on
    rank 0) and a few more, so that every rank shows its steady pattern."""
    s = result.schedule
    return s.pp * s.v + 6


def _svg_axis(axis: TimeAxis, top: float, height: float) -> list[str]:
    shown = sum(b - a for a, b in axis.windows())
    step = _nice_step(shown)
    parts = []
    for lo, hi in axis.windows():
        k = math.ceil(lo / step - 1e-9)
        while k * step <= hi + 1e-9 * step:  # a tolerance relative to the step: at 1e-19 s an absolute one drew 1e7 ticks
            x = axis.x(k * step)
            parts.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{top + height:.1f}" stroke="#dddddd"/>')
            parts.append(f'<text x="{x:.1f}" y="{top + height + 16:.1f}" text-anchor="middle" class="tick">'
                         f"{escape(_format_time(k * step, step))}</text>")
            k += 1
    return parts


def _svg_gap(axis: TimeAxis, result: SimulationResult, top: float, height: float) -> list[str]:
    """The elided steady state: a hatched band saying how much was left out."""
    if axis.cut_start_s is None:
        return []
    x0 = axis.x(axis.cut_start_s)
    hidden = [sum(1 for _, s, e in result.rank_timeline(r) if s >= axis.cut_start_s and e <= axis.cut_end_s)
              for r in range(result.schedule.pp)]
    label = (f"steady state from {axis.cut_start_s:.3g} s to {axis.cut_end_s:.3g} s not drawn "
             f"({min(hidden)}-{max(hidden)} actions per rank, the same pattern repeated)")
    return [
        f'<rect x="{x0:.1f}" y="{top:.1f}" width="{axis.gap_px:.1f}" height="{height:.1f}" fill="url(#elided)"/>',
        f'<text x="{x0 + axis.gap_px / 2:.1f}" y="{top - 6:.1f}" text-anchor="middle" class="legend">{escape(label)}</text>',
    ]


def _svg_boxes(result: SimulationResult, axis: TimeAxis, top: float, row_h: float) -> list[str]:
    parts = []
    for rank in range(result.schedule.pp):
        y = top + rank * row_h
        parts.append(f'<text x="{axis.left - 8:.1f}" y="{y + row_h * 0.62:.1f}" text-anchor="end" class="rank">rank {rank}</text>')
        for lo, hi in axis.windows():
            x0, x1 = axis.x(lo), axis.x(hi)
            parts.append(f'<rect x="{x0:.1f}" y="{y + 2:.1f}" width="{x1 - x0:.1f}" height="{row_h - 4:.1f}" fill="#f4f4f4"/>')
        for action, start, end in result.rank_timeline(rank):
            spans = [(max(start, lo), min(end, hi)) for lo, hi in axis.windows() if end > lo and start < hi]
            title = f"{action.kind}{action.microbatch} stage {action.stage}: {start:.6g}-{end:.6g} s"
            opacity = 1.0 / (1 + action.stage // result.schedule.pp) ** 0.5  # later stage chunks lighter
            for lo, hi in spans:
                x, w = axis.x(lo), (hi - lo) * axis.scale
                parts.append(f'<rect x="{x:.2f}" y="{y + 2:.1f}" width="{max(w, 0.5):.2f}" height="{row_h - 4:.1f}" '
                             f'fill="{COLORS[action.kind]}" fill-opacity="{opacity:.2f}" stroke="#ffffff" '
                             f'stroke-width="0.6"><title>{escape(title)}</title></rect>')
                label = str(action.microbatch)
                if w >= 7 * len(label) + 2 and row_h >= 14:
                    parts.append(f'<text x="{x + w / 2:.2f}" y="{y + row_h * 0.62:.1f}" text-anchor="middle" class="mb">{label}</text>')
    return parts


def _svg_legend(left: float, y: float, kinds: list[str]) -> list[str]:
    parts, x = [], left
    for kind in kinds:
        parts.append(f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{COLORS[kind]}"/>')
        parts.append(f'<text x="{x + 16:.1f}" y="{y:.1f}" class="legend">{escape(LABELS[kind])}</text>')
        x += 24 + 7.2 * len(LABELS[kind])
    return parts


def svg_timeline(result: SimulationResult, title: str, width_px: int = 1200) -> str:
    """A self-contained SVG: one row per rank, coloured boxes per action, a time axis,
    a legend, and a hover title on every box; a long steady state is elided (``time_axis``)."""
    pp = result.schedule.pp
    row_h = 26.0 if pp <= 16 else max(8.0, 420.0 / pp)
    left, right, top = 70.0, 20.0, 80.0
    plot_w = width_px - left - right
    height = top + pp * row_h + 36
    axis = time_axis(result, left, plot_w)
    kinds = [k for k in ("F", "B", "W", "BW") if any(a.kind == k for r in result.schedule.ranks for a in r)]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width_px}" height="{height:.0f}" '
        f'viewBox="0 0 {width_px} {height:.0f}" font-family="DejaVu Sans, Arial, sans-serif">',
        "<style>.title{font-size:15px;font-weight:bold}.tick,.legend{font-size:11px;fill:#333}"
        ".rank{font-size:12px;fill:#222}.mb{font-size:10px;fill:#111111}</style>",
        '<defs><pattern id="elided" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        '<rect width="6" height="6" fill="#eeeeee"/><line x1="0" y1="0" x2="0" y2="6" stroke="#bbbbbb" stroke-width="2"/>'
        "</pattern></defs>",
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="{left:.1f}" y="22" class="title">{escape(title)}</text>',
    ]
    parts += _svg_legend(left, 46.0, kinds)
    if result.schedule.v > 1:
        parts.append(f'<text x="{left + plot_w:.1f}" y="46" text-anchor="end" class="legend">'
                     "lighter boxes: a rank's later stage chunks</text>")
    parts += _svg_axis(axis, top, pp * row_h)
    parts += _svg_boxes(result, axis, top, row_h)
    parts += _svg_gap(axis, result, top, pp * row_h)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def timeline_title(result: SimulationResult) -> str:
    s = result.schedule
    return (f"{s.name}: pp={s.pp} v={s.v} M={s.num_microbatches}, makespan {result.makespan_s:.3g} s, "
            f"bubble {100 * result.bubble_fraction:.3g}%")

