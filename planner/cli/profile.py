"""``ppplan profile`` and ``ppplan profile-comm``: measure this machine into profile files.

torch is imported inside the commands only (through ``launch.profiler.layers`` and
``launch.profiler.comm``), so ``search`` and ``evaluate`` run without it.
Progress goes to stderr; the summary table to stdout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from costmodels.compute import default_precision
from costmodels.rules import tp_violations
from planner.cli.app import app, comma_list, err, out, output_option, small_int, warn
from profiles.errors import PlanError, quoted
from profiles.files import check_outputs, check_writable, write_atomic
from profiles.limits import MAX_COMM_BYTES, MAX_COMM_PROCESSES, MAX_PROFILE_REPEATS
from profiles.loader import load_cluster, load_model
from profiles.profile_schema import ProfileFile

DEFAULT_TPS = (1, 2, 4)


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4); every value a positive integer."""
    try:
        values = tuple(small_int(part) for part in comma_list(text, option))
    except ValueError:
        raise PlanError(f"{option} takes comma-separated integers, got '{quoted(text)}'") from None
    if not values or min(values) < 1:
        raise PlanError(f"{option} takes positive integers, got '{quoted(text)}'")
    return tuple(sorted(set(values)))


def _crowded_loads(text: str) -> tuple[int, ...]:
    """``--crowded``: ranks per core above one (one rank per core is the two-rank pipeline's)."""
    loads = parse_ints(text, "--crowded")
    if min(loads) < 2:
        raise PlanError(f"--crowded takes ranks per core of 2 or more, or 'none', got '{text}'")
    return loads


def _default_precision(device: str, cluster_spec) -> str:
    if cluster_spec is not None:
        return default_precision(cluster_spec)
    return "bf16" if device == "cuda" else "fp32"


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err, transient=True,
    )


def _summary(profile: ProfileFile) -> Table:
    table = Table(title=f"{profile.model.name} on {profile.hardware.device_name} ({profile.precision})")
    for column in ("kind", "tp", "sp", "cp", "mbs", "seq", "recompute", "F ms", "B ms", "W ms", "B+W unsplit ms", "saved MiB"):
        table.add_column(column, justify="left" if column in ("kind", "recompute") else "right")
    for e in profile.layers:
        table.add_row(
            e.kind, str(e.tp), "yes" if e.sequence_parallel else "", str(e.cp), str(e.mbs), str(e.seq_len), e.recompute,
            *(f"{x * 1e3:.3f}" for x in (e.forward_s, e.backward_input_s, e.backward_weight_s, e.backward_s)),
            f"{e.activation_bytes / 2**20:.2f}",
        )
    return table


@app.command()
def profile(
    model: str = typer.Option(..., "--model", help="preset name, our YAML/JSON, or an HF config.json"),
    out_path: Path = output_option(..., "--out", help="profile file to write (JSON)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    tp: Optional[str] = typer.Option(None, "--tp", help="TP degrees to time [default: those of 1,2,4 that divide the model]"),
    mbs: str = typer.Option("1,2,4", "--mbs", help="microbatch sizes"),
    seq_len: Optional[str] = typer.Option(None, "--seq-len", help="sequence length(s) [default: the model's]"),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32|bf16 [default: bf16 where the cluster (or a GPU) has it, else fp32]"),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="the cluster this profile stands for (recorded; sets the default precision)"),
    recompute: str = typer.Option("none,selective,full", "--recompute", help="recompute kinds to time transformer layers with"),
    warmup: int = typer.Option(2, "--warmup", min=0, max=MAX_PROFILE_REPEATS, help="untimed iterations per measurement"),
    repeats: int = typer.Option(7, "--repeats", min=2, max=MAX_PROFILE_REPEATS, help="timed iterations per measurement (median and IQR)"),
    tp_group: bool = typer.Option(
        False, "--tp-group", help="time tp > 1 in a real TP group of processes (the runtime's DTensor plan; includes TP communication)"
    ),
    sequence_parallel: bool = typer.Option(
        True, "--sequence-parallel/--no-sequence-parallel",
        help="with --tp-group: also time tp > 1 with sequence parallelism, which plans with it are priced from",
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, max=MAX_COMM_PROCESSES,
        help="torch intra-op threads [default: 1 on cpu, as each torchrun process runs; torch's on cuda]",
    ),
    timeshare_s: float = typer.Option(
        2.5, "--timeshare-s", min=0.0, max=600.0,
        help="cpu: seconds per point of the time-sharing measurement (2x and 4x as many processes as cores; 0 skips it)",
    ),
    crowded: str = typer.Option(
        "2,4", "--crowded",
        help="cpu: ranks per core of the crowded pipelines timed (more ranks than cores, at the smallest and largest "
        "--mbs; 'none' skips them)",
    ),
    cp: str = typer.Option("1", "--cp", help="context-parallel degrees: > 1 also times the layers on a rank of a real ring of that many processes (tp 1)"),
    layers_only: bool = typer.Option(
        False, "--layers-only",
        help="cpu: time the layers only, not the runtime's own costs (pipeline actions, FSDP, time-sharing); "
        "search then prices those with the stack's figures",
    ),
) -> None:
    """Time forward, backward-input and backward-weight of each layer kind and size its memory."""
    from launch.profiler import layers as profiler

    if device not in ("cpu", "cuda"):  # before loading anything
        raise PlanError(f"unknown device '{device}': use cpu or cuda")
    spec = load_model(model)
    cluster_spec = load_cluster(cluster) if cluster else None
    tps = parse_ints(tp, "--tp") if tp is not None else tuple(t for t in DEFAULT_TPS if not tp_violations(spec, t))
    settings = profiler.ProfileSettings(
        device=device, tps=tps, mbss=parse_ints(mbs, "--mbs"),
        seq_lens=parse_ints(seq_len, "--seq-len") if seq_len is not None else (),
        recomputes=tuple(comma_list(recompute, "--recompute")),
        precision=precision or _default_precision(device, cluster_spec),
        warmup=warmup, repeats=repeats, num_threads=threads, tp_group=tp_group, sequence_parallel=sequence_parallel,
        cluster=cluster_spec.name if cluster_spec else None,
        timeshare_s=timeshare_s, cps=parse_ints(cp, "--cp"), runtime_costs=not layers_only,
        crowded=() if crowded.strip().lower() == "none" else _crowded_loads(crowded),
    )
    profiler.check_settings(spec, settings)
    check_outputs(out_path, inputs=(model, cluster))
    profiler.check_device(device, max(max(settings.tps) if tp_group else 1, max(settings.cps)))
    start = time.perf_counter()
    with _progress() as bar:
        task = bar.add_task("profiling", total=profiler.num_steps(spec, settings))
        result = profiler.profile_model(
            spec, settings, lambda label: bar.update(task, description=label, advance=1), on_warning=warn
        )
    write_atomic(out_path, result.model_dump_json(indent=2) + "\n")
    out.print(_summary(result))
    out.print(f"wrote {out_path}: {len(result.layers)} measurements in {time.perf_counter() - start:.1f} s", markup=False)


@app.command("profile-comm")
def profile_comm(
    out_path: Path = output_option(..., "--out", help="comm profile to write (JSON)"),
    nproc: int = typer.Option(2, "--nproc", max=MAX_COMM_PROCESSES, help="processes (ranks) in the group"),
    backend: str = typer.Option("gloo", "--backend", help="gloo or nccl"),
    min_bytes: str = typer.Option("1KiB", "--min-bytes", help="smallest message"),
    max_bytes: str = typer.Option("256MiB", "--max-bytes", help="largest message (lower it for short CPU runs)"),
    warmup: int = typer.Option(1, "--warmup", min=0, max=MAX_PROFILE_REPEATS, help="untimed repetitions per size"),
    repeats: int = typer.Option(5, "--repeats", min=1, max=MAX_PROFILE_REPEATS, help="timed repetitions per size (fewer once a size took 1 s)"),
) -> None:
    """Time all-reduce, reduce-scatter, all-gather and p2p between local processes; fit alpha-beta."""
    from launch.profiler import comm as comm_profiler

    settings = comm_profiler.CommSettings(
        nproc=nproc, backend=backend, min_bytes=comm_profiler.parse_bytes(min_bytes),
        max_bytes=comm_profiler.parse_bytes(max_bytes), warmup=warmup, repeats=repeats,
    )
    if settings.max_bytes > MAX_COMM_BYTES:
        raise PlanError(f"--max-bytes {max_bytes} is above the cap of {MAX_COMM_BYTES // 2**30} GiB")
    comm_profiler.message_sizes(settings.min_bytes, settings.max_bytes)
    check_writable(out_path)
    comm_profiler.check_comm_settings(settings)
    with _progress() as bar:
        task = bar.add_task("starting processes", total=None)

        def advance(done: int, total: int, label: str) -> None:
            bar.update(task, description=label, completed=done, total=total)

        result = comm_profiler.profile_comm(settings, advance)
    write_atomic(out_path, result.model_dump_json(indent=2) + "\n")
    table = Table(title=f"{backend}, {nproc} processes: alpha-beta fits")
    for column in ("tier", "collective", "latency us", "bandwidth GB/s", "rms rel. error"):
        table.add_column(column)
    for tier in result.tiers:
        for name, fit in [("all", tier.overall), *tier.per_collective.items()]:
            table.add_row(tier.tier, name, f"{fit.latency_us:.1f}", f"{fit.bandwidth_gbs:.3f}", f"{fit.rms_relative_error:.2f}")
    out.print(table)
    out.print(f"wrote {out_path}", markup=False)
