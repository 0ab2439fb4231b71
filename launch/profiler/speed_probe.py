"""How fast this machine runs right now: one fixed reference workload, timed the profile's way.

A layer profile is measured at one moment; a shared or virtualised host (noisy neighbours,
steal time, frequency changes) can run the same kernels 10-30 % slower or faster minutes
later (this 2-core VM: the same 4-layer stage's forward took 12.6 ms and 15.3 ms in runs
two minutes apart). A prediction priced from the profile and a run measured later then
differ by that drift, which is no error of the cost model. ``ppplan profile`` records the
probe's time with the layers (``RuntimeMeasurement.speed_probe_s``, before and after the
layer timings); whoever measures a run later (``bench/e2e_cpu.py``) takes the probe again
around it and reports ``drift = probe_then_s / probe_profile_s`` beside the raw error,
never folding it into the price.

The workload: forward plus unsplit backward of one transformer layer of the runtime's own
code (``launch.profiler.cases``) at a fixed shape (hidden 256, 8 heads, FFN 1024, sequence
128, one sequence, fp32), whatever model is profiled and with one intra-op thread, so probes of
different profiles compare. Median of ``repeats`` after ``warmup``.

Run: ``python -m launch.profiler.speed_probe [--clock wall|thread_cpu]`` prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from profiles.schema import ModelSpec

PROBE_MODEL = ModelSpec(
    name="speed-probe", num_layers=1, hidden_size=256, num_attention_heads=8, ffn_hidden_size=1024, vocab_size=1024,
    seq_len=128,
)  # fmt: skip
PROBE_WARMUP = 3
PROBE_REPEATS = 25
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread_cpu": time.thread_time}


def probe_case():
    """The reference layer, built as the profiler builds a case (``launch.profiler.cases``)."""
    from launch.profiler import cases

    return cases.make_case(PROBE_MODEL, cases.GridPoint(kind="transformer", tp=1, mbs=1, seq_len=PROBE_MODEL.seq_len), "fp32", "cpu")


def probe_samples_s(clock: Callable[[], float], warmup: int = PROBE_WARMUP, repeats: int = PROBE_REPEATS) -> list[float]:
    """Seconds of F + unsplit B of the reference layer, one per timed iteration (module docstring)."""
    import torch

    from launch.profiler import cases

    case = probe_case()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one intra-op thread whatever the caller uses: probes compare
    try:
        samples = [cases.sample(case, lambda: None, clock) for _ in range(warmup + repeats)]
    finally:
        torch.set_num_threads(threads)
    forward, backward = 0, 3  # cases.summarize's order: forward, backward_input, backward_weight, backward
    return [s[forward] + s[backward] for s in samples[warmup:]]


def probe_s(clock: Callable[[], float], warmup: int = PROBE_WARMUP, repeats: int = PROBE_REPEATS) -> float:
    """Median of ``probe_samples_s``."""
    return statistics.median(probe_samples_s(clock, warmup, repeats))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="the profile's timer (its 'timer' field)")
    parser.add_argument("--repeats", type=int, default=PROBE_REPEATS)
    args = parser.parse_args(argv)
    print(json.dumps({"speed_probe_s": probe_s(CLOCKS[args.clock], repeats=args.repeats), "clock": args.clock}))


if __name__ == "__main__":
    main()
