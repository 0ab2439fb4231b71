"""CPU ranks keep freed memory (``launch/runtime/heap.py``): a step's allocations reuse the heap
instead of faulting fresh pages in from the kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launch.runtime import heap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux)")

# One "step": activations of several sizes (MiB) allocated, touched and freed, then a larger
# temporary, as a pipeline stage's forward, backward and optimizer do. 64 MiB touched: 16,384 pages.
STEP_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import torch
    from launch.runtime.heap import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    def step():
        acts = [torch.ones(n * 2**18) for n in (1, 3, 8, 16, 2, 24)]
        loss = sum(a.sum() for a in acts)
        del acts, loss
        temp = torch.ones(10 * 2**18)
        del temp
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
    """
)
PAGES_PER_STEP = 64 * 2**20 // 4096
REPO = Path(heap.__file__).resolve().parents[2]


def run_clean(*argv: str) -> str:
    """stdout of a fresh interpreter started without the malloc variables (this process's heap untouched)."""
    env = {k: v for k, v in os.environ.items() if k not in heap.ENV_SETTINGS}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout


def faults_per_step(mode: str) -> float:
    return float(run_clean("-c", STEP_SCRIPT, mode).split()[-1])


def test_kept_memory_is_reused_without_page_faults():
    # glibc's defaults give most of the 64 MiB back every step and fault it in again (measured here:
    # 12,769 minor faults per step of its 16,384 pages); kept, the steady state takes none
    assert faults_per_step("default") > 0.25 * PAGES_PER_STEP
    assert faults_per_step("keep") < 0.01 * PAGES_PER_STEP


def test_a_users_malloc_settings_are_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert heap.keep_freed_memory() is False
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "131072"
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ


def test_child_processes_are_asked_for_the_same():
    # glibc reads the variables when a process starts: the profiler's spawned groups and torchrun's
    # workers allocate like the process that asked
    script = "import os; from launch.runtime.heap import keep_freed_memory as k; print(k(), k(), " \
        "os.environ['MALLOC_MMAP_THRESHOLD_'], os.environ['MALLOC_TRIM_THRESHOLD_'])"
    first, second, mmap_threshold, trim_threshold = run_clean("-c", script).split()
    assert (first, second) == ("True", "False")  # the second call finds them set
    assert int(mmap_threshold) == 32 * 2**20  # glibc's largest on 64-bit
    assert int(trim_threshold) == 2**31 - 1
