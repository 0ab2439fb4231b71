"""``ppplan validate --plot out.png``: predicted (held-out) against measured, one panel per
independent source, with the ±10 % band around the diagonal.

Each panel uses its source's own metric when the source reports one (step time, tokens/s
per GPU, TFLOP/s per GPU), else tokens/s per GPU for every row. matplotlib is imported
here only (the dev extra; ``search`` and ``evaluate`` never need it), with the file-only
Agg backend, and the image is written atomically.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

from planner.trust.accuracy import grouped, mape_pct
from planner.trust.validation import RowResult, ValidationReport
from profiles.errors import PlanError
from profiles.files import check_writable, write_atomic_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes

BAND_PCT = 10.0
UNITS = {
    "step_time_s": "step time (s)",
    "tokens_per_s_per_gpu": "tokens/s per GPU",
    "hw_tflops_per_gpu": "hardware TFLOP/s per GPU",
    "model_tflops_per_gpu": "model TFLOP/s per GPU",
    "mfu_pct": "MFU (%)",
}
PANEL_INCHES = 3.6
MIN_SPAN = 4.0  # each panel spans at least this factor, so a tight cluster of points keeps readable ticks


def _points(rows: list[RowResult]) -> tuple[list[float], list[float], str]:
    metrics = {r.row.metric for r in rows}
    if len(metrics) == 1:
        metric = metrics.pop()
        return [float(r.row.measured) for r in rows], [r.predicted("heldout") for r in rows], UNITS[metric]
    return ([r.throughput_per_gpu("measured") for r in rows], [r.throughput_per_gpu("heldout") for r in rows],
            UNITS["tokens_per_s_per_gpu"])


def _panel(ax: "Axes", source: str, rows: list[RowResult]) -> None:
    measured, predicted, unit = _points(rows)
    lo, hi = min(measured + predicted) / 1.3, max(measured + predicted) * 1.3
    if hi / lo < MIN_SPAN:
        middle = math.sqrt(lo * hi)
        lo, hi = middle / math.sqrt(MIN_SPAN), middle * math.sqrt(MIN_SPAN)
    line = [lo, hi]
    ax.fill_between(line, [x * (1 - BAND_PCT / 100) for x in line], [x * (1 + BAND_PCT / 100) for x in line],
                    color="tab:green", alpha=0.15, label=f"±{BAND_PCT:.0f} %")
    ax.plot(line, line, color="tab:green", linewidth=0.8)
    ax.scatter(measured, predicted, s=12, color="tab:blue", alpha=0.75)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_title(f"{source}: {len(rows)} rows, MAPE {mape_pct(r.error('heldout') for r in rows):.1f} %", fontsize=8)
    ax.set_xlabel(f"measured {unit}", fontsize=7)
    ax.set_ylabel(f"predicted {unit}", fontsize=7)
    ax.tick_params(labelsize=6)
    from matplotlib.ticker import NullFormatter  # loaded by plot_validation

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(NullFormatter())


def plot_validation(report: ValidationReport, path: Path) -> Path:
    """Draw the panels and write ``path`` (PNG); ``PlanError`` when it cannot be written or
    matplotlib is missing."""
    check_writable(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise PlanError("--plot needs matplotlib: pip install -e '.[dev]'") from None
    by_source = grouped(report.priced, lambda r: r.row.source)
    columns = min(3, len(by_source))
    rows_of_panels = math.ceil(len(by_source) / columns)
    figure, axes = pyplot.subplots(rows_of_panels, columns, figsize=(PANEL_INCHES * columns, PANEL_INCHES * rows_of_panels),
                                   squeeze=False)
    for ax, (source, rows) in zip(axes.flat, by_source.items()):
        _panel(ax, source, rows)
    for ax in list(axes.flat)[len(by_source):]:
        ax.set_visible(False)
    overall = mape_pct(r.error("heldout") for r in report.priced)
    which = "held-out" if report.family_fits else "a priori, no fit"
    figure.suptitle(f"ppplan validate: predicted ({which}) vs measured, {len(report.priced)} rows, "
                    f"overall MAPE {overall:.1f} %; band ±{BAND_PCT:.0f} %", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    pyplot.close(figure)
    return write_atomic_bytes(path, buffer.getvalue())
