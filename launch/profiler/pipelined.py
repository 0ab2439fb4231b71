"""The runtime's costs in a real pipeline of two ranks (``ppplan profile``, ``RuntimeMeasurement``).

The one-rank measurement (``launch/profiler/runtime.py``) times torch.distributed.pipelining's
schedule on a single stage: nothing waits and nothing is sent, and it adds next to nothing
(tiny-llama: 0.005 ms per action). In a pipeline the same calls cost more, in two ways, both
measured on cpu-local (2026-12-03, one-layer stages, the runtime's interleaved 1F1B on two ranks,
thread CPU time per step, medians of 10 rounds; tiny-gpt and tiny-llama alike):

- the actions themselves run 3-12 % slower than the same F and B called directly, one rank
  at a time (tiny-llama mbs 2: 177.9 ms of actions per step against 161.9 ms direct on rank 0,
  177.1 against 165.6 on rank 1). Each rank waits for its peer between actions, gloo moves the
  activations on threads of its own, and the next action starts on caches the peer's and the
  host's work have cooled: the same layer called after a 5-20 ms pause took 7.9-11.2 ms against
  7.4 ms back to back; two ranks computing side by side without a pipeline lost 1-7 %.
- the schedule spends host time between the actions: posting each p2p send and receive,
  its bookkeeping (7-9 ms per step of 16 actions on each rank, at mbs 1 and 2 alike).

Part of the first was the kernel faulting freed memory in again at each step (glibc gave it back;
the direct calls reuse theirs): since the ranks keep it (``launch/runtime/heap.py``, 2026-12-05) the
factor measured 1.05-1.13 where it was 1.09-1.14 (tiny-gpt 1.14 -> 1.05).

Neither was priced: tiny-llama's interleaved picks ran 17-27 % slower than priced with layer
times measured minutes before. This module times both with the runtime's own pieces: two
spawned processes (gloo) each build ``VIRTUAL_STAGES`` one-layer stages of the model
(``build_stage_module``, and ``launch.runtime.pp.build_stages`` / ``build_schedule`` for an
interleaved 1F1B plan of ``MICROBATCHES`` microbatches, the AdamW step after each), and every round

1. each rank, alone in turn, runs its stages' forward and backward directly, microbatch by
   microbatch (the uncontended time, as the layer profile measures it);
2. both run one step of the schedule; each stage's ``forward_one_chunk`` and ``backward_one_chunk``
   are timed as the schedule calls them, and the whole step.

All in the rank's thread CPU time (one intra-op thread): waiting for the peer is not in it (the
bubble and the transfer are priced by the simulator and the measured p2p link). Per rank and
round: the compute factor = the actions' time / the direct time, and the host time per action =
(the step - the actions) / the number of actions; the profile keeps the medians over both ranks
and the rounds after ``warmup``, and their spread. ``costmodels.runtime_costs`` prices them on
plans with a pipeline (pp > 1).

More ranks than cores (``crowded_factors``). A CPU node that runs ``k`` ranks per core stretches a
pipeline's actions in wall time even while no more of them compute than it has cores: the idle ranks
wake to post and take their p2p, the scheduler puts a waking rank on a core that is computing, and
each action starts on caches the other ranks have cooled. Traced on cpu-local (2026-12-05, tiny-gpt
b 8, each action's wall and thread CPU time in the runtime): with one other action running beside
it, an action's wall time was 1.03x its CPU time on 2 ranks, 1.11x on 4 (pp 4 interleaved) and 1.14x
on 8 (pp 8 GPipe), whose actions also took 1.08x the CPU time the layer profile gives; search's pp 8
pick ran 0.40 s where the two-rank factor priced 0.343 s. So ``ppplan profile`` also times a pipeline
of ``k·C`` one-layer stages (``crowded_shape``: GPipe over ``C`` microbatches, so at most ``C`` actions
at once and none of the time-sharing ``costmodels.processor_sharing`` prices), the actions by the wall
clock over the same calls made directly by their thread CPU time, for ``k`` in
``CROWDED_RANKS_PER_CORE`` at the grid's smallest and largest mbs. Measured on cpu-local, tiny-gpt:
1.27 / 1.37 at mbs 1 and 1.08 / 1.20 at mbs 4, at 2 / 4 ranks per core (short actions lose more).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from profiles.schema import ModelSpec

PIPELINE_RANKS = 2
VIRTUAL_STAGES = 2
MICROBATCHES = 4
SCHEDULE = "interleaved-1f1b"
CROWDED_RANKS_PER_CORE = (2, 4)
CROWDED_MAX_RANKS = 16  # more processes than this one machine's worth of ranks: not measured


@dataclass(frozen=True)
class PipelineShape:
    """The pipeline a measurement times: ``ranks`` one-layer stages (``virtual_stages`` per rank)
    over ``microbatches``; ``wall`` times the actions by the wall clock (what a crowded node
    stretches) instead of the rank's thread CPU time."""

    ranks: int = PIPELINE_RANKS
    virtual_stages: int = VIRTUAL_STAGES
    microbatches: int = MICROBATCHES
    schedule: str = SCHEDULE
    wall: bool = False

    @property
    def actions(self) -> int:
        """F and the whole B of every microbatch on every local stage."""
        return 2 * self.microbatches * self.virtual_stages


TWO_RANKS = PipelineShape()


def crowded_shape(cores: int, ranks_per_core: int) -> PipelineShape:
    """``ranks_per_core`` ranks per core, one one-layer stage each, GPipe over as many microbatches as
    the node has cores: at most ``cores`` actions ever run at once (a GPipe wave holds one stage per
    microbatch), so nothing here is the time-sharing the simulator prices (``processor_sharing``)."""
    return PipelineShape(ranks=cores * ranks_per_core, virtual_stages=1, microbatches=cores, schedule="gpipe", wall=True)


@dataclass(frozen=True)
class PipelinedRound:
    """One rank's thread CPU seconds in one round (module docstring)."""

    direct_s: float
    in_actions_s: float
    step_s: float
    actions: int

    @property
    def compute_factor(self) -> float:
        return self.in_actions_s / self.direct_s

    @property
    def host_per_action_s(self) -> float:
        return (self.step_s - self.in_actions_s) / self.actions


@dataclass(frozen=True)
class PipelinedCosts:
    compute_factor: float
    compute_factor_iqr: float
    host_per_action_s: float
    host_per_action_iqr_s: float


def mse(out, target):
    """The loss the profiler's stages end in (hidden states against random targets)."""
    return ((out - target) ** 2).mean()


def median_iqr(values: list[float]) -> tuple[float, float]:
    """Median (at least 0) and inter-quartile range of ``values``."""
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return max(0.0, statistics.median(values)), max(0.0, quartiles[2] - quartiles[0])


def summarize(rounds: list[PipelinedRound], shape: PipelineShape = TWO_RANKS) -> PipelinedCosts:
    """Medians (and IQRs) over every rank's rounds; the factor is at least 1, the host time at least 0.
    Every round must have timed each action the schedule runs (F and the whole B of every
    microbatch on every local stage): a torch that no longer calls ``forward_one_chunk`` /
    ``backward_one_chunk`` on the stage objects would leave actions out and the figures wrong."""
    expected = shape.actions
    wrong = sorted({r.actions for r in rounds if r.actions != expected})
    if not rounds or wrong:
        raise RuntimeError(f"the {shape.ranks}-rank pipeline timed {wrong or 'no'} actions per step where its schedule runs {expected}: "
                           "torch.distributed.pipelining no longer runs them through the stages' forward_one_chunk / "
                           "backward_one_chunk (launch/profiler/pipelined.py)")
    factor, factor_iqr = median_iqr([r.compute_factor for r in rounds])
    host, host_iqr = median_iqr([r.host_per_action_s for r in rounds])
    return PipelinedCosts(max(1.0, factor), factor_iqr, max(0.0, host), host_iqr)


def measurement_config(mbs: int, shape: PipelineShape = TWO_RANKS) -> Any:
    """The plan whose runtime is timed: one layer per virtual stage (by default pp 2, interleaved 1F1B)."""
    from profiles.schema import ParallelConfig

    return ParallelConfig(
        tp=1, pp=shape.ranks, dp=1, v=shape.virtual_stages, mbs=mbs, num_microbatches=shape.microbatches,
        schedule=shape.schedule, stage_layers=[1] * (shape.ranks * shape.virtual_stages),
    )  # fmt: skip


def _timed(spent: list[float], method: Any, clock: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        start = clock()
        try:
            return method(*args, **kwargs)
        finally:
            spent.append(clock() - start)

    return run


def _worker(
    rank: int, port: int, model: ModelSpec, mbs: int, seq_len: int, warmup: int, repeats: int, shape: PipelineShape, queue: Any
) -> None:
    import torch
    import torch.distributed as dist

    from costmodels.layout import local_stages
    from launch.profiler.group import exit_without_finalizing
    from launch.runtime.model import build_stage_module
    from launch.runtime.optim import build_optimizer
    from launch.runtime.pp import build_schedule, build_stages

    torch.set_num_threads(1)
    clock = time.thread_time  # this rank's CPU time: waiting for the peer is not in it
    action_clock = time.perf_counter if shape.wall else clock  # a crowded node's actions: their wall time
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=shape.ranks)
    try:
        cfg = measurement_config(mbs, shape)
        layouts = local_stages(cfg, rank)
        modules = {lay.stage: build_stage_module(model, lay.stage, 1, False, False, 0) for lay in layouts}
        stages = build_stages(modules, layouts, cfg.num_stages, torch.device("cpu"), dist.group.WORLD)
        schedule = build_schedule(cfg, stages, mse)
        in_actions: list[float] = []
        for stage in stages:  # the schedule calls them on each stage object: time them there
            stage.forward_one_chunk = _timed(in_actions, stage.forward_one_chunk, action_clock)
            stage.backward_one_chunk = _timed(in_actions, stage.backward_one_chunk, action_clock)
        optimizer = build_optimizer([p for m in modules.values() for p in m.parameters()])
        microbatches = shape.microbatches
        inputs = torch.randn(mbs * microbatches, seq_len, model.hidden_size)
        targets = torch.randn(mbs * microbatches, seq_len, model.hidden_size)
        first = (inputs,) if any(lay.stage == 0 for lay in layouts) else ()
        target = targets if any(lay.stage == cfg.num_stages - 1 for lay in layouts) else None

        def direct() -> float:
            """The same stages' F and B called directly: an input gradient except on stage 0, the loss
            on the last stage, an output gradient (the targets stand in) elsewhere."""
            start = clock()
            for index, module in modules.items():
                for x, t in zip(inputs.chunk(microbatches), targets.chunk(microbatches)):
                    out = module(x if index == 0 else x.detach().requires_grad_())
                    if index == cfg.num_stages - 1:
                        (mse(out, t) / microbatches).backward()
                    else:
                        out.backward(t)
            return clock() - start

        rounds: list[PipelinedRound] = []
        for round_ in range(max(1, warmup) + repeats):
            alone = 0.0
            for turn in range(shape.ranks):  # one rank at a time: the direct time is the uncontended one
                dist.barrier()
                if turn == rank:
                    alone = direct()
                    optimizer.zero_grad(set_to_none=True)  # the step starts without gradients, as each step does
            dist.barrier()
            in_actions.clear()
            start = clock()
            schedule.step(*first, target=target)
            step_s = clock() - start
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if round_ >= max(1, warmup):
                rounds.append(PipelinedRound(alone, sum(in_actions), step_s, len(in_actions)))
        queue.put(rounds)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    exit_without_finalizing()


def _rounds(model: ModelSpec, mbs: int, seq_len: int, warmup: int, repeats: int, shape: PipelineShape) -> list[PipelinedRound]:
    from launch.profiler.group import free_port, spawn_and_collect

    rounds: list[PipelinedRound] = []
    spawn_and_collect(_worker, (free_port(), model, mbs, seq_len, warmup, repeats, shape), shape.ranks, rounds.extend,
                      f"timing a {shape.ranks}-rank pipeline")  # fmt: skip
    return rounds


def pipelined_costs(model: ModelSpec, mbs: int, seq_len: int, warmup: int, repeats: int) -> PipelinedCosts:
    """Time the two-rank pipeline (module docstring); must run where no process group is open."""
    return summarize(_rounds(model, mbs, seq_len, warmup, repeats, TWO_RANKS))


def crowded_factors(
    model: ModelSpec, mbs: int, seq_len: int, warmup: int, repeats: int, cores: int,
    ranks_per_core: tuple[int, ...] = CROWDED_RANKS_PER_CORE,
) -> list[tuple[int, float, float]]:
    """``(ranks per core, factor, its IQR)``: the actions' wall time in a pipeline of ``k·cores`` ranks
    (``crowded_shape``) over the same calls made directly, one rank at a time (module docstring,
    "More ranks than cores"). Points of more than ``CROWDED_MAX_RANKS`` ranks are not measured."""
    points = []
    for k in ranks_per_core:
        shape = crowded_shape(cores, k)
        if shape.ranks > CROWDED_MAX_RANKS:
            continue
        costs = summarize(_rounds(model, mbs, seq_len, warmup, repeats, shape), shape)
        points.append((k, costs.compute_factor, costs.compute_factor_iqr))
    return points
