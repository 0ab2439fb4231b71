"""Event simulator: prices a schedule's exact per-rank action lists.

Model (the one torch's pipeline runtime executes): every rank runs its actions
in list order, one at a time; an action starts when the rank is free and its
input has arrived. A forward on stage ``s`` needs the forward of stage
``s - 1`` plus the p2p time of boundary ``s - 1``; a B or full backward on
stage ``s`` needs the B/BW of stage ``s + 1`` plus the p2p time of boundary
``s`` (on the last stage, its own forward). Neighbouring stages on the same rank
(the tip of a V) hand over locally with no p2p time, as torch does. Sends do
not occupy the compute stream; links have no contention.

Durations per virtual stage: F, B (input gradient), W (weight gradient), and a
full backward costs B + W. Activations of a microbatch on a stage are held from
the start of its F to the end of its W (or full backward). A stage's held state
(``StageTimes.held_bytes``: FSDP2's unsharded gradients under torch's pipelining)
lives from the start of the stage's first W (or full backward) to the end of its
last, when all but its kept share is freed.

Definitions (DESIGN.md): per rank ``busy`` = compute time; ``idle`` = gaps
between the rank's first action's start and its last action's end (the
zero-bubble paper's bubble); ``bubble_fraction`` = mean over ranks of
(makespan - busy) / makespan; ``peak_inflight_microbatches`` = most
microbatches whose forward is done and weight gradient not yet done, counted
per (microbatch, stage) pair when a rank holds several stages.

Speed: the dependency graph of a schedule is built once (cached) and sorted
into topological levels; pricing a set of stage times is then one vectorised
numpy step per level (``bench/simulator_speed.py`` prints the timings).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from costmodels.schedules.actions import (
    BACKWARD_INPUT,
    BACKWARD_WEIGHT,
    FORWARD,
    FULL_BACKWARD,
    GRAD_SENDING_KINDS,
    RELEASING_KINDS,
    Action,
    Schedule,
)
from profiles.errors import PlanError

KIND_CODE = {FORWARD: 0, BACKWARD_INPUT: 1, BACKWARD_WEIGHT: 2, FULL_BACKWARD: 3}
# A plain Python loop costs about 0.4 us per action, per-level numpy calls about 6.5 us per level
# (measured on the 2-core CI VM, pp 8-64, M 64-1024): the loop wins below about 20 actions per level.
LOOP_ACTIONS_PER_LEVEL = 20


@dataclass(frozen=True)
class StageTimes:
    """Per virtual stage, per microbatch (index = virtual stage in pipeline order).

    ``p2p_s[j]`` is the time to move the boundary activation (or its gradient)
    from stage j to stage j+1; it has ``len(forward_s) - 1`` entries.
    ``activation_bytes[j]`` is held from a microbatch's F on stage j until its
    W (or its full backward when the schedule does not split B and W).
    ``retained_bytes[j]`` (empty: none) is held on top from a microbatch's B on stage j
    until its W: what the weight gradients still need once the input gradients are done
    (torch.distributed.pipelining's ``stage_backward_input`` keeps the gradients flowing into
    each parameter's node for ``stage_backward_weight``; Qi et al. 2024, Sec. 2: W needs the
    output gradients of the layers).
    ``held_bytes[j]`` (empty: none) is allocated once per step, at the start of stage j's first W (or
    full backward), and held until the end of its last, when all but ``held_kept_bytes[j]`` is freed:
    the stage's unsharded gradients where FSDP2 wraps it under torch.distributed.pipelining, which keeps
    the gradient sync off until the REDUCE_GRAD action it lowers right after the stage's last W or full
    backward (torch 2.13 ``pipelining/schedules.py`` ``_add_reduce_grad``, ``stage.py``
    ``perform_reduce_grad``), leaving the reduce-scattered shard (``held_kept_bytes``) to the step's end.
    """

    forward_s: tuple[float, ...]
    backward_input_s: tuple[float, ...]
    backward_weight_s: tuple[float, ...]
    activation_bytes: tuple[float, ...]
    p2p_s: tuple[float, ...]
    retained_bytes: tuple[float, ...] = ()
    held_bytes: tuple[float, ...] = ()
    held_kept_bytes: tuple[float, ...] = ()

    def retained(self) -> np.ndarray:
        """``retained_bytes`` per virtual stage (zeros when none is given)."""
        return _per_stage(self.retained_bytes, len(self.activation_bytes))

    def held(self) -> tuple[np.ndarray, np.ndarray]:
        """(``held_bytes``, ``held_kept_bytes``) per virtual stage (zeros when none is given)."""
        n = len(self.activation_bytes)
        return _per_stage(self.held_bytes, n), _per_stage(self.held_kept_bytes, n)

    @property
    def num_stages(self) -> int:
        return len(self.forward_s)


def _per_stage(values: tuple[float, ...], stages: int) -> np.ndarray:
    return np.asarray(values, dtype=float) if values else np.zeros(stages)


@dataclass(frozen=True)
class ScheduleGraph:
    """A schedule's dependency graph with nodes numbered in topological-level order.

    ``prev[i]``/``dep[i]`` are the node before ``i`` on its rank and the node on
    another stage it waits for (``num_nodes`` = none: a sentinel that ends at 0);
    ``boundary[i]`` indexes the p2p time the dependency pays (``num_stages - 1``
    = a zero entry: no p2p). ``rank_major[k]`` is the node of the k-th action when
    the ranks' lists are concatenated; ``rank_starts`` where each rank begins.
    """

    num_nodes: int
    kind_code: np.ndarray
    stage: np.ndarray
    rank: np.ndarray
    prev: np.ndarray
    dep: np.ndarray
    boundary: np.ndarray
    level_bounds: tuple[int, ...]
    rank_major: np.ndarray
    rank_starts: np.ndarray
    peak_inflight: tuple[int, ...]
    prev_list: tuple[int, ...] = ()  # ``prev`` and ``dep`` as Python ints, for the loop of ``_end_times``
    dep_list: tuple[int, ...] = ()


def _keys(schedule: Schedule) -> tuple[list[int], list[int]]:
    """Integer keys, rank-major: what each action provides and what it waits for (-1: nothing).

    A forward provides (F, m, s); a B or full backward provides the gradient (G, m, s). A
    forward on stage s waits for (F, m, s - 1); a B/BW waits for (G, m, s + 1), or for its own
    forward on the last stage; a W only for its own B, which its rank runs earlier."""
    stages, m = schedule.num_stages, schedule.num_microbatches
    last = stages - 1

    def key(kind: int, mb: int, stage: int) -> int:
        return (kind * m + mb) * stages + stage

    provides, needs = [], []
    for actions in schedule.ranks:
        for a in actions:
            if a.kind == FORWARD:
                provides.append(key(0, a.microbatch, a.stage))
                needs.append(key(0, a.microbatch, a.stage - 1) if a.stage else -1)
            elif a.kind in GRAD_SENDING_KINDS:
                provides.append(key(1, a.microbatch, a.stage))
                needs.append(key(0, a.microbatch, last) if a.stage == last else key(1, a.microbatch, a.stage + 1))
            else:
                provides.append(-1)
                needs.append(-1)
    return provides, needs


def _topological_levels(schedule: Schedule, needs: list[int], provides: list[int]) -> tuple[list[int], list[int]]:
    """Walk the ranks as torch's lowering does, placing an action once its dependency is
    placed; returns each action's level and the rank-major index of its dependency (-1: none).
    Raises ``PlanError`` when the lists deadlock."""
    lengths = [len(r) for r in schedule.ranks]
    offsets = [sum(lengths[:r]) for r in range(len(lengths))]
    heads = list(offsets)
    ends = [o + n for o, n in zip(offsets, lengths)]
    where: dict[int, int] = {}
    level = [0] * sum(lengths)
    dep = [-1] * len(level)
    remaining = len(level)
    while remaining:
        progress = False
        for r in range(len(lengths)):
            g = heads[r]
            while g < ends[r]:
                need = needs[g]
                lvl = level[g - 1] + 1 if g > offsets[r] else 0
                if need >= 0:
                    d = where.get(need)
                    if d is None:
                        break
                    dep[g] = d
                    lvl = max(lvl, level[d] + 1)
                level[g] = lvl
                if provides[g] >= 0:
                    where[provides[g]] = g
                g += 1
            progress |= g != heads[r]
            remaining -= g - heads[r]
            heads[r] = g
        if not progress:
            stuck = [f"rank {r} at {schedule.ranks[r][heads[r] - offsets[r]]}" for r in range(len(lengths)) if heads[r] < ends[r]]
            raise PlanError(f"schedule '{schedule.name}' deadlocks: {', '.join(stuck[:4])} wait for each other")
    return level, dep


def _peak_inflight(schedule: Schedule) -> tuple[int, ...]:
    """Most microbatch-stages a rank holds at once; depends on the order only."""
    peaks = []
    for actions in schedule.ranks:
        held = peak = 0
        for action in actions:
            if action.kind == FORWARD:
                held += 1
                peak = max(peak, held)
            elif action.kind in RELEASING_KINDS:
                held -= 1
        peaks.append(peak)
    return tuple(peaks)


@lru_cache(maxsize=256)
def schedule_graph(schedule: Schedule) -> ScheduleGraph:
    """Build (once per schedule) the level-ordered dependency graph the simulator runs on."""
    provides, needs = _keys(schedule)
    level, dep_rm = _topological_levels(schedule, needs, provides)
    n = len(level)
    lengths = np.array([len(r) for r in schedule.ranks])
    rank_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    rank_rm = np.repeat(np.arange(schedule.pp), lengths)
    flat = [a for r in schedule.ranks for a in r]
    kind_rm = np.array([KIND_CODE[a.kind] for a in flat], dtype=np.int64)
    stage_rm = np.array([a.stage for a in flat], dtype=np.int64)
    order = np.argsort(np.array(level), kind="stable")  # node -> rank-major index
    node_of = np.empty(n + 1, dtype=np.int64)
    node_of[order] = np.arange(n)
    node_of[n] = n  # sentinel: "no predecessor" maps to the zero-time node
    prev_rm = np.arange(n) - 1
    prev_rm[rank_starts] = -1
    dep_rm = np.array(dep_rm, dtype=np.int64)
    has_dep = dep_rm >= 0
    cross = has_dep & (rank_rm[np.where(has_dep, dep_rm, 0)] != rank_rm)
    boundary_rm = np.where(cross, np.minimum(stage_rm, stage_rm[np.where(has_dep, dep_rm, 0)]), schedule.num_stages - 1)
    sorted_levels = np.array(level)[order]
    bounds = [0, *(np.flatnonzero(np.diff(sorted_levels)) + 1).tolist(), n]
    prev, dep = node_of[np.where(prev_rm >= 0, prev_rm, n)][order], node_of[np.where(has_dep, dep_rm, n)][order]
    return ScheduleGraph(
        num_nodes=n, kind_code=kind_rm[order], stage=stage_rm[order], rank=rank_rm[order], prev=prev, dep=dep,
        boundary=boundary_rm[order], level_bounds=tuple(bounds), rank_major=node_of[:n],
        rank_starts=rank_starts, peak_inflight=_peak_inflight(schedule),
        prev_list=tuple(prev.tolist()), dep_list=tuple(dep.tolist()),
    )


@dataclass(frozen=True)
class SimulationResult:
    """Simulated timing of one schedule; per-rank tuples are indexed by pipeline rank.

    ``start_s``/``end_s`` give every action's times with the ranks' lists
    concatenated in order (rank 0's actions first); use ``rank_timeline``.
    """

    schedule: Schedule
    makespan_s: float
    busy_s: tuple[float, ...]
    idle_s: tuple[float, ...]
    bubble_fraction: float
    peak_inflight_microbatches: tuple[int, ...]
    peak_activation_bytes: tuple[float, ...]
    start_s: np.ndarray
    end_s: np.ndarray
    activation_bytes: tuple[float, ...]
    retained_bytes: tuple[float, ...] = ()
    peak_held_bytes: tuple[float, ...] = ()  # per rank, the held state alive at its memory peak (StageTimes.held_bytes)
    held_bytes: tuple[float, ...] = ()
    held_kept_bytes: tuple[float, ...] = ()

    def rank_timeline(self, rank: int) -> list[tuple[Action, float, float]]:
        """(action, start_s, end_s) for each action of ``rank`` in execution order."""
        offset = sum(len(a) for a in self.schedule.ranks[:rank])
        return [
            (action, float(self.start_s[offset + i]), float(self.end_s[offset + i]))
            for i, action in enumerate(self.schedule.ranks[rank])
        ]

    def memory_timeline(self, rank: int) -> list[tuple[float, float]]:
        """(time_s, activation and held bytes) after each change on ``rank``: a forward adds its
        stage's bytes at its start, a B its retained bytes at its end, a W or full backward
        frees both at its end; a stage's first W or full backward adds its held bytes at its start,
        its last frees all but the kept share at its end."""
        events: list[tuple[float, int, float]] = []
        order = action_order(self.schedule)
        offset = int(order.rank_starts[rank])
        first, last = set(order.first_release.tolist()), set(order.last_release.tolist())
        for i, (action, start, end) in enumerate(self.rank_timeline(rank), start=offset):
            size = self.activation_bytes[action.stage]
            kept = self.retained_bytes[action.stage] if self.retained_bytes else 0.0
            held = self.held_bytes[action.stage] if self.held_bytes else 0.0
            if held and i in first:
                events.append((start, 1, held))
            if action.kind == FORWARD:
                events.append((start, 1, size))
            elif action.kind == BACKWARD_INPUT and kept:
                events.append((end, 1, kept))
            elif action.kind == BACKWARD_WEIGHT:
                events.append((end, 0, -size - kept))
            elif action.kind in RELEASING_KINDS:
                events.append((end, 0, -size))
            if held and i in last:
                events.append((end, 0, -(held - self.held_kept_bytes[action.stage])))
        # frees before allocations at one time; times within a picosecond are one time (an action's end and the
        # next one's start can differ in the last bit of their float sums)
        events.sort(key=lambda event: (round(event[0], 12), event[1]))
        held, timeline = 0.0, []
        for time_s, _, delta in events:
            held += delta
            timeline.append((time_s, held))
        return timeline


def duration_table(times: StageTimes) -> np.ndarray:
    """Rows F, B, W, BW (= B + W) by virtual stage, in seconds."""
    f = np.asarray(times.forward_s, dtype=float)
    b = np.asarray(times.backward_input_s, dtype=float)
    w = np.asarray(times.backward_weight_s, dtype=float)
    return np.stack([f, b, w, b + w])


def _check_times(schedule: Schedule, times: StageTimes) -> None:
    stages = schedule.num_stages
    lengths = {
        "forward_s": len(times.forward_s),
        "backward_input_s": len(times.backward_input_s),
        "backward_weight_s": len(times.backward_weight_s),
        "activation_bytes": len(times.activation_bytes),
    }
    for name in ("retained_bytes", "held_bytes", "held_kept_bytes"):
        if getattr(times, name):
            lengths[name] = len(getattr(times, name))
    if bool(times.held_bytes) != bool(times.held_kept_bytes):
        raise PlanError("stage times: held_bytes and held_kept_bytes go together")
    if any(k > h for h, k in zip(times.held_bytes, times.held_kept_bytes)):
        raise PlanError("stage times: a stage keeps more than it holds (held_kept_bytes > held_bytes)")
    for name, n in lengths.items():
        if n != stages:
            raise PlanError(f"stage times: {name} has {n} entries but the schedule has {stages} stages (pp*v)")
    if len(times.p2p_s) != stages - 1:
        raise PlanError(f"stage times: p2p_s has {len(times.p2p_s)} entries, expected {stages - 1} (one per stage boundary)")
    values = [*times.forward_s, *times.backward_input_s, *times.backward_weight_s, *times.p2p_s]
    if any(not np.isfinite(x) or x < 0 for x in values):
        raise PlanError("stage times must be finite and non-negative seconds")


def _end_times(graph: ScheduleGraph, duration: np.ndarray, comm: np.ndarray, release: np.ndarray | None = None) -> np.ndarray:
    """Earliest end time of every node (longest path), one level at a time. ``release`` (per node, or
    None: 0) is when the node's rank is free to start its list: no action of it starts earlier."""
    n = graph.num_nodes
    end = np.zeros(n + 1)
    bounds = graph.level_bounds
    if n < LOOP_ACTIONS_PER_LEVEL * (len(bounds) - 1):
        ends, prev, dep = [0.0] * (n + 1), graph.prev_list, graph.dep_list
        dur, lag = duration.tolist(), comm.tolist()
        floor = release.tolist() if release is not None else [0.0] * n
        for i in range(n):
            a, b = ends[prev[i]], ends[dep[i]] + lag[i]
            a = a if a > floor[i] else floor[i]
            ends[i] = (a if a > b else b) + dur[i]
        end[:] = ends
        return end
    prev, dep = graph.prev, graph.dep
    for k in range(len(bounds) - 1):
        lo, hi = bounds[k], bounds[k + 1]
        ready = np.maximum(end[prev[lo:hi]], end[dep[lo:hi]] + comm[lo:hi])
        if release is not None:
            ready = np.maximum(ready, release[lo:hi])
        end[lo:hi] = ready + duration[lo:hi]
    return end


def _node_times(schedule: Schedule, times: StageTimes) -> tuple[ScheduleGraph, np.ndarray, np.ndarray]:
    """The schedule's graph with each node's duration and the p2p time its dependency pays."""
    _check_times(schedule, times)
    graph = schedule_graph(schedule)
    duration = duration_table(times)[graph.kind_code, graph.stage]
    comm = np.append(np.asarray(times.p2p_s, dtype=float), 0.0)[graph.boundary]
    return graph, duration, comm


def rank_end_times_s(schedule: Schedule, times: StageTimes, release_s: np.ndarray) -> np.ndarray:
    """Each rank's last end when rank r may start its list only from ``release_s[r]`` on (the same
    model as ``simulate``, whose ranks are all released at 0): one step's ends given when each rank
    finished the step before (``costmodels.steady_state``)."""
    graph, duration, comm = _node_times(schedule, times)
    end = _end_times(graph, duration, comm, np.asarray(release_s, dtype=float)[graph.rank])[:-1]
    return np.maximum.reduceat(end[graph.rank_major], graph.rank_starts)


def _peak_bytes(graph: ScheduleGraph, activation_bytes: np.ndarray, retained_bytes: np.ndarray, pp: int) -> tuple[float, ...]:
    """Per-rank peak of held activation bytes: a running sum over each rank's order (F adds the
    stage's activations, B its retained bytes, W frees both, a full backward the activations). The same sum as
    ``peak_with_held`` without held bytes, in one event per action: about half its cost on the simulator's path."""
    nodes = graph.rank_major
    kind = graph.kind_code[nodes]
    act, kept = activation_bytes[graph.stage[nodes]], retained_bytes[graph.stage[nodes]]
    delta = np.select(
        [kind == KIND_CODE[FORWARD], kind == KIND_CODE[BACKWARD_INPUT], kind == KIND_CODE[BACKWARD_WEIGHT],
         kind == KIND_CODE[FULL_BACKWARD]],
        [act, kept, -(act + kept), -act],
    )
    running = np.cumsum(delta)
    base = np.concatenate([[0.0], running])[graph.rank_starts]
    peaks = np.maximum.reduceat(running, graph.rank_starts) - base
    return tuple(float(max(0.0, x)) for x in peaks[:pp])


class ActionOrder(NamedTuple):
    """A schedule's actions with the ranks' lists concatenated in order (rank 0's first): each one's kind code
    (``KIND_CODE``) and stage, the indexes of each stage's first and last W or full backward (the releasing
    passes; a stage's actions are all on one rank, in list order), and where each rank's list starts."""

    kind: np.ndarray
    stage: np.ndarray
    first_release: np.ndarray
    last_release: np.ndarray
    rank_starts: np.ndarray


@lru_cache(maxsize=256)
def action_order(schedule: Schedule) -> ActionOrder:
    """``ActionOrder`` of ``schedule``, built once per schedule."""
    flat = [a for actions in schedule.ranks for a in actions]
    kind = np.array([KIND_CODE[a.kind] for a in flat], dtype=np.int64)
    stage = np.array([a.stage for a in flat], dtype=np.int64)
    releasing = np.flatnonzero((kind == KIND_CODE[BACKWARD_WEIGHT]) | (kind == KIND_CODE[FULL_BACKWARD]))
    _, first = np.unique(stage[releasing], return_index=True)
    _, last_reversed = np.unique(stage[releasing][::-1], return_index=True)
    starts = np.concatenate([[0], np.cumsum([len(r) for r in schedule.ranks])[:-1]]).astype(np.int64)
    return ActionOrder(kind, stage, releasing[first], releasing[len(releasing) - 1 - last_reversed], starts)


def peak_with_held(schedule: Schedule, activation_bytes: np.ndarray, retained_bytes: np.ndarray,
                   held_bytes: np.ndarray, held_kept_bytes: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per rank, (activation bytes, held bytes) at the peak of their sum (``StageTimes.held_bytes``), from the
    ranks' action order alone: each action is two events, its start (a forward's activations; the held bytes
    of its stage's first W or full backward) and its end (a B's retained bytes; a W frees its activations and
    retained bytes, a full backward its activations; the stage's last W or full backward all but the kept share
    of its held bytes). A rank's earliest peak is taken where several tie."""
    kind, stage, first_node, last_node, rank_starts = action_order(schedule)
    n = len(kind)
    act, kept = activation_bytes[stage], retained_bytes[stage]
    forward, split_b = kind == KIND_CODE[FORWARD], kind == KIND_CODE[BACKWARD_INPUT]
    weight, full = kind == KIND_CODE[BACKWARD_WEIGHT], kind == KIND_CODE[FULL_BACKWARD]
    act_start = np.where(forward, act, 0.0)
    act_end = np.select([split_b, weight, full], [kept, -(act + kept), -act], 0.0)
    held_start, held_end = np.zeros(n), np.zeros(n)
    held_start[first_node] = held_bytes[stage[first_node]]
    held_end[last_node] = -(held_bytes[stage[last_node]] - held_kept_bytes[stage[last_node]])
    act_run = np.cumsum(np.column_stack([act_start, act_end]).ravel())
    held_run = np.cumsum(np.column_stack([held_start, held_end]).ravel())
    bounds = [*(2 * rank_starts).tolist(), 2 * n]
    acts, helds = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        act_base = act_run[lo - 1] if lo else 0.0
        held_base = held_run[lo - 1] if lo else 0.0
        total = act_run[lo:hi] - act_base + held_run[lo:hi] - held_base
        i = int(np.argmax(total)) if hi > lo else 0
        if hi <= lo or total[i] <= 0:
            acts.append(0.0)
            helds.append(0.0)
            continue
        acts.append(float(act_run[lo + i] - act_base))
        helds.append(float(held_run[lo + i] - held_base))
    return tuple(acts), tuple(helds)


def simulate(schedule: Schedule, times: StageTimes) -> SimulationResult:
    """Run ``schedule`` with per-stage ``times``; see the module docstring for the model."""
    graph, duration, comm = _node_times(schedule, times)
    end = _end_times(graph, duration, comm)[:-1]
    start = end - duration
    order = graph.rank_major
    start_rm, end_rm = start[order], end[order]
    pp = schedule.pp
    busy = np.bincount(graph.rank, weights=duration, minlength=pp)
    last = np.append(graph.rank_starts[1:], len(order)) - 1
    first_start, last_end = start_rm[graph.rank_starts], end_rm[last]
    makespan = float(end.max()) if len(end) else 0.0
    idle = np.maximum(0.0, last_end - first_start - busy)
    bubble = float(np.mean((makespan - busy) / makespan)) if makespan > 0 else 0.0
    act = np.asarray(times.activation_bytes, dtype=float)
    held, held_kept = times.held()
    if times.held_bytes:
        peak_act, peak_held = peak_with_held(schedule, act, times.retained(), held, held_kept)
    else:
        peak_act, peak_held = _peak_bytes(graph, act, times.retained(), pp), ()
    return SimulationResult(
        schedule=schedule,
        makespan_s=makespan,
        busy_s=tuple(float(x) for x in busy),
        idle_s=tuple(float(x) for x in idle),
        bubble_fraction=bubble,
        peak_inflight_microbatches=graph.peak_inflight,
        peak_activation_bytes=peak_act,
        start_s=start_rm,
        end_s=end_rm,
        activation_bytes=tuple(float(x) for x in act),
        retained_bytes=tuple(float(x) for x in times.retained_bytes),
        peak_held_bytes=peak_held,
        held_bytes=tuple(float(x) for x in times.held_bytes),
        held_kept_bytes=tuple(float(x) for x in held_kept) if times.held_bytes else (),
    )
