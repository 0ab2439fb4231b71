"""``costmodels.overlap``: what a collective hidden under compute still costs, derived by hand."""

from __future__ import annotations

import pytest

from costmodels.overlap import OVERLAPPED_COMPUTE_SLOWDOWN, cluster_contention_s, contention_s, overlapped_pass_s
from profiles.loader import load_cluster


def test_hidden_traffic_costs_the_compute_it_slows() -> None:
    """Lee et al. 2025: compute beside a collective runs 18.9 % slower. 1.189 s of traffic under compute delays
    it by 0.189 s; a pass of 8 s with 2 s under it takes 8 + 2 x 0.189/1.189; traffic longer than the slowed
    compute (5 s under 1 s) is the pass; at g = 1.189 c both are g; no traffic, no cost."""
    assert OVERLAPPED_COMPUTE_SLOWDOWN == 0.189
    assert contention_s(1.189) == pytest.approx(0.189)
    assert overlapped_pass_s(8.0, 2.0) == pytest.approx(8.0 + 2.0 * 0.189 / 1.189)
    assert overlapped_pass_s(1.0, 5.0) == 5.0
    assert overlapped_pass_s(2.0, 2.378) == pytest.approx(2.378)
    assert overlapped_pass_s(3.0, 0.0) == 3.0


def test_nothing_hides_on_a_cpu_node_so_nothing_contends() -> None:
    """On an accelerator a hidden second costs 0.189 / 1.189 s; on a CPU node (cores that compute also move the
    bytes) the traffic is priced exposed elsewhere and no contention is added."""
    assert cluster_contention_s(load_cluster("dgx-h100"), 1.189) == pytest.approx(0.189)
    assert cluster_contention_s(load_cluster("cpu-local"), 1.189) == 0.0
