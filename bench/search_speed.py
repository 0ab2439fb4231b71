"""Search time over the full space (cut points included) on the issue's two big cases.

Target: <= 10 s each on a 2-core machine. Prints, never asserts.
Run: python bench/search_speed.py
"""

from __future__ import annotations

import time

from costmodels.estimate import estimate
from costmodels.layout import uniform_split
from planner.search.branch_and_bound import search
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ParallelConfig, TrainSpec

CASES = [
    ("gpt-1t", "dgx-a100-80g", 3072, 3072, 2048),
    ("llama3-405b", "dgx-h100", 16384, 2048, 8192),
]


def main() -> None:
    for model_name, cluster_name, gpus, batch, seq in CASES:
        model, cluster = load_model(model_name), load_cluster(cluster_name)
        train = TrainSpec(global_batch=batch, seq_len=seq)
        start = time.perf_counter()
        result = search(model, cluster, train, gpus, top_k=5)
        seconds = time.perf_counter() - start
        best = result.best[0]
        print(f"{model_name} on {gpus} {cluster_name}: {seconds:.2f} s, {result.candidates} candidates, "
              f"{result.evaluated} priced with cut points, {result.pruned_by_bound} pruned by bound, "
              f"{result.rejected_memory} rejected for memory")
        print(f"  best: {best.candidate.label()} step {best.estimate.step_time_s:.2f} s MFU {100 * best.estimate.mfu:.1f}%")
        if model_name == "gpt-1t":
            megatron = ParallelConfig(tp=8, pp=64, dp=6, mbs=1, num_microbatches=512, schedule="1f1b",
                                      recompute="full", stage_layers=uniform_split(128, 64))
            base = estimate(model, cluster, train, megatron, stack=load_stack(megatron.stack))
            print(f"  Megatron's config (TP 8, PP 64, mbs 1, full recompute): step {base.step_time_s:.2f} s "
                  f"MFU {100 * base.mfu:.1f}%; best is {100 * (1 - best.estimate.step_time_s / base.step_time_s):.1f}% faster")


if __name__ == "__main__":
    main()
