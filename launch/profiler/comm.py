"""``ppplan profile-comm``: time collectives between N local processes and fit alpha–beta.

N processes (``torch.multiprocessing``, spawn) join one gloo or NCCL group and time
all-reduce, reduce-scatter, all-gather and p2p over message sizes from ``min_bytes``
to ``max_bytes`` (powers of 4 from 1 KiB; 1 KiB .. 256 MiB by default). Every
repetition starts after a barrier and is timed on rank 0; p2p is a ping-pong between
ranks 0 and 1, halved. ``size_bytes`` follows ``costmodels.comm``: the all-reduce
buffer, the reduce-scatter input, the all-gather output, the p2p message.

The fit is least squares on relative residuals of the ring formulas that
``costmodels.comm`` prices (Thakur, Rabenseifner & Gropp 2005): all-reduce
``2(g−1)·α + 2(g−1)/g·n/β``, reduce-scatter and all-gather ``(g−1)·α + (g−1)/g·n/β``,
p2p ``α + n/β``; one fit per collective and one over all of them (the tier's link).
Processes on one node measure the ``intra_node`` tier only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np

from profiles.errors import PlanError, quoted
from profiles.profile_schema import COLLECTIVES, AlphaBetaFit, CollectiveMeasurement, CommProfile, TierFit

KIB = 1024
MIB = 1024 * KIB
DEFAULT_MAX_BYTES = 256 * MIB
TIME_BUDGET_PER_SIZE_S = 1.0  # stop repeating a size once this much time went into it (min 3 repeats)
MIN_INV_BANDWIDTH = 1e-15  # s/byte (1 PB/s): a latency-only fit when bandwidth cannot be resolved


@dataclass(frozen=True)
class CommSettings:
    nproc: int = 2
    backend: str = "gloo"
    min_bytes: int = KIB
    max_bytes: int = DEFAULT_MAX_BYTES
    warmup: int = 1
    repeats: int = 5


MAX_MESSAGE_BYTES = 1024**4  # 1 TiB: above any GPU's memory, so above any message a collective of it sends


def parse_bytes(text: str) -> int:
    """'1048576', '64KiB', '1MiB', '256M', '1G' -> bytes (binary multiples)."""
    units = {"": 1, "k": KIB, "kb": KIB, "kib": KIB, "m": MIB, "mb": MIB, "mib": MIB, "g": 1024 * MIB, "gb": 1024 * MIB, "gib": 1024 * MIB}
    shown = quoted(text, 24)
    raw = text.strip().lower()
    digits = raw.rstrip("kmgib")
    try:
        value = float(digits) * units[raw[len(digits):]]
    except (ValueError, KeyError):
        raise PlanError(f"cannot read a byte size from '{shown}': use e.g. 1048576, 64KiB, 1MiB") from None
    if not math.isfinite(value) or value > MAX_MESSAGE_BYTES:
        raise PlanError(f"byte size '{shown}' is not a size up to 1 TiB: no collective's message on a GPU is larger")
    if value < 1:
        raise PlanError(f"byte size '{shown}' must be at least 1")
    return int(value)


def message_sizes(min_bytes: int, max_bytes: int) -> list[int]:
    """Powers of 4 times ``min_bytes`` up to ``max_bytes`` (``max_bytes`` itself included)."""
    if max_bytes < min_bytes:
        raise PlanError(f"--max-bytes {max_bytes} is below the smallest size {min_bytes}")
    sizes = []
    size = min_bytes
    while size < max_bytes:
        sizes.append(size)
        size *= 4
    return sizes + [max_bytes]


def ring_coefficients(collective: str, group_size: int) -> tuple[float, float]:
    """(latency multiplier, bytes multiplier) of the ring formula in ``costmodels.comm``."""
    g = group_size
    if collective == "all_reduce":
        return 2.0 * (g - 1), 2.0 * (g - 1) / g
    if collective in ("reduce_scatter", "all_gather"):
        return float(g - 1), (g - 1) / g
    return 1.0, 1.0


def fit_alpha_beta(rows: list[CollectiveMeasurement]) -> AlphaBetaFit:
    """Least-squares alpha and 1/beta minimising relative residuals; alpha clamped at 0."""
    coeff = np.array([ring_coefficients(r.collective, r.group_size) for r in rows])
    sizes = np.array([r.size_bytes for r in rows], dtype=float)
    times = np.array([max(r.median_s, 1e-9) for r in rows])
    design = np.column_stack([coeff[:, 0], coeff[:, 1] * sizes]) / times[:, None]
    ones = np.ones_like(times)
    (alpha, inv_beta), *_ = np.linalg.lstsq(design, ones, rcond=None)
    if alpha < 0 or inv_beta <= 0:  # the constrained optimum lies on an axis: fit each term alone, keep the better
        candidates = []
        for col in (0, 1):
            column = design[:, col]
            value = float(column @ ones / (column @ column))
            params = (value, MIN_INV_BANDWIDTH) if col == 0 else (0.0, value)
            candidates.append((float(np.sum((design @ np.array(params) - ones) ** 2)), params))
        alpha, inv_beta = min(candidates)[1]
    predicted = coeff[:, 0] * alpha + coeff[:, 1] * sizes * inv_beta
    rms = float(np.sqrt(np.mean(((predicted - times) / times) ** 2)))
    return AlphaBetaFit(
        latency_us=float(alpha) * 1e6, bandwidth_gbs=1.0 / float(inv_beta) / 1e9, rms_relative_error=rms, num_points=len(rows)
    )


def fit_tier(measurements: list[CollectiveMeasurement], tier: str, group_size: int) -> TierFit:
    per = {c: fit_alpha_beta([m for m in measurements if m.collective == c]) for c in COLLECTIVES if any(m.collective == c for m in measurements)}
    return TierFit(tier=tier, group_size=group_size, overall=fit_alpha_beta(measurements), per_collective=per)


# -- the worker processes (torch) ---------------------------------------------------------


def _time_one(torch: Any, dist: Any, collective: str, size_bytes: int, rank: int, nproc: int, device: str) -> float:
    numel = max(nproc, size_bytes // 4 // nproc * nproc)
    run: Callable[[], Any]
    if collective == "all_reduce":
        buf = torch.ones(numel, device=device)
        run = partial(dist.all_reduce, buf)
    elif collective == "reduce_scatter":
        inp, out = torch.ones(numel, device=device), torch.empty(numel // nproc, device=device)
        run = partial(dist.reduce_scatter_single, out, inp)
    elif collective == "all_gather":
        inp, out = torch.ones(numel // nproc, device=device), torch.empty(numel, device=device)
        run = partial(dist.all_gather_single, out, inp)
    else:
        buf = torch.ones(numel, device=device)

        def run() -> None:
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            elif rank == 1:
                dist.recv(buf, 0)
                dist.send(buf, 0)

    dist.barrier()
    start = time.perf_counter()
    run()
    if device != "cpu":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return elapsed / 2 if collective == "p2p" else elapsed


def _worker(rank: int, settings: CommSettings, port: int, sizes: list[int], queue: Any) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    device = f"cuda:{rank}" if settings.backend == "nccl" else "cpu"
    if device != "cpu":
        torch.cuda.set_device(rank)
    dist.init_process_group(settings.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=settings.nproc)
    try:
        for collective in COLLECTIVES:
            for size in sizes:
                samples: list[float] = []
                spent = 0.0
                for i in range(settings.warmup + settings.repeats):
                    elapsed = _time_one(torch, dist, collective, size, rank, settings.nproc, device)
                    spent += elapsed
                    if i >= settings.warmup:
                        samples.append(elapsed)
                    stop = len(samples) >= 3 and spent > TIME_BUDGET_PER_SIZE_S
                    # every rank must agree on the repeat count: rank 0 decides
                    flag = torch.tensor([1.0 if stop else 0.0], device=device)
                    dist.broadcast(flag, 0)
                    if flag.item():
                        break
                if rank == 0:
                    q25, q50, q75 = np.percentile(samples, [25, 50, 75])
                    queue.put((collective, size, float(q50), float(q75 - q25), len(samples)))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def check_comm_settings(settings: CommSettings) -> None:
    if settings.backend not in ("gloo", "nccl"):
        raise PlanError(f"unknown backend '{settings.backend}': use gloo or nccl")
    if settings.nproc < 2:
        raise PlanError(f"--nproc {settings.nproc}: collectives need at least 2 processes")
    if settings.repeats < 1 or settings.warmup < 0:
        raise PlanError("--repeats must be at least 1 and --warmup at least 0")
    try:
        import torch
    except ImportError:
        raise PlanError("profile-comm needs torch: pip install -e .[runtime]") from None
    if settings.backend == "nccl" and torch.cuda.device_count() < settings.nproc:
        raise PlanError(f"--backend nccl needs {settings.nproc} CUDA devices, {torch.cuda.device_count()} visible; use --backend gloo")


def profile_comm(settings: CommSettings, progress: Callable[[int, int, str], None] | None = None) -> CommProfile:
    """Spawn ``nproc`` processes, measure, fit; ``progress(done, total, label)`` after each point."""
    check_comm_settings(settings)
    from launch.runtime.heap import keep_freed_memory

    keep_freed_memory()  # the spawned ranks allocate as the runtime's do
    from launch.profiler.group import free_port, spawn_and_collect
    from launch.profiler.layers import hardware_fingerprint

    sizes = message_sizes(settings.min_bytes, settings.max_bytes)
    total = len(sizes) * len(COLLECTIVES)
    rows: list[CollectiveMeasurement] = []

    def record(item: tuple) -> None:
        collective, size, median, iqr, repeats = item
        group = 2 if collective == "p2p" else settings.nproc
        rows.append(CollectiveMeasurement(
            collective=collective, group_size=group, size_bytes=size, median_s=median, iqr_s=iqr, repeats=repeats
        ))
        if progress:
            progress(len(rows), total, f"{collective} {size} B")

    spawn_and_collect(_worker, (settings, free_port(), sizes), settings.nproc, record, "profile-comm")
    hardware = hardware_fingerprint("cuda" if settings.backend == "nccl" else "cpu")
    return CommProfile(
        backend=settings.backend,
        nproc=settings.nproc,
        hardware=hardware.model_copy(update={"num_threads": 1}),
        measurements=rows,
        tiers=[fit_tier(rows, "intra_node", settings.nproc)],
    )


def predicted_s(fit: AlphaBetaFit, collective: str, group_size: int, size_bytes: int) -> float:
    """Time the fitted link gives a collective (for reports and tests)."""
    a, b = ring_coefficients(collective, group_size)
    return a * fit.latency_us * 1e-6 + b * size_bytes / (fit.bandwidth_gbs * 1e9)

