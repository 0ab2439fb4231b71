"""Searched ("custom") schedules vs the best shipped schedule on uneven stages.

Both cases cap every rank at pp in-flight microbatches (1F1B's peak, the zero-bubble paper's
"1p" memory), so gpipe and zb-h2 do not fit and the best shipped schedule is zb-h1 or 1f1b.
B = 1.1 F and W = 0.9 F per stage (a typical roofline ratio), p2p 0.02 F.

- case A: pp=4, M=8, stage F = (1.0, 1.5, 1.0, 1.0) ms: one stage holds half again as many
  layers (a cut the DP could not balance, e.g. 5/7/6/6 layers with the head on the last);
- case B: pp=6, M=12, stage F = (1.0, 1.3, 1.0, 1.1, 1.0, 1.0) ms.

Also shown: a head-heavy last stage, where zb-h1 already meets the lower bound
(first-input arrival + the busiest rank's work) and the search can only tie.

Run: python bench/custom_schedule.py
"""

from __future__ import annotations

import time

from costmodels.simulator import StageTimes
from planner.search.custom_schedule import search_custom_schedule

CASES = {
    "A pp=4 M=8 F=(1,1.5,1,1)": ((1.0, 1.5, 1.0, 1.0), 8),
    "B pp=6 M=12 F=(1,1.3,1,1.1,1,1)": ((1.0, 1.3, 1.0, 1.1, 1.0, 1.0), 12),
    "head-heavy pp=4 M=8 F=(1,1,1,1.5)": ((1.0, 1.0, 1.0, 1.5), 8),
}


def times_ms(forward_ms: tuple[float, ...]) -> StageTimes:
    f = tuple(x * 1e-3 for x in forward_ms)
    return StageTimes(f, tuple(1.1 * x for x in f), tuple(0.9 * x for x in f), (1.0,) * len(f), (0.02e-3,) * (len(f) - 1))


def lower_bound_s(times: StageTimes, num_microbatches: int) -> float:
    """max over ranks of (first input's arrival + all its passes): no schedule beats it."""
    best, head = 0.0, 0.0
    for r in range(times.num_stages):
        busy = num_microbatches * (times.forward_s[r] + times.backward_input_s[r] + times.backward_weight_s[r])
        best = max(best, head + busy)
        head += times.forward_s[r] + (times.p2p_s[r] if r < len(times.p2p_s) else 0.0)
    return best


def main() -> None:
    print(f"{'case':36s} {'shipped':>8s} {'ms':>8s} {'custom ms':>10s} {'gain':>7s} {'bound ms':>9s} {'method':>14s} {'search s':>9s}")
    for label, (forward_ms, m) in CASES.items():
        times = times_ms(forward_ms)
        t0 = time.perf_counter()
        found = search_custom_schedule(times, len(forward_ms), m)
        took = time.perf_counter() - t0
        print(f"{label:36s} {found.baseline_name:>8s} {found.baseline_makespan_s * 1e3:8.3f} {found.makespan_s * 1e3:10.3f} "
              f"{100 * found.gain:6.2f}% {lower_bound_s(times, m) * 1e3:9.3f} {found.method:>14s} {took:9.1f}")


if __name__ == "__main__":
    main()
