"""Simulator throughput: time to price one schedule with new stage times.

Targets (issue 4): 1F1B with pp=64, M=512 in <= 20 ms and interleaved 1F1B with
v=4 in <= 100 ms. "warm" is what the search pays per candidate (the schedule's
action lists and dependency graph are cached per (schedule, pp, v, M)); "cold"
adds generating the lists and building the graph once.

Run: python bench/simulator_speed.py
"""

from __future__ import annotations

import time

from costmodels.schedules.generate import generate_schedule
from costmodels.simulator import StageTimes, schedule_graph, simulate

CASES = (("1f1b", 64, 1, 512, 20.0), ("interleaved-1f1b", 64, 4, 512, 100.0), ("zb-h1", 64, 1, 512, None),
         ("zbv", 64, 2, 512, None))


def uneven_times(num_stages: int, seed: int) -> StageTimes:
    """Deterministic uneven per-stage times (seconds) so no two calls price the same thing."""
    f = tuple(1e-3 * (1.0 + 0.1 * ((j * 7 + seed) % 5)) for j in range(num_stages))
    return StageTimes(f, tuple(2 * x for x in f), f, tuple(1e6 for _ in f), tuple(1e-5 for _ in f[1:]))


def best_ms(fn, repeats: int) -> float:
    best = float("inf")
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(i)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    print(f"{'schedule':18s} {'pp':>3s} {'v':>2s} {'M':>4s} {'actions':>8s} {'cold ms':>8s} {'warm ms':>8s} {'target':>7s}")
    for name, pp, v, m, target_ms in CASES:
        t0 = time.perf_counter()
        schedule = generate_schedule(name, pp, v, m)
        schedule_graph(schedule)
        cold_ms = (time.perf_counter() - t0) * 1e3
        warm_ms = best_ms(lambda i, s=schedule, n=pp * v: simulate(s, uneven_times(n, i)), repeats=7)
        target = f"{target_ms:.0f}" if target_ms else "-"
        print(f"{name:18s} {pp:3d} {v:2d} {m:4d} {schedule.num_actions:8d} {cold_ms:8.0f} {warm_ms:8.1f} {target:>7s}")


if __name__ == "__main__":
    main()
