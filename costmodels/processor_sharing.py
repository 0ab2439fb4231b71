"""A pipeline whose ranks time-share fewer cores than they are: the same action lists as
``costmodels.simulator``, run under processor sharing.

On a CPU node every rank is a process and ``C`` cores serve them (``ClusterSpec.concurrent_ranks_per_node``);
Linux's fair scheduler gives each runnable process an equal share, so while ``n`` ranks compute
each runs at ``min(1, C / (n·w))`` of full speed, ``w`` the cores one of them would use alone
(``min(tp, C)`` per TP group, times the data-parallel replicas on the node, which run the same list
at the same time). A rank that waits for its input (a p2p receive or a collective) is blocked and
uses no core. Each action keeps its full-speed duration as work; the event loop advances to the
next completion or arrival and shares the cores among the ranks computing in between
(Kleinrock 1967, "Time-shared systems: a theoretical treatment", processor sharing as the limit of
round-robin with a small quantum). After its last action a rank runs its tail (optimizer step and
exposed gradient reduce) the same way.

It is exact for the model above when the node is saturated (it then takes the total work over
``C``) and when it is not (every rank runs at full speed, as the plain simulation), and prices the
regime in between, where the plain simulation ignores that ranks slow each other down.
"""

from __future__ import annotations

import numpy as np

from costmodels.schedules.actions import Schedule
from costmodels.simulator import StageTimes, duration_table, schedule_graph

EPS_S = 1e-12


def timeshared_makespan_s(schedule: Schedule, times: StageTimes, tails_s: list[float], cores: float,
                          cores_per_rank: float) -> float:
    """The step's makespan when the pipeline ranks share ``cores`` cores, each rank wanting
    ``cores_per_rank`` of them (module docstring); ``tails_s[r]`` is rank r's work after its list."""
    graph = schedule_graph(schedule)
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
        rate = min(1.0, cores / (len(running) * cores_per_rank))
        finish = min(remaining[r] for r in running) / rate
        step = min(finish, arrival - t)
        t += step
        for r in running:
            remaining[r] -= rate * step
            if remaining[r] <= EPS_S * max(1.0, t):
                node = lists[r][position[r]]
                if node >= 0:
                    end[node] = t
                remaining[r] = None
                position[r] += 1
                done += 1
    return t
