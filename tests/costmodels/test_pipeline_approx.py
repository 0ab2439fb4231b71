"""The closed-form screen (``costmodels.pipeline_approx``) where its forms are exact: uniform
stages and no p2p on GPipe/1F1B, interleaved 1F1B with M % P == 0 (Narayanan et al. SC21
Sec. 2.2) and ZB-H1 with F = B = W (Qi et al. ICLR 2024: (3M + P - 1)·T). The simulator over
the exact action list is the reference."""

from __future__ import annotations

import pytest

from costmodels.pipeline import price_pipeline
from costmodels.pipeline_approx import approximate_inflight, approximate_makespan_s, approximate_pipeline
from costmodels.simulator import StageTimes


def uniform(stages: int, f: float, b: float, w: float) -> StageTimes:
    return StageTimes((f,) * stages, (b,) * stages, (w,) * stages, (1.0,) * stages, (0.0,) * (stages - 1))


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
@pytest.mark.parametrize("pp, m", [(2, 4), (4, 8), (8, 8), (4, 13)])
def test_single_stage_schedules_are_exact(schedule: str, pp: int, m: int) -> None:
    times = uniform(pp, 1.0, 1.5, 0.5)
    assert approximate_makespan_s(schedule, pp, 1, m, times) == pytest.approx(price_pipeline(schedule, pp, 1, m, times).makespan_s)


@pytest.mark.parametrize("pp, v, m", [(2, 2, 4), (4, 2, 8), (4, 4, 16)])
def test_interleaved_with_full_rounds_is_exact(pp: int, v: int, m: int) -> None:
    times = uniform(pp * v, 0.5, 0.75, 0.25)
    exact = price_pipeline("interleaved-1f1b", pp, v, m, times).makespan_s
    assert approximate_makespan_s("interleaved-1f1b", pp, v, m, times) == pytest.approx(exact)


@pytest.mark.parametrize("pp, m", [(4, 8), (8, 16)])
def test_zb_h1_with_equal_passes_is_3m_plus_p_minus_1(pp: int, m: int) -> None:
    times = uniform(pp, 1.0, 1.0, 1.0)
    assert approximate_makespan_s("zb-h1", pp, 1, m, times) == pytest.approx(3 * m + pp - 1)
    assert price_pipeline("zb-h1", pp, 1, m, times).makespan_s == pytest.approx(3 * m + pp - 1)


@pytest.mark.parametrize("pp, m", [(4, 8), (4, 2)])
def test_in_flight_forms_for_gpipe_and_1f1b_match_the_simulator(pp: int, m: int) -> None:
    times = uniform(pp, 1.0, 1.0, 1.0)
    for schedule in ("gpipe", "1f1b"):
        if schedule == "1f1b" and m < pp:
            continue
        exact = price_pipeline(schedule, pp, 1, m, times).peak_inflight_microbatches
        assert tuple(int(approximate_inflight(schedule, r, pp, 1, m)) for r in range(pp)) == exact


def test_screen_result_has_the_simulator_shape() -> None:
    times = uniform(4, 1.0, 2.0, 0.0)
    approx = approximate_pipeline("1f1b", 4, 1, 8, times)
    exact = price_pipeline("1f1b", 4, 1, 8, times)
    assert approx.bubble_fraction == pytest.approx(exact.bubble_fraction)
    assert approx.busy_s == pytest.approx(exact.busy_s)
    assert approx.peak_inflight_microbatches == exact.peak_inflight_microbatches
