"""SVG timelines stay readable for any number of microbatches: past the point where boxes would be
slivers, the steady state is elided between the fill and the drain, which are drawn in full."""

from __future__ import annotations

import re

from costmodels.schedules.generate import generate_schedule
from costmodels.simulator import StageTimes, simulate
from planner.cli.timeline import MIN_BOX_PX, actions_kept, svg_timeline, time_axis


def run(schedule: str, pp: int, v: int, m: int):
    stages = pp * v
    times = StageTimes((1.0,) * stages, (1.0,) * stages, (1.0,) * stages, (1.0,) * stages, (0.05,) * (stages - 1))
    return simulate(generate_schedule(schedule, pp, v, m), times)


ACTION_BOX = re.compile(r'<rect x="[\d.]+" y="[\d.]+" width="([\d.]+)" height="[\d.]+" fill="#\w+" fill-opacity')


def box_widths(svg: str) -> list[float]:
    return [float(w) for w in ACTION_BOX.findall(svg)]


def test_short_schedules_are_drawn_whole() -> None:
    result = run("1f1b", 4, 1, 8)
    axis = time_axis(result, 70.0, 1110.0)
    assert axis.cut_start_s is None
    svg = svg_timeline(result, "t")
    assert len(box_widths(svg)) == 4 * 8 * 2 and "not drawn" not in svg


def test_a_long_steady_state_is_elided_and_every_drawn_box_is_readable() -> None:
    result = run("zb-h1", 8, 1, 256)
    axis = time_axis(result, 70.0, 1110.0)
    assert axis.cut_start_s is not None and axis.cut_end_s > axis.cut_start_s
    kept = actions_kept(result)
    for rank in range(8):
        timeline = result.rank_timeline(rank)
        assert timeline[kept - 1][2] <= axis.cut_start_s + 1e-9  # the fill is drawn in full
        assert timeline[-kept][1] >= axis.cut_end_s - 1e-9  # and so is the drain
    svg = svg_timeline(result, "t")
    whole = sorted(box_widths(svg))
    assert whole[len(whole) // 10] >= MIN_BOX_PX  # (boxes cut at the elided band may be narrower)
    assert "steady state from" in svg and 'fill="url(#elided)"' in svg
    assert len(svg) < 400_000
