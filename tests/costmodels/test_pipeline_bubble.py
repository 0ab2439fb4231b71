"""Uniform stages, no p2p: the closed-form bubbles of Narayanan et al. SC21 Sec. 2.2."""

import pytest

from costmodels.pipeline import StageTimes, price_pipeline


def _uniform(stages, f=1.0, b=2.0):
    return StageTimes((f,) * stages, (b,) * stages, (0.0,) * stages, (1.0,) * stages, (0.0,) * (stages - 1))


@pytest.mark.parametrize("p, m", [(2, 2), (4, 8), (8, 8), (8, 32), (16, 64)])
def test_1f1b_makespan_and_bubble(p, m):
    r = price_pipeline("1f1b", p, 1, m, _uniform(p))
    assert r.makespan_s == pytest.approx((m + p - 1) * 3.0)
    assert r.bubble_fraction == pytest.approx((p - 1) / (m + p - 1))


@pytest.mark.parametrize("p, v, m", [(2, 2, 4), (4, 2, 8), (4, 4, 8), (8, 2, 16)])
def test_interleaved_bubble(p, v, m):
    r = price_pipeline("interleaved-1f1b", p, v, m, _uniform(p * v, 0.5, 1.0))
    assert r.bubble_fraction == pytest.approx((p - 1) / (v * m + p - 1))


@pytest.mark.parametrize("p, m", [(4, 8), (8, 16)])
def test_gpipe_holds_all_microbatches_and_1f1b_holds_p_minus_k(p, m):
    g = price_pipeline("gpipe", p, 1, m, _uniform(p))
    assert list(g.peak_inflight_microbatches) == [m] * p
    o = price_pipeline("1f1b", p, 1, m, _uniform(p))
    assert list(o.peak_inflight_microbatches) == [p - k for k in range(p)]
