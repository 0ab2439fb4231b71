"""CPU seconds of `ppplan search` on the issue's two big cases, with the number of simulated
candidates, and the gpt-1t pick against Megatron-LM's own configuration.

Target (issue 11): <= 5 s of CPU each, user + system of the whole `ppplan search` process and
any children it starts (measured with getrusage(RUSAGE_CHILDREN), which shared machines disturb
far less than wall time). Prints, never asserts.
Run: python bench/search_speed.py [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [
    ("gpt-1t", "dgx-a100-80g", 3072, 3072, 2048),
    ("llama3-405b", "dgx-h100", 16384, 2048, 8192),
]
# Megatron-LM's own trillion-parameter run (Narayanan et al. SC21, Table 1): TP 8, PP 64, microbatch 1,
# full activation recomputation, on 3072 A100s with global batch 3072.
MEGATRON_GPT_1T = ["--tp", "8", "--pp", "64", "--mbs", "1", "--recompute", "full"]
PPPLAN = [sys.executable, "-c", "from planner.cli.main import main; main()"]


def cpu_seconds(argv: list[str]) -> tuple[float, float, str]:
    """(CPU seconds of the child and its children, wall seconds, stdout) of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, done.stdout


def search_case(model: str, cluster: str, gpus: int, batch: int, seq: int, repeats: int, workdir: Path) -> dict:
    plan_path = workdir / f"{model}.json"
    argv = PPPLAN + ["search", "--model", model, "--cluster", cluster, "--gpus", str(gpus), "--global-batch", str(batch),
                     "--seq-len", str(seq), "--out", str(plan_path)]
    runs = [cpu_seconds(argv) for _ in range(repeats)]
    stdout = runs[-1][2]
    counts = re.search(r"(\d+) candidates,\s+(\d+)\s+simulated", stdout)
    return {
        "cpu_s": min(r[0] for r in runs), "wall_s": min(r[1] for r in runs),
        "candidates": int(counts.group(1)), "simulated": int(counts.group(2)),
        "plan": json.loads(plan_path.read_text()),
    }


def evaluate_megatron(workdir: Path) -> dict:
    out = workdir / "megatron.json"
    argv = PPPLAN + ["evaluate", "--model", "gpt-1t", "--cluster", "dgx-a100-80g", "--gpus", "3072", "--global-batch", "3072",
                     *MEGATRON_GPT_1T, "--json"]
    _, _, stdout = cpu_seconds(argv)
    out.write_text(stdout)
    return json.loads(stdout)


def label(cfg: dict) -> str:
    sp = "+sp" if cfg["sequence_parallel"] else ""
    return (f"tp={cfg['tp']}{sp} pp={cfg['pp']} dp={cfg['dp']} mbs={cfg['mbs']} M={cfg['num_microbatches']} v={cfg['v']} "
            f"{cfg['schedule']} recompute={cfg['recompute']} zero={cfg['zero']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per case; the least CPU time is printed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for model, cluster, gpus, batch, seq in CASES:
            case = search_case(model, cluster, gpus, batch, seq, args.repeats, workdir)
            est, cfg = case["plan"]["estimate"], case["plan"]["config"]
            print(f"{model} on {gpus} x {cluster}, global batch {batch}, seq {seq}: {case['cpu_s']:.2f} s CPU "
                  f"(user+sys, process and children; wall {case['wall_s']:.2f} s), {case['candidates']} candidates, "
                  f"{case['simulated']} simulated")
            print(f"  pick: {label(cfg)}: step {est['step_time_s']:.3g} s, MFU {100 * est['mfu']:.3g}%")
            if model == "gpt-1t":
                base = evaluate_megatron(workdir)["estimate"]
                gain = 100 * (1 - est["step_time_s"] / base["step_time_s"])
                print(f"  Megatron's config (TP 8, PP 64, mbs 1, full recompute, 1F1B): step {base['step_time_s']:.3g} s, "
                      f"MFU {100 * base['mfu']:.3g}%, fits {base['fits']}; the pick is {gain:.3g}% faster")


if __name__ == "__main__":
    main()
