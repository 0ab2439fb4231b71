"""CPU ranks keep the memory they free, as a GPU rank's caching allocator does.

On CPU, torch allocates tensors with glibc's ``malloc``, which gives freed memory back to the
kernel: blocks above the mmap threshold are unmapped on ``free``, and the top of the heap is
trimmed once more than the trim threshold is free (mallopt(3), ``M_MMAP_THRESHOLD``,
``M_TRIM_THRESHOLD``). The next allocation of that memory takes one minor page fault per 4 KiB page,
and the kernel zeroes each page. A pipeline step frees a microbatch's activations and, at its end,
the gradients (``zero_grad(set_to_none=True)``), so every step faults its memory in again.

Measured on cpu-local (2026-12-05, tiny-moe, tp1 pp8 GPipe mbs 4, each rank's thread counters
around each action, ``getrusage(RUSAGE_THREAD)``): each stage's first backward of a step took
4,000-6,100 minor faults (16-24 MiB) and 39-71 ms of CPU against 36-60 ms for its second, which
took about 1,000; the step ran 0.81-0.82 s (0.630 priced). With memory kept (this module) the same
backward took 0-5 faults and 35-43 ms, the step 0.71 s, and rank 0's peak resident memory
117.2 MiB against 117.6. The profiler times F, B and W back to back, where the allocator reuses the
same blocks, so its figures are the kept-memory ones: without this module the runtime ran slower
than its own profile said, by an amount no profile measures.

A GPU rank never pays this: torch's CUDA caching allocator keeps freed blocks for the next
allocation. Here the mmap threshold is fixed at glibc's largest (32 MiB on 64-bit,
``DEFAULT_MMAP_THRESHOLD_MAX``) and trimming is switched off, so the heap keeps its high-water mark:
the resident peak the memory model prices is unchanged (it is the high-water mark either way),
and tensors above 32 MiB are still mapped and unmapped as before.

Called by every rank at start (``launch.runtime.train``) and by the profiler's processes
(``launch.profiler``), so what is profiled and what runs allocate alike. The environment
variables glibc reads at start (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``) are set
for child processes too; a user's own values are kept.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX_BYTES = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: 4 MiB * sizeof(long)
NEVER_TRIM_BYTES = 2**31 - 1  # mallopt takes an int
ENV_SETTINGS = {"MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD_MAX_BYTES, "MALLOC_TRIM_THRESHOLD_": NEVER_TRIM_BYTES}


def keep_freed_memory() -> bool:
    """Keep freed memory in this process's heap (module docstring) and ask the same of its children;
    True where this call set both. A no-op off Linux and where either variable is already set (the
    user's, or a parent's that set them: glibc read them when this process started)."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in ENV_SETTINGS):
        return False
    for name, value in ENV_SETTINGS.items():
        os.environ[name] = str(value)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM_BYTES))
