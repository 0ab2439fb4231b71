"""Independent pricing jobs on every usable core: the fits of ``validate`` price each corpus row
hundreds of times and ``regress`` runs one search per golden case, each job on its own.

``process_map(n)`` yields a ``map`` that runs over ``n`` spawned processes (plain ``map`` for one):
results come back in order and do not depend on the number of processes. Spawned, not forked: the
calling process (a test run, say) may hold torch's threads, which a fork would copy mid-use.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

Mapper = Callable[[Callable, Iterable], Iterator]
CHUNKS_PER_WORKER = 4  # items are cut into this many chunks per process: balance against pickling


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def process_map(workers: int) -> Iterator[Mapper]:
    """A ``map(fn, items)`` over ``workers`` processes; ``fn`` and the items must pickle."""
    if workers <= 1:
        yield map
        return
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_ignore_interrupts)

    def mapped(fn: Callable, items: Iterable) -> Iterator:
        items = list(items)
        return iter(pool.map(fn, items, chunksize=max(1, len(items) // (CHUNKS_PER_WORKER * workers))))

    try:
        yield mapped
    except BaseException:
        pool.terminate()  # Ctrl-C or an error: the workers stop now, not after their chunk
        raise
    pool.close()
    pool.join()


def _ignore_interrupts() -> None:
    """Ctrl-C is the caller's to handle (one ``error:``-free line, exit 130): a worker that raised
    KeyboardInterrupt too would print its own traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
