"""How much throughput a CPU node loses when more processes compute than it has cores.

``costmodels.processor_sharing`` prices ranks that time-share ``C`` cores under ideal processor
sharing: ``n`` computing ranks each run at ``C / n`` of full speed, so the node's throughput
stays that of ``C`` processes. A real scheduler loses some of it: every switch between
processes costs the switch itself and the next process's cold caches (Linux's CFS hands out
slices of a few milliseconds; a transformer layer's weights and activations do not fit one
core's L2). This module measures the loss on the machine, with the speed probe's reference
workload (``launch.profiler.speed_probe``): ``k·C`` forked processes each run it for
``duration_s`` after a common start, for ``k`` = 1 (the baseline, one process per core) and
each of ``factors``; the efficiency at ``k`` is the total throughput at ``k·C`` processes over
that at ``C`` measured in the same round (median over ``rounds``). ``ppplan profile`` records the points (``RuntimeMeasurement.timeshare_efficiency``)
and the estimate scales the shared cores by them (``costmodels.runtime_costs``).

Measured on this 2-core VM while developing it (scratch script, 8 s per point): total
throughput 93.6 / 87.9 / 76.9 reference iterations per second at 2 / 4 / 8 processes (0.94 at
2x, 0.82 at 4x), each process's CPU time per iteration rising 21.3 -> 22.7 -> 26.0 ms: the
loss is work the switching adds, not idle cores.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections.abc import Sequence

DEFAULT_FACTORS = (2, 4)
DEFAULT_DURATION_S = 2.5
DEFAULT_ROUNDS = 2


def node_cores() -> int:
    """Cores this process may run on (its affinity mask; ``os.cpu_count`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker(start: float, duration_s: float, out) -> None:
    """Run the reference workload from ``start`` for ``duration_s`` (wall) and send the count."""
    import torch

    from launch.profiler import cases
    from launch.profiler.speed_probe import probe_case

    torch.set_num_threads(1)
    case = probe_case()
    cases.sample(case, lambda: None, time.perf_counter)  # warm: allocator and kernels
    while time.time() < start:
        time.sleep(0.0005)
    done = 0
    while time.time() < start + duration_s:
        cases.sample(case, lambda: None, time.perf_counter)
        done += 1
    out.send(done)
    out.close()


def _throughput(processes: int, duration_s: float) -> float:
    """Reference iterations per second of ``processes`` forked processes computing together."""
    context = multiprocessing.get_context("fork")  # the parent's torch import is reused: no per-process start-up
    start = time.time() + 0.3 + 0.05 * processes  # every child built and warm before the clock starts
    pipes, children = [], []
    for _ in range(processes):
        receive, send = context.Pipe(duplex=False)
        child = context.Process(target=_worker, args=(start, duration_s, send), daemon=True)
        child.start()
        send.close()
        pipes.append(receive)
        children.append(child)
    counts = [pipe.recv() for pipe in pipes]
    for child in children:
        child.join()
    return sum(counts) / duration_s


def timeshare_efficiency(
    cores: int | None = None, factors: Sequence[int] = DEFAULT_FACTORS, duration_s: float = DEFAULT_DURATION_S,
    rounds: int = DEFAULT_ROUNDS,
) -> list[tuple[float, float]]:
    """``[(k, throughput at k·C processes / throughput at C), ...]`` for ``k`` in ``factors`` (module
    docstring); ``C`` = ``cores`` or this process's. Must run where no process group is open."""
    from launch.profiler import cases, speed_probe  # noqa: F401  imported once here: the forked children reuse them

    cores = cores or node_cores()
    ratios: dict[int, list[float]] = {k: [] for k in factors}
    for _ in range(rounds):  # each round its own baseline: the machine's drift between rounds cancels
        baseline = _throughput(cores, duration_s)
        for k in factors:
            ratios[k].append(_throughput(k * cores, duration_s) / baseline)
    return [(float(k), statistics.median(ratios[k])) for k in factors]
