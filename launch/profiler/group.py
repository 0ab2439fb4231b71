"""Time layers in a real group of processes: a tensor-parallel group (``ppplan profile --tp-group``)
or a context-parallel ring (``ppplan profile --cp``).

For each degree t > 1, t processes (spawned here; gloo on CPU, NCCL on t GPUs) build every
grid point of that degree, with the runtime's DTensor plan (``launch.runtime.tp``) or as one
rank of the runtime's ring attention (``launch.runtime.cp``), and time it after a barrier
(round-robin over the group's points, one iteration of each per round, where they fit in memory
at once: ``launch.profiler.layers.fits_together``); rank 0 reports (with its memory, a ring's
point and a layer with sequence parallelism: neither can run alone). The times then include the
collectives, the ring's transfers and the DTensor overhead that sharded shapes on one device leave
out. Wall clock: waiting for a collective is part of the time.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any, Callable

from profiles.errors import InfeasibleError
from profiles.schema import ModelSpec

Stats = dict[str, tuple[float, float]]


GROUP_ATTEMPTS = 3
GLOO_ABORT_CAUSE = (
    "a gloo worker thread still freeing a finished collective's tensors asks for the GIL while the "
    "interpreter finalizes; CPython's pthread_exit unwinds through a noexcept destructor: std::terminate"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_and_collect(worker: Callable[..., None], args: tuple, nprocs: int, on_item: Callable[[Any], None], what: str) -> None:
    """Run ``worker(rank, *args, queue)`` in ``nprocs`` spawned processes and pass every item
    they put on the queue to ``on_item`` as it arrives; a worker failure is an ``InfeasibleError``."""
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(worker, args=(*args, queue), nprocs=nprocs, join=False, start_method="spawn")

    def drain() -> None:
        while not queue.empty():
            on_item(queue.get())

    try:
        while not context.join(timeout=0.2):
            drain()
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        raise InfeasibleError(f"{what} failed: {str(exc).strip().splitlines()[-1]}") from None
    drain()


def _worker(rank: int, tp: int, port: int, model: ModelSpec, points: list, opts: dict[str, Any], queue: Any) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from launch.profiler.cases import make_case, memory_of, time_case, time_round_robin

    torch.set_num_threads(opts["threads"] or 1)
    cuda = opts["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=tp)
    try:
        mesh = init_device_mesh("cuda" if cuda else "cpu", (tp,))
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        device = f"cuda:{rank}" if cuda else "cpu"

        def build(point: Any) -> Any:
            if point.cp > 1:
                return make_case(model, point, opts["precision"], device, cp_group=mesh.get_group())
            return make_case(model, point, opts["precision"], device, tp_mesh=mesh)

        def report(index: int, point: Any, case: Any, stats: Stats) -> None:
            memory = None
            if point.group_only:  # a ring's or a sequence-parallel layer runs only in its group: sized here, every rank taking part
                dist.barrier()
                memory = memory_of(case, "cuda" if cuda else "cpu")
            if rank == 0:
                queue.put((index, stats, memory))

        if opts.get("round_robin"):  # every point built at once, one iteration of each per round
            built = {index: build(point) for index, point in points}
            timed = time_round_robin(built, opts["warmup"], opts["repeats"], sync, time.perf_counter, barrier=dist.barrier)
            for index, point in points:
                report(index, point, built[index], timed[index])
        else:
            for index, point in points:
                case = build(point)
                report(index, point, case, time_case(case, opts["warmup"], opts["repeats"], sync, time.perf_counter,
                                                     barrier=dist.barrier))
        dist.barrier()  # no rank tears gloo down while a peer still has traffic in flight
    finally:
        dist.destroy_process_group()
    exit_without_finalizing()


def exit_without_finalizing() -> None:
    """End a worker whose work is done (results already in the pipe) with ``os._exit``.

    Why (``GLOO_ABORT_CAUSE``, from a core dump of the abort): after the last barrier a
    ProcessGroupGloo worker thread may still be destroying a finished work object (the
    barrier holds the earlier collectives' tensors) while the main thread is already in
    ``Py_FinalizeEx``. Dropping a tensor that owns its Python object needs the GIL; a
    finalizing CPython makes any other thread that asks for it exit (``pthread_exit``),
    and that forced unwind crosses the work's ``noexcept`` destructor: ``std::terminate``,
    "terminate called without an active exception", SIGABRT. Seen only with DTensor /
    DeviceMesh tensors (3 of 120 rounds of a two-process repro; 0 of 150 with plain
    collectives); with ``os._exit`` there is no finalization to race (0 of 200)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def time_in_tp_group(
    model: ModelSpec, tp: int, points: list, opts: dict[str, Any], done: Callable[..., None],
    on_retry: Callable[[str], None] | None = None,
) -> None:
    """Time ``points`` (``(index, GridPoint)`` pairs, all of degree ``tp``) in a group of ``tp``
    processes; ``done(index, stats)`` as each finishes.

    Only a worker killed by SIGABRT is retried: gloo on CPU used to abort a worker as it
    exited ("terminate called without an active exception", ~1 run in 40 of a two-process
    group; ``exit_without_finalizing`` says why and removes the cause), after its points were
    timed but before the parent read them all. The group is started again for the points it had not reported, up to
    ``GROUP_ATTEMPTS`` times, and ``on_retry`` is told (the CLI prints it; the profile's
    notes keep it). Any other signal or a Python exception in a worker is not retried."""
    pending = dict(points)

    def record(item: tuple) -> None:
        pending.pop(item[0], None)
        done(*item)

    what = f"profiling in a TP group of {tp}"
    for attempt in range(1, GROUP_ATTEMPTS + 1):
        try:
            spawn_and_collect(_worker, (tp, free_port(), model, sorted(pending.items()), opts), tp, record, what)
            return
        except InfeasibleError as exc:
            if "signal SIGABRT" not in str(exc) or attempt == GROUP_ATTEMPTS or not pending:
                raise
            if on_retry is not None:
                on_retry(f"TP group of {tp}: a worker aborted (SIGABRT, gloo at process exit: {GLOO_ABORT_CAUSE}); "
                         f"started the group again for the {len(pending)} point(s) it had not reported "
                         f"(attempt {attempt + 1} of {GROUP_ATTEMPTS})")  # fmt: skip
