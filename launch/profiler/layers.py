"""``ppplan profile``: time and size the runtime's own layers on this machine.

For each layer kind (embedding, transformer layer, final norm + logits + loss) and
each (tp, mbs, seq_len, recompute) of the grid, after ``warmup`` untimed iterations,
``repeats`` iterations time F, B (input gradient only), W (weight gradient only) and
the unsplit backward (``launch.profiler.cases``); the file holds medians with the
inter-quartile range. Memory, in an untimed pass: parameter bytes; activation bytes
= distinct storages autograd saves for backward (``saved_tensors_hooks``, parameters
excluded; the same count on CPU and GPU); transient peak = peak bytes live during
F, B and W above the level before F, less the activations (CUDA allocator on GPU, a
storage-tracking dispatch mode on CPU).

TP > 1 is timed as the TP-sharded shapes on one device (an approximation the file
states: no TP communication, no DTensor overhead; the planner adds the communication
from the alpha–beta model), or with ``tp_group`` in a real TP group of processes
running the runtime's DTensor plan (``launch.profiler.group``). torch is imported
lazily here, and only in ``profiles.profiler_*`` and ``launch.runtime``.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from costmodels.memory import ActivationVariant, layer_activation_bytes
from costmodels.rules import context_degree_violations, tp_violations
from launch.profiler.pipelined import CROWDED_RANKS_PER_CORE
from launch.profiler.runtime import runtime_overheads
from launch.profiler.speed_probe import probe_samples_s
from launch.profiler.timeshare import DEFAULT_DURATION_S, timeshare_efficiency
from launch.runtime.heap import keep_freed_memory
from profiles.errors import PlanError
from profiles.profile_schema import HardwareFingerprint, LayerProfile, ProfileFile, TimeSharePoint, model_shape_hash
from profiles.schema import ModelSpec

PRECISIONS = ("fp32", "bf16")  # what the runtime runs: fp32, or bf16 under FSDP2's mixed precision
RECOMPUTE_KINDS = ("none", "selective", "full")
# The thread CPU clock times a layer only where it resolves this finely (else the profile times wall clock).
THREAD_CLOCK_MAX_RESOLUTION_S = 1e-6


@dataclass(frozen=True)
class ProfileSettings:
    """What to measure: every ``tp`` x ``seq_len`` x ``mbs`` (x ``recompute`` for transformer layers)."""

    device: str = "cpu"
    tps: tuple[int, ...] = (1, 2, 4)
    mbss: tuple[int, ...] = (1, 2, 4)
    seq_lens: tuple[int, ...] = ()
    recomputes: tuple[str, ...] = RECOMPUTE_KINDS
    precision: str = "fp32"
    warmup: int = 2
    repeats: int = 7
    num_threads: int | None = None
    tp_group: bool = False
    sequence_parallel: bool = True  # with tp_group: the tp > 1 points also with sequence parallelism
    cluster: str | None = None
    timeshare_s: float = DEFAULT_DURATION_S  # per point of the time-sharing measurement (CPU; 0: skip it)
    crowded: tuple[int, ...] = CROWDED_RANKS_PER_CORE  # ranks per core of the crowded pipelines (CPU; (): skip them)
    cps: tuple[int, ...] = (1,)  # > 1: transformer layers also timed on a rank of a real ring of cp processes (tp 1)
    runtime_costs: bool = True  # CPU: also time the runtime's own costs (launch/profiler/runtime.py); False: layers only

    @property
    def times_runtime(self) -> bool:
        """Whether the profile measures the runtime's own costs: on CPU unless asked not to (on a GPU the
        host runs ahead of the kernels: nothing to add, costmodels.runtime_costs)."""
        return self.device == "cpu" and self.runtime_costs

    @property
    def threads(self) -> int | None:
        """Intra-op threads: as given, else 1 on CPU (torchrun's OMP_NUM_THREADS=1 per process), else torch's."""
        return self.num_threads or (1 if self.device == "cpu" else None)

    @property
    def timer(self) -> str:
        """Thread CPU time on one CPU thread (other processes on a shared machine do not inflate it) where the
        platform's thread clock resolves ``THREAD_CLOCK_MAX_RESOLUTION_S`` (Linux: 1 ns; Windows' ticks 15.6 ms
        and would time a small layer at 0 s); wall time otherwise, and in a TP group or a ring (waiting for a
        collective is part of the time)."""
        grouped = self.tp_group or max(self.cps) > 1
        fine = time.get_clock_info("thread_time").resolution <= THREAD_CLOCK_MAX_RESOLUTION_S
        return "thread_cpu" if self.device == "cpu" and self.threads == 1 and not grouped and fine else "wall"


def check_settings(model: ModelSpec, settings: ProfileSettings) -> None:
    """Reject what cannot be profiled, with the fix in the message (no torch needed)."""
    if model.is_mla:
        raise PlanError(f"ppplan profile times the runtime's layers; {model.name} has multi-head latent attention, "
                        "which the runtime does not run: plan it with the roofline (no --profile)")
    if settings.precision not in PRECISIONS:
        raise PlanError(f"cannot profile precision '{settings.precision}': the runtime runs {' or '.join(PRECISIONS)}")
    for tp in settings.tps:
        problems = tp_violations(model, tp)
        if problems:
            raise PlanError(f"--{problems[0]}")
    for cp in settings.cps:
        for seq in settings.seq_lens or (model.seq_len,):
            problems = context_degree_violations(seq, cp)
            if problems:
                raise PlanError(f"--{problems[0]}")
    bad = [r for r in settings.recomputes if r not in RECOMPUTE_KINDS]
    if bad or not settings.recomputes:
        raise PlanError(f"unknown recompute '{bad[0] if bad else ''}': use {'|'.join(RECOMPUTE_KINDS)}")
    if settings.warmup < 0 or settings.repeats < 2:
        raise PlanError("--repeats must be at least 2 and --warmup at least 0")


def layer_kinds(model: ModelSpec) -> tuple[str, ...]:
    """The transformer-layer kinds ``model`` has: dense layers, mixture-of-experts layers, or both."""
    if not model.is_moe:
        return ("transformer",)
    return ("transformer", "moe_transformer") if model.first_dense_layers else ("moe_transformer",)


def grid(model: ModelSpec, settings: ProfileSettings) -> list[Any]:
    """Every measurement: per (tp, seq, mbs) the embedding, each layer kind with each recompute kind
    (a mixture-of-experts model's routed experts alone too, without recompute), the head, and in a TP
    group (``tp_group``, tp > 1) the embedding, layers and head again with sequence parallelism; per
    ring of cp > 1 its rank's layers at tp 1 (``--cp``) and all of the above at the rank's seq_len / cp."""
    from launch.profiler.cases import GridPoint

    points = []
    for tp in settings.tps:
        for seq in settings.seq_lens or (model.seq_len,):
            for mbs in settings.mbss:
                points += _pieces(model, settings, tp, mbs, seq)
                points += _sequence_parallel_pieces(model, settings, tp, mbs, seq)
    for cp in (c for c in settings.cps if c > 1):
        for seq in settings.seq_lens or (model.seq_len,):
            for mbs in settings.mbss:  # rings at tp 1; every piece also alone at the rank's seq / cp positions
                for kind in layer_kinds(model):
                    points += [GridPoint(kind, 1, mbs, seq, rc, cp) for rc in settings.recomputes]
                for tp in settings.tps:
                    points += _pieces(model, settings, tp, mbs, seq // cp)
    return list(dict.fromkeys(points))  # a rank's seq / cp may be a measured seq_len already


def _pieces(model: ModelSpec, settings: ProfileSettings, tp: int, mbs: int, seq: int) -> list[Any]:
    """The points of one (tp, mbs, seq): the embedding, each layer kind with each recompute kind, the
    routed experts alone, the head. At a ring rank's seq / cp positions they are its work without the
    ring (``ProfiledTimes`` prices a ring at a tp it was not timed at from them)."""
    from launch.profiler.cases import GridPoint

    points = [GridPoint("embedding", tp, mbs, seq)]
    for kind in layer_kinds(model):
        points += [GridPoint(kind, tp, mbs, seq, rc) for rc in settings.recomputes]
    if model.is_moe:
        points.append(GridPoint("experts", tp, mbs, seq))
    return [*points, GridPoint("head", tp, mbs, seq)]


def _sequence_parallel_pieces(model: ModelSpec, settings: ProfileSettings, tp: int, mbs: int, seq: int) -> list[Any]:
    """The embedding, each layer kind with each recompute kind, and the head with sequence parallelism, in a TP
    group of ``tp`` > 1 (``settings.tp_group`` and ``settings.sequence_parallel``): their all-gathers,
    reduce-scatters and norms on ``seq / tp`` positions, which a plan with sequence parallelism runs and the
    points without it do not (``bench/e2e_cpu.py`` measured such plans on gloo 11-23 % slower than the points
    without it priced them). The routed experts alone are not: ``ProfiledTimes`` scales them by the excess
    load of expert parallelism, which sequence parallelism leaves as it is."""
    if not (settings.tp_group and settings.sequence_parallel) or tp == 1 or seq % tp:
        return []
    pieces = _pieces(model, settings, tp, mbs, seq)
    return [dataclasses.replace(p, sequence_parallel=True) for p in pieces if p.kind != "experts"]


def timed_in_group(point: Any, settings: ProfileSettings) -> bool:
    """Whether ``point`` is timed by a group of processes (a TP group, or a ring) rather than here."""
    return point.group_only or (settings.tp_group and point.tp > 1)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise PlanError("profiling needs torch: pip install -e .[runtime]") from None
    return torch


def check_device(device: str, processes: int = 1) -> None:
    """``cpu`` or ``cuda`` with CUDA present (and ``processes`` GPUs for a TP group)."""
    if device not in ("cpu", "cuda"):
        raise PlanError(f"unknown device '{device}': use cpu or cuda")
    torch = _torch()
    if device == "cuda" and not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise PlanError(f"--device cuda but CUDA is not available ({why}, torch {torch.__version__}); use --device cpu")
    if device == "cuda" and torch.cuda.device_count() < processes:
        raise PlanError(f"--tp-group with tp={processes} needs {processes} GPUs, {torch.cuda.device_count()} visible")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _driver_version() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def hardware_fingerprint(device: str) -> HardwareFingerprint:
    torch = _torch()
    cuda = device == "cuda"
    return HardwareFingerprint(
        device_kind="cuda" if cuda else "cpu",
        device_name=torch.cuda.get_device_name(0) if cuda else "cpu",
        torch_version=torch.__version__,
        cuda_version=torch.version.cuda,
        driver_version=_driver_version() if cuda else None,
        cpu_model=_cpu_model(),
        num_threads=torch.get_num_threads(),
    )


def approximation_notes(settings: ProfileSettings, threads: int) -> list[str]:
    notes = [
        "B and W split as torch.distributed.pipelining's zero-bubble stages split them; "
        "the embedding has no input gradient, so its whole backward is W",
    ]
    if not (settings.tp_group and settings.sequence_parallel):
        notes.append("sequence parallelism is not profiled: SP plans use these times (norms and residuals unsharded)")
    if settings.tp_group:
        notes.append("tp > 1 timed in a real TP group of processes on this machine with the runtime's DTensor plan: "
                     "F and B include the TP collectives (tp_comm_included); memory from the sharded shapes on one device")
        if settings.sequence_parallel:
            notes.append("tp > 1 also timed with sequence parallelism (sequence_parallel): all-gathers and reduce-scatters "
                         "in F and B, norms on seq / tp positions; their memory measured in the group")
    else:
        notes += [
            "tp > 1: the TP-sharded shapes of one rank timed on one device; no TP communication "
            "(the planner adds it from the alpha-beta model or the comm profile) and no DTensor overhead",
            "tp > 1 head: vocab/tp logits copied tp times to the full vocabulary (the runtime all-gathers them) before the loss",
        ]
    if settings.device == "cpu":
        notes.append(f"CPU, {threads} intra-op thread(s) per process; torchrun sets OMP_NUM_THREADS=1 for several processes")
    if settings.timer == "thread_cpu":
        notes.append("timed in thread CPU time (one thread): the uncontended time, not inflated by other processes")
    return notes


def _entry(point: Any, precision: str, stats: dict[str, tuple[float, float]], memory: tuple[int, int, int], repeats: int, in_group: bool) -> LayerProfile:
    """One grid point's profile entry; a forward or backward whose median is not above 0 s (a clock coarser
    than the layer) is refused by name instead of failing the profile's validation."""
    for name in ("forward", "backward"):
        if not stats[name][0] > 0:
            raise PlanError(f"{point.label}: its {name} timed {stats[name][0]:g} s (median of {repeats}): the clock "
                            "is coarser than the layer; profile larger shapes (--mbs, --seq-len)")
    activation, parameters, peak = memory
    return LayerProfile(
        kind=point.kind, tp=point.tp, mbs=point.mbs, seq_len=point.seq_len, recompute=point.recompute, precision=precision,
        forward_s=stats["forward"][0], forward_iqr_s=stats["forward"][1],
        backward_input_s=stats["backward_input"][0], backward_input_iqr_s=stats["backward_input"][1],
        backward_weight_s=stats["backward_weight"][0], backward_weight_iqr_s=stats["backward_weight"][1],
        backward_s=stats["backward"][0], backward_iqr_s=stats["backward"][1],
        repeats=repeats, activation_bytes=activation, parameter_bytes=parameters,
        transient_peak_bytes=max(0, peak - activation), tp_comm_included=in_group, cp=point.cp,
        sequence_parallel=point.sequence_parallel,
    )  # fmt: skip


def interleaves(model: ModelSpec, settings: ProfileSettings) -> bool:
    """Time the CPU points of one process round-robin (one iteration of each per round) so that every
    point samples the machine's drift and background load alike, when those cases fit in memory at once
    (< 2 GiB by the cost model's activation formula, twice for the gradients). Points timed in a TP group
    or a ring are timed there, a group at a time.

    Timed one point after another instead, a shared 2-core VM's drift between points goes into their
    ratios: three back-to-back profiles of tiny-gpt's layer (tp 1, mbs 1, 2, 4, 8) spread 9-46 % per
    sequence within one profile (one read 18.2, 14.8, 12.7, 12.5 ms; an older one had mbs 2 at two thirds
    of mbs 1), three round-robin ones 19-22 %, with mbs 1 always the dearest per sequence."""
    return fits_together(model, settings, [p for p in grid(model, settings) if not timed_in_group(p, settings)])


def fits_together(model: ModelSpec, settings: ProfileSettings, points: list) -> bool:
    """Whether ``points`` can be built at once and timed round-robin: on CPU, under 2 GiB of
    activations by the cost model's formula (twice, for the gradients). A TP group or a ring asks
    this of its own points (``_time_groups``)."""
    if settings.device != "cpu":
        return False
    variant = ActivationVariant.runtime(settings.precision, device="cpu")
    total = sum(2 * layer_activation_bytes(model, p.seq_len, p.mbs, p.tp, False, "none", variant) for p in points)
    return total < 2 * 2**30


def num_steps(model: ModelSpec, settings: ProfileSettings) -> int:
    """How many times ``profile_model`` calls ``progress``."""
    points = grid(model, settings)
    runtime = int(settings.times_runtime)  # the runtime's overheads (launch/profiler/runtime.py)
    rounds = settings.warmup + settings.repeats if interleaves(model, settings) else 0
    here = sum(not p.group_only for p in points)  # sized here (group-only points are sized in their group)
    return here + rounds + sum(timed_in_group(p, settings) for p in points) + runtime


def _time_round_robin(built: dict[int, Any], settings: ProfileSettings, clock: Any, say: Callable[[str], None]) -> dict[int, dict]:
    from launch.profiler import cases

    return cases.time_round_robin(built, settings.warmup, settings.repeats, lambda: None, clock,
                                  on_round=lambda r, n: say(f"round {r} of {n} over {len(built)} points"))


def profile_model(
    model: ModelSpec, settings: ProfileSettings, progress: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> ProfileFile:
    """Measure every grid point into a ``ProfileFile``; ``progress(label)`` once per step (``num_steps``);
    ``on_warning`` hears of a TP group restarted after a gloo abort (also kept in the profile's notes)."""
    from launch.profiler import cases

    check_settings(model, settings)
    check_device(settings.device, max(settings.tps) if settings.tp_group else 1)
    keep_freed_memory()  # this process and the groups it spawns allocate as the runtime's ranks do
    torch = _torch()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    say = progress or (lambda label: None)
    points = grid(model, settings)
    sync = torch.cuda.synchronize if settings.device == "cuda" else (lambda: None)
    clock = time.thread_time if settings.timer == "thread_cpu" else time.perf_counter
    together = interleaves(model, settings)
    probes = probe_samples_s(clock) if settings.device == "cpu" else []  # the machine's speed now (speed_probe.py)
    results: dict[int, tuple[dict, tuple[int, int, int]]] = {}
    built: dict[int, Any] = {}
    for index, point in enumerate(points):
        if point.group_only:  # built, timed and sized in its ring or TP group (_time_groups)
            continue
        in_group = timed_in_group(point, settings)
        say(point.label + (" (memory)" if in_group or together else ""))
        case = cases.make_case(model, point, settings.precision, settings.device)
        stats = {} if in_group or together else cases.time_case(case, settings.warmup, settings.repeats, sync, clock)
        results[index] = (stats, cases.memory_of(case, settings.device))
        if together and not in_group:
            built[index] = case
    if together:
        timed = _time_round_robin(built, settings, clock, say)
        results = {i: (timed.get(i, stats), memory) for i, (stats, memory) in results.items()}  # group points: timed below
    retries: list[str] = []

    def retried(message: str) -> None:
        retries.append(message)
        (on_warning or logging.getLogger(__name__).warning)(message)

    if any(timed_in_group(p, settings) for p in points):
        _time_groups(model, settings, points, results, progress, retried)
    runtime = None
    if settings.times_runtime:
        say("runtime: pipeline action (one rank, two-rank and crowded pipelines) and FSDP overheads")
        mbs, seq = min(settings.mbss), points[0].seq_len
        measured = timeshare_efficiency(duration_s=settings.timeshare_s) if settings.timeshare_s > 0 else []
        sharing = [TimeSharePoint(processes_per_core=k, efficiency=e) for k, e in measured]
        crowded_mbss = tuple(sorted({min(settings.mbss), max(settings.mbss)}))  # the grid's ends: priced between them
        runtime = runtime_overheads(model, mbs, seq, settings.warmup, settings.repeats, clock, settings.crowded, crowded_mbss)
        speed = statistics.median(probes + probe_samples_s(clock))
        runtime = runtime.model_copy(update={"speed_probe_s": speed, "timeshare_efficiency": sharing})
    hardware = hardware_fingerprint(settings.device)
    entries = [
        _entry(p, settings.precision, results[i][0], results[i][1], settings.repeats, timed_in_group(p, settings) and p.tp > 1)
        for i, p in enumerate(points)
    ]
    return ProfileFile(
        model=model, model_shape_hash=model_shape_hash(model), precision=settings.precision,
        cluster=settings.cluster, hardware=hardware, warmup_iterations=settings.warmup, timer=settings.timer,
        approximation=approximation_notes(settings, hardware.num_threads) + retries, layers=entries, runtime=runtime,
    )


def _time_groups(
    model: ModelSpec, settings: ProfileSettings, points: list, results: dict, progress: Callable | None,
    on_retry: Callable[[str], None] | None = None,
) -> None:
    """Fill in the times of every point a group times: tp > 1 (``--tp-group``) from a real TP group of
    that degree (a sequence-parallel point's memory too), and every cp > 1 point (times and memory) from a
    ring of that many processes."""
    from launch.profiler.group import time_in_tp_group

    opts = {"device": settings.device, "precision": settings.precision, "warmup": settings.warmup,
            "repeats": settings.repeats, "threads": settings.threads}  # fmt: skip

    def done(index: int, stats: dict, memory: tuple[int, int, int] | None = None) -> None:
        results[index] = (stats, memory if memory is not None else results[index][1])
        if progress:
            progress(points[index].label + (" (ring)" if points[index].cp > 1 else " (TP group)"))

    grouped = [(i, p) for i, p in enumerate(points) if timed_in_group(p, settings)]
    for size in sorted({p.group_size for _, p in grouped}):
        mine = [(i, p) for i, p in grouped if p.group_size == size]
        together = fits_together(model, settings, [p for _, p in mine])
        time_in_tp_group(model, size, mine, {**opts, "round_robin": together}, done, on_retry)
