"""The schedule registry: one entry per pipeline schedule, the only place its facts live.

Each ``ScheduleSpec`` says where the schedule puts virtual stages (``placement``),
how many stages a rank holds, whether it splits the backward into B (input
gradient) and W (weight gradient), what it needs of the microbatch count, which
runtimes run it and how (a ``torch.distributed.pipelining`` class, or our action
list through torch's pipeline-CSV runtime), and the generator of its per-rank
action lists. The runtime rules (``costmodels.rules``), the rank grid, the
closed-form screen, the simulator, the runtime (``launch.runtime.pp``) and the
emitters all read these entries (which stacks offer a schedule is the stack
file's fact, ``profiles/stacks/``); a new schedule is one entry here (plus its
generator), and one name in ``profiles.schema.ScheduleName`` (the plan file's
contract, tested equal to this table's keys).

Sources: torch 2.13 ``torch/distributed/pipelining/schedules.py`` (Schedule1F1B
needs n_microbatches >= stages; ScheduleInterleaved1F1B and
ScheduleInterleavedZeroBubble need n_microbatches % max(1, n_microbatches // pp)
== 0, ScheduleLoopedBFS does not; ScheduleZBVZeroBubble and ScheduleDualPipeV
need exactly two stages per rank in V placement; ScheduleDualPipeV needs
n_microbatches >= 2 * pp; ScheduleGPipe, ScheduleLoopedBFS and
ScheduleZBVZeroBubble accept any count), checked by constructing every class
over a grid of (pp, v, M); torchtitan's ``pipeline_parallel_schedule`` names
(the torch class name without ``Schedule``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from costmodels.schedules.actions import Action
from costmodels.schedules.chimera import chimera_ranks
from costmodels.schedules.torch_order import (
    dualpipev_peak_inflight,
    dualpipev_rank,
    gpipe_peak_inflight,
    gpipe_rank,
    interleaved_peak_inflight,
    interleaved_rank,
    looped_bfs_peak_inflight,
    looped_bfs_rank,
    one_f_one_b_peak_inflight,
    one_f_one_b_rank,
    zbv_peak_inflight,
    zbv_rank,
)
from costmodels.schedules.zero_bubble import zb_h1_peak_inflight, zb_h1_rank, zb_h2_peak_inflight, zb_h2_rank

Placement = Literal["loop", "v"]
StagesPerRank = Literal["one", "looped", "two", "any"]
RankLists = Callable[[int, int, int], list[list[Action]]]  # (pp, v, num_microbatches) -> per-rank actions
PeakInflight = Callable[[int, int, int, int], int]  # (rank, pp, v, num_microbatches) -> microbatch-stages held at the peak


@dataclass(frozen=True)
class ScheduleSpec:
    """Everything ppplan knows about one schedule.

    ``stages_per_rank``: ``one`` (v = 1), ``looped`` (v >= 2, looped placement)
    ``two`` (exactly two, V placement) or ``any`` (a custom list: read off its CSV). ``min_microbatches_per_rank``: the
    schedule needs M >= k·pp (0: no minimum). ``rounds_rule``: torch groups
    microbatches in rounds of max(1, M // pp) and needs M to be a multiple of
    that. ``simulated_only``: no runtime executes it (chimera runs two model
    replicas per rank). ``torch_class`` / ``torch_csv``: how torch (ppplan's runtime,
    torchtitan) runs it; which stacks offer it is each stack's fact
    (``profiles/stacks/*.yaml``). ``generator``: the per-rank action lists (None for
    ``custom``, whose list the plan carries). ``peak_inflight``: the generated lists' most
    microbatch-stages alive on a rank (forward done, W not yet), in closed form so that the
    search can bound memory without building the lists (equality with the simulator's count
    is tested over a grid of shapes); None where only the lists know (chimera, custom).
    ``overlaps_expert_comm``: each steady forward runs merged with a backward so that their expert
    all-to-alls hide under each other's compute (Megatron-Core's combined 1F1B,
    ``--overlap-moe-expert-parallel-comm``; ``costmodels.layer_costs.ep_overlap_hidden_s``), a schedule
    only Megatron-Core's engine runs (``megatron_only``: neither torch class nor CSV).
    ``held_overlap_rounds``: from M >= k·pp on (k > 0), at a moment when a rank's in-flight count is at its peak
    every stage of the rank has started its W or full backward passes and none has finished them, so whatever a
    stage holds from its first such pass to its last (``StageTimes.held_bytes``) is all alive at the rank's
    activation peak (checked on the generated lists over a grid of shapes:
    ``tests/costmodels/test_pipeline_bound.py``); 0 where no M gives that (looped-bfs ends each stage's backwards
    before the next starts; a one-stage rank needs none: its activations peak while its held bytes live).
    """

    name: str
    placement: Placement
    stages_per_rank: StagesPerRank
    split_backward: bool
    min_microbatches_per_rank: int
    rounds_rule: bool
    simulated_only: bool
    torch_class: str | None
    torch_csv: bool
    generator: RankLists | None
    peak_inflight: PeakInflight | None = None
    overlaps_expert_comm: bool = False
    megatron_only: bool = False
    held_overlap_rounds: int = 0

    @property
    def torchtitan_name(self) -> str | None:
        """torchtitan's ``pipeline_parallel_schedule`` value: the torch class name less ``Schedule``."""
        return self.torch_class.removeprefix("Schedule") if self.torch_class else None


def _per_rank(rank_list: Callable[[int, int, int, int], list[Action]]) -> RankLists:
    return lambda pp, v, m: [rank_list(r, pp, v, m) for r in range(pp)]


SCHEDULES: dict[str, ScheduleSpec] = {
    s.name: s
    for s in (
        ScheduleSpec("gpipe", "loop", "one", False, 0, False, False, "ScheduleGPipe", False,
                     _per_rank(lambda r, pp, v, m: gpipe_rank(r, pp, m)), gpipe_peak_inflight),
        ScheduleSpec("1f1b", "loop", "one", False, 1, False, False, "Schedule1F1B", False,
                     _per_rank(lambda r, pp, v, m: one_f_one_b_rank(r, pp, m)), one_f_one_b_peak_inflight),
        ScheduleSpec("interleaved-1f1b", "loop", "looped", False, 0, True, False,
                     "ScheduleInterleaved1F1B", False,
                     _per_rank(lambda r, pp, v, m: interleaved_rank(r, pp, v, m, zero_bubble=False)),
                     lambda r, pp, v, m: interleaved_peak_inflight(r, pp, v, m, zero_bubble=False), held_overlap_rounds=2),
        ScheduleSpec("combined-1f1b", "loop", "looped", False, 0, True, False, None, False,
                     _per_rank(lambda r, pp, v, m: interleaved_rank(r, pp, v, m, zero_bubble=False, extra_warmup=1)),
                     lambda r, pp, v, m: interleaved_peak_inflight(r, pp, v, m, zero_bubble=False, extra_warmup=1),
                     overlaps_expert_comm=True, megatron_only=True, held_overlap_rounds=2),
        ScheduleSpec("looped-bfs", "loop", "looped", False, 0, False, False, "ScheduleLoopedBFS", False,
                     _per_rank(looped_bfs_rank), looped_bfs_peak_inflight),
        ScheduleSpec("zb-h1", "loop", "one", True, 0, False, False, None, True,
                     _per_rank(lambda r, pp, v, m: zb_h1_rank(r, pp, m)), zb_h1_peak_inflight),
        ScheduleSpec("zb-h2", "loop", "one", True, 0, False, False, None, True,
                     _per_rank(lambda r, pp, v, m: zb_h2_rank(r, pp, m)), zb_h2_peak_inflight),
        ScheduleSpec("interleaved-zb", "loop", "looped", True, 0, True, False, "ScheduleInterleavedZeroBubble", False,
                     _per_rank(lambda r, pp, v, m: interleaved_rank(r, pp, v, m, zero_bubble=True)),
                     lambda r, pp, v, m: interleaved_peak_inflight(r, pp, v, m, zero_bubble=True), held_overlap_rounds=2),
        ScheduleSpec("zbv", "v", "two", True, 0, False, False, "ScheduleZBVZeroBubble", False,
                     _per_rank(lambda r, pp, v, m: zbv_rank(r, pp, m)), zbv_peak_inflight, held_overlap_rounds=2),
        ScheduleSpec("dualpipev", "v", "two", True, 2, False, False, "ScheduleDualPipeV", False,
                     _per_rank(lambda r, pp, v, m: dualpipev_rank(r, pp, m)), dualpipev_peak_inflight,
                     held_overlap_rounds=2),
        ScheduleSpec("chimera", "loop", "one", False, 0, False, True, None, False,
                     lambda pp, v, m: chimera_ranks(pp, m)),
        ScheduleSpec("custom", "loop", "any", True, 0, False, False, None, True, None),
    )
}

# Derived views (read-only; the entries above are the facts).
GENERATED_SCHEDULES: tuple[str, ...] = tuple(n for n, s in SCHEDULES.items() if s.generator is not None)
SPLIT_BACKWARD_SCHEDULES = frozenset(n for n, s in SCHEDULES.items() if s.split_backward and s.generator)
V_SCHEDULES = frozenset(n for n, s in SCHEDULES.items() if s.placement == "v")
LOOPED_SCHEDULES = frozenset(n for n, s in SCHEDULES.items() if s.stages_per_rank == "looped")
SIMULATED_ONLY_SCHEDULES = frozenset(n for n, s in SCHEDULES.items() if s.simulated_only)


def schedule_spec(name: str) -> ScheduleSpec:
    """The registry entry of ``name`` (``KeyError`` for a name the plan schema would refuse)."""
    return SCHEDULES[name]


def interleaved_rounds(num_microbatches: int, pp: int) -> int:
    """torch's ``number_of_rounds`` for looped schedules: max(1, M // pp)."""
    return max(1, num_microbatches // pp)


def shape_violations(name: str, pp: int, v: int, num_microbatches: int) -> list[str]:
    """What schedule ``name`` itself needs of (pp, v, M), whatever runs it; empty when it can be built.

    zb-h1, zb-h2 and custom run through the CSV runtime, which needs nothing of M.
    """
    spec = SCHEDULES[name]
    problems: list[str] = []
    m = num_microbatches
    if spec.stages_per_rank == "one" and v != 1:
        problems.append(f"schedule '{name}' places one stage per rank: use --v 1 or an interleaved schedule")
    if spec.stages_per_rank == "looped" and v < 2:
        problems.append(f"schedule '{name}' needs v >= 2 virtual stages per rank (got v={v}); use 1f1b for v=1")
    if spec.stages_per_rank == "two" and v != 2:
        problems.append(f"schedule '{name}' needs exactly two stages per rank in V placement: use --v 2")
    need = spec.min_microbatches_per_rank * pp
    if need and m < need:
        what = "pp" if spec.min_microbatches_per_rank == 1 else f"{spec.min_microbatches_per_rank}*pp"
        problems.append(
            f"schedule '{name}' needs at least {what}={need} microbatches (got {m}): raise the global batch or lower mbs/dp"
        )
    if spec.rounds_rule and pp > 1 and m % interleaved_rounds(m, pp):
        problems.append(
            f"schedule '{name}' in torch needs num_microbatches ({m}) to be a multiple of "
            f"max(1, M // pp) = {interleaved_rounds(m, pp)}; pick M from the multiples of pp or M <= pp"
        )
    return problems
