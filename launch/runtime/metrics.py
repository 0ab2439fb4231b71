"""Per-step metrics lines (DESIGN.md) and the peak-memory figure.

Lines are appended with one ``write`` on an ``O_APPEND`` descriptor, so lines
from several ranks never interleave and a step is on disk as soon as it ends:
a job that fails later keeps every completed step.

Peak memory: on CUDA, ``torch.cuda.max_memory_reserved`` (the caching
allocator's high-water mark: allocated bytes plus its fragmentation, which is
what the planner's memory model adds up). On CPU there is no allocator to ask;
the figure is the process's peak resident set size (``getrusage().ru_maxrss``)
minus its resident size when the plan started (after torch and the process group
were up), less the file-backed pages that appeared since (``RssFile`` of
``/proc/self/status``: shared-library code the first steps page in, ~20 MiB per
rank on cpu-local, which the planner counts in ``runtime_reserved_gib`` with the
rest of the runtime, like the CUDA context on a GPU). What remains is anonymous
memory: model, gradients, optimizer state, activations, communication buffers and
what glibc's heap keeps of freed blocks. File-backed pages only grow during a run
(code stays mapped), so their growth at the step's end is their growth at the peak.
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

import torch

GIB = 2**30


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line atomically (single write, O_APPEND) and flush it."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _current_rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _file_rss_bytes() -> int:
    """Resident file-backed pages (``RssFile``, proc(5)); 0 where /proc has no such line."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class PeakMemory:
    """Measures this rank's peak memory from the moment it is created."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.baseline_bytes = 0
        else:
            self.baseline_bytes = _current_rss_bytes()
            self.baseline_file_bytes = _file_rss_bytes()

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_reserved(self.device) / GIB
        code_pages = max(0, _file_rss_bytes() - self.baseline_file_bytes)
        return max(0, _peak_rss_bytes() - self.baseline_bytes - code_pages) / GIB


def metrics_record(
    *,
    step: int,
    rank: int,
    stage: int,
    loss: float | None,
    step_time_s: float,
    tokens_per_step: int,
    peak_memory_gib: float,
    predicted_step_time_s: float,
    predicted_peak_memory_gib: float,
) -> dict[str, Any]:
    """One metrics line; ``stage`` is the pipeline rank, ``loss`` is None off the loss stage.

    ``predicted_peak_memory_gib`` is like-for-like with ``peak_memory_gib``: the plan's peak
    less what the rank holds outside the allocator, its runtime's reserve and NCCL's buffers
    (``launch.compare.measurable_peak_memory_gib``)."""
    return {
        "step": step,
        "rank": rank,
        "stage": stage,
        "loss": loss,
        "step_time_s": step_time_s,
        "tokens_per_s": tokens_per_step / step_time_s if step_time_s > 0 else 0.0,
        "peak_memory_gib": peak_memory_gib,
        "predicted_step_time_s": predicted_step_time_s,
        "predicted_peak_memory_gib": predicted_peak_memory_gib,
    }
