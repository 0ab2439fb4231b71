"""A pipeline whose ranks time-share fewer cores than they are: the same action lists as
``costmodels.simulator``, run under processor sharing.

On a CPU node every rank is a process and ``C`` cores serve them (``ClusterSpec.concurrent_ranks_per_node``);
Linux's fair scheduler gives each runnable process an equal share. A pipeline rank stands for all
its processes (its TP group's ranks in every data/context-parallel replica, which run the same list
at the same time); ``load[n][r]`` is how many cores pipeline rank r wants on node n while it
computes (``min(tp, C) / tp`` per process there). While the ranks of set A compute, node n is asked
for ``D_n = Σ_{r∈A} load[n][r]`` cores and a computing rank runs at ``min(1, C / D_n)`` of full
speed on its slowest node. A rank that waits for its input (a p2p receive or a collective) is
blocked and uses no core. Each action keeps its full-speed duration as work; the event loop advances to the
next completion or arrival and shares the cores among the ranks computing in between
(Kleinrock 1967, "Time-shared systems: a theoretical treatment", processor sharing as the limit of
round-robin with a small quantum). After its last action a rank runs its tail (optimizer step and
exposed gradient reduce) the same way.

It is never shorter than a node's total work over ``C`` nor than the plain simulation (every rank
at full speed), and prices the regime in between, where the plain simulation ignores that ranks
slow each other down.

A real scheduler loses part of the node to switching between processes (the switch and the next
process's cold caches): with ``efficiency`` points ``(k, e)`` measured by ``ppplan profile``
(``launch/profiler/timeshare.py``: total throughput of ``k·C`` processes over that of ``C``), a node
asked for ``D > C`` cores delivers ``C · e(D / C)`` of them, ``e`` linear between the points from
``e(1) = 1``, never above 1, held at the last point beyond it. With no points it is ideal sharing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from costmodels.rank_grid import RankGrid
from costmodels.schedules.actions import Schedule
from costmodels.simulator import StageTimes, duration_table, schedule_graph
from profiles.schema import ClusterSpec, ParallelConfig

EPS_S = 1e-12


def efficiency_curve(points: Sequence[tuple[float, float]]) -> Callable[[float], float]:
    """``e(x)`` of the measured points (module docstring), prepared once for the event loop: 1 at
    ``x <= 1`` and with no points, linear between the points from ``e(1) = 1``, held past the last."""
    xs, es = [1.0], [1.0]
    for k, e in sorted(points):
        if k > xs[-1]:
            xs.append(float(k))
            es.append(min(1.0, float(e)))

    def curve(oversubscription: float) -> float:
        if oversubscription <= 1.0 or len(xs) == 1:
            return 1.0
        if oversubscription >= xs[-1]:
            return es[-1]
        i = next(j for j in range(1, len(xs)) if xs[j] >= oversubscription)
        t = (oversubscription - xs[i - 1]) / (xs[i] - xs[i - 1])
        return es[i - 1] + t * (es[i] - es[i - 1])

    return curve


def shared_core_efficiency(points: Sequence[tuple[float, float]], oversubscription: float) -> float:
    """``e(x)``: the fraction of a node's cores that does work when ``x = D / C`` times as many are
    asked for (``efficiency_curve`` at one point)."""
    return efficiency_curve(points)(oversubscription)


def timeshared_makespan_s(schedule: Schedule, times: StageTimes, tails_s: list[float], cores: float,
                          load: list[list[float]], efficiency: Sequence[tuple[float, float]] = ()) -> float:
    """The step's makespan when the pipeline ranks share ``cores`` cores per node, pipeline rank r
    wanting ``load[n][r]`` of node n's (module docstring); ``tails_s[r]`` is rank r's work after
    its list; ``efficiency`` the measured time-sharing points (none: ideal sharing)."""
    graph = schedule_graph(schedule)
    efficiency_at = efficiency_curve(efficiency)
    n = graph.num_nodes
    duration = duration_table(times)[graph.kind_code, graph.stage].tolist()
    lag = np.append(np.asarray(times.p2p_s, dtype=float), 0.0)[graph.boundary].tolist()
    dep = graph.dep.tolist()
    starts = graph.rank_starts.tolist() + [n]
    order = graph.rank_major.tolist()
    # each rank's nodes in its order, then its tail: a last action (-1 - r) with no dependency
    lists = [order[starts[r]:starts[r + 1]] + [-1 - r] for r in range(schedule.pp)]
    end: list[float | None] = [None] * (n + 1)
    end[n] = 0.0  # the sentinel "no dependency"
    position = [0] * schedule.pp
    remaining: list[float | None] = [None] * schedule.pp  # work left of the running action, None: not running
    t = 0.0
    done = 0
    total = sum(len(actions) for actions in lists)
    while done < total:
        arrival = np.inf
        for r, actions in enumerate(lists):
            if remaining[r] is not None or position[r] >= len(actions):
                continue
            node = actions[position[r]]
            ready = 0.0 if node < 0 else (None if end[dep[node]] is None else end[dep[node]] + lag[node])
            if ready is None:
                continue
            if ready <= t + EPS_S:
                remaining[r] = tails_s[-1 - node] if node < 0 else duration[node]
            else:
                arrival = min(arrival, ready)
        running = [r for r in range(schedule.pp) if remaining[r] is not None]
        if not running:
            if arrival == np.inf:
                raise AssertionError("processor sharing: no rank can run (the schedule graph deadlocks)")
            t = arrival
            continue
        demand = [sum(wants[r] for r in running) for wants in load]
        served = [cores * efficiency_at(d / cores) for d in demand]
        rate = {r: min([1.0] + [served[n] / demand[n] for n, wants in enumerate(load) if wants[r] > 0]) for r in running}
        finish = min(remaining[r] / rate[r] for r in running)
        step = min(finish, arrival - t)
        t += step
        for r in running:
            remaining[r] -= rate[r] * step
            if remaining[r] <= EPS_S * max(1.0, t):
                node = lists[r][position[r]]
                if node >= 0:
                    end[node] = t
                remaining[r] = None
                position[r] += 1
                done += 1
    return t


def ranks_per_core(cluster: ClusterSpec, cfg: ParallelConfig) -> float:
    """Processes per core on the fullest node where ranks share a node's cores (``concurrent_ranks_per_node``,
    CPU nodes); 1 where every rank has its own device."""
    cores = cluster.concurrent_ranks_per_node
    if cores is None:
        return 1.0
    return min(cfg.world_size, cluster.gpus_per_node) / cores


def _node_loads(cluster: ClusterSpec, cfg: ParallelConfig, cores: float) -> list[list[float]]:
    """``load[n][r]``: cores pipeline rank r wants on node n while it computes, ``min(tp, C) / tp``
    per process the rank grid puts there (a TP group larger than ``C`` already time-shares:
    ``RooflineTimes`` and a ``--tp-group`` profile include it, ``costmodels.rank_grid``)."""
    grid = RankGrid(cfg.tp, cfg.pp, cfg.dp, cfg.cp)
    share = min(cfg.tp, cores) / cfg.tp
    load = [[0.0] * cfg.pp for _ in range(-(-grid.world_size // cluster.gpus_per_node))]
    for rank in range(grid.world_size):
        load[rank // cluster.gpus_per_node][grid.coord(rank).pp] += share
    return load


def peak_node_load(cluster: ClusterSpec, cfg: ParallelConfig) -> float:
    """The most cores one node's pipeline ranks want at once (``_node_loads``, every rank computing), on a
    cluster whose ranks share cores (``concurrent_ranks_per_node`` set). Above that count they time-share,
    and ``timeshared_step_s`` prices it."""
    assert cluster.concurrent_ranks_per_node is not None, "a cluster of one device per rank shares no cores"
    return max(sum(wants) for wants in _node_loads(cluster, cfg, cluster.concurrent_ranks_per_node))


def timeshared_work_bound_s(cluster: ClusterSpec, cfg: ParallelConfig, busy_s: tuple[float, ...], tail_s: list[float]) -> float:
    """A lower bound of ``timeshared_step_s`` for pricers that bound the pipeline rather than simulate
    it (``costmodels.pipeline_bound``): work is conserved, so the first node needs at least its ranks'
    total work (busy time plus tails, each weighted by the cores it wants, ``_node_loads``) over its
    ``C`` cores."""
    cores = cluster.concurrent_ranks_per_node
    if cores is None:
        return 0.0
    first = _node_loads(cluster, cfg, cores)[0]
    work_s = sum(wants * (busy + tail) for wants, busy, tail in zip(first, busy_s, tail_s))
    # to the picosecond: plans with the same work (pp4 and pp2 x dp2) tie exactly, whatever the
    # summation order, and the search's canonical tie-break decides between them
    return round(work_s / cores, 12)


def timeshared_step_s(
    cluster: ClusterSpec, cfg: ParallelConfig, schedule: Schedule, times: StageTimes, tails_s: list[float],
    efficiency: tuple[tuple[float, float], ...] = (),
) -> float:
    """The step where a node's ranks time-share fewer cores (0 when every rank has its own device):
    the pipeline's action lists under processor sharing (``costmodels.processor_sharing``).

    ``C = concurrent_ranks_per_node`` cores serve each node's ranks (CPU cores; torchrun runs one
    OMP thread per process, and Linux shares a core fairly among the ranks that want it); each
    computing pipeline rank wants the cores ``_node_loads`` gives it on each node. ``tails_s``
    (optimizer step and exposed data-parallel traffic per pipeline rank, in full-speed seconds) run
    after each rank's list. When no node is ever asked for more cores than it has, nothing is
    shared: 0. ``efficiency``: the measured time-sharing loss (``RuntimeCosts.timeshare_efficiency``)."""
    cores = cluster.concurrent_ranks_per_node
    if cores is None:
        return 0.0
    load = _node_loads(cluster, cfg, cores)
    if all(sum(wants) <= cores for wants in load):
        return 0.0
    return round(timeshared_makespan_s(schedule, times, tails_s, cores, load, efficiency), 12)  # ties: as the work bound
