"""Data-parallel work inside one microbatch's passes of a stage, and what it adds to them.

ZeRO-3 gathers a stage's parameters for each microbatch's forward and again for its backward (FSDP's
``reshard_after_forward``; under torch's pipelining as often as the action list makes FSDP2 gather, about once a
microbatch: ``zero3_gathers_per_microbatch``), and a stack that syncs gradients every microbatch (FSDP without a pipeline)
reduce-scatters them in each backward (``microbatch_dp_ops``, ``microbatch_dp_traffic``). On an accelerator each
collective hides under its pass and slows the compute beside it, except the backward's gathers of a stack that
issues them only after each unit's gradients (FSDP1's BACKWARD_POST, ``dp_traffic_extra_s``). FSDP2 also copies
the gathered parameters and the reduce-scatter inputs on the compute stream (``fsdp_copy_s``). Under torch's
pipeline runtime a rank of more than three FSDP-wrapped stages also gathers a stage again each time the lowering
has evicted it (``costmodels.schedules.fsdp_lowering``; ``regather_traffic``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from costmodels.comm import Network
from costmodels.compute import memory_bound_time_s
from costmodels.data_parallel import fsdp_units_of, stage_pieces, stage_reduce_scatter_s, stage_zero3_gather_s
from costmodels.layer_costs import bytes_per_element, runs_on_cpu
from costmodels.layout import StageLayout
from costmodels.memory import evicts_unsharded_stages, gradients_held_per_stage, microbatch_grad_sync
from costmodels.overlap import comm_overlaps_compute, overlapped_pass_s
from costmodels.schedules.actions import Schedule
from costmodels.schedules.fsdp_lowering import unshards_per_stage, zero3_gathers_per_stage
from costmodels.schedules.generate import schedule_of
from profiles.schema import ClusterSpec, ParallelConfig, TrainSpec
from profiles.stack_schema import StackSpec


class StageParamsLike(Protocol):
    dense: float
    expert: float


class DpStage(Protocol):
    """What this module reads of a stage (``costmodels.stage_plan.StagePlan`` has it): its pipeline rank, its
    parameters per rank (dense, routed experts), its layout and its mixture-of-experts layers (the FSDP units)."""

    @property
    def rank(self) -> int: ...

    params: StageParamsLike
    layout: StageLayout
    moe_layers: int


@dataclass(frozen=True)
class MicrobatchDpOps:
    """The data-parallel operations inside one microbatch's passes of a stage: F gathers the parameters;
    B gathers them again (``gather_in_b``) and reduce-scatters the gradients (``reduce_in_b``)."""

    gather_in_b: bool
    reduce_in_b: bool


def microbatch_dp_ops(cfg: ParallelConfig, stack: StackSpec) -> MicrobatchDpOps | None:
    """What data-parallel work runs inside each microbatch (None: none): ZeRO-3 gathers the parameters for F
    and again for B (FSDP2 ``reshard_after_forward``); a stack that syncs gradients every microbatch
    (``microbatch_grad_sync``: FSDP without PP) gathers them for F under ZeRO-1/2 as well (FSDP2 reshards after
    each backward) and reduce-scatters the gradients in B (Rajbhandari et al. 2020, Sec. 5;
    pytorch/torchtitan PR #1710)."""
    data_ranks = cfg.dp * cfg.cp
    if data_ranks == 1:
        return None
    per_microbatch = microbatch_grad_sync(stack, cfg.pp, data_ranks, cfg.zero)
    if cfg.zero < 3 and not per_microbatch:
        return None
    return MicrobatchDpOps(gather_in_b=cfg.zero == 3, reduce_in_b=per_microbatch)


@dataclass(frozen=True)
class MicrobatchDpTraffic:
    """Data-parallel work inside one microbatch's passes of a stage: ``gather_s``, one all-gather of the stage's
    parameters, which ``gathers_per_f`` and ``gathers_per_b`` of its forwards and backwards run on average (1: each
    of them; 2/8: two of eight), and B's gradient reduce-scatter seconds."""

    gather_s: float = 0.0
    gathers_per_f: float = 0.0
    gathers_per_b: float = 0.0
    reduce_b_s: float = 0.0

    @property
    def gather_f_s(self) -> float:
        return self.gathers_per_f * self.gather_s

    @property
    def gather_b_s(self) -> float:
        return self.gathers_per_b * self.gather_s

    @property
    def backward_s(self) -> float:
        return self.gather_b_s + self.reduce_b_s

    @property
    def total_s(self) -> float:
        return self.gather_f_s + self.backward_s


def microbatch_dp_traffic(
    cfg: ParallelConfig, cluster: ClusterSpec, train: TrainSpec, st: DpStage, stack: StackSpec, network: Network,
    gathers: tuple[float, float] | None = None,
) -> MicrobatchDpTraffic:
    """Data-parallel seconds inside one microbatch's F and B of a stage (``microbatch_dp_ops``). Dense
    parameters move over the dp x cp group, routed experts over theirs
    (``costmodels.data_parallel.stage_zero3_gather_s``). ``gathers``: the stage's gathers per microbatch in F
    and in B where they are counted on the action list (``zero3_gathers_per_microbatch``); else one in each."""
    ops = microbatch_dp_ops(cfg, stack)
    if ops is None:
        return MicrobatchDpTraffic()
    per_f, per_b = gathers or (1.0, 1.0 if ops.gather_in_b else 0.0)
    reduce = 0.0
    if ops.reduce_in_b:
        reduce = stage_reduce_scatter_s(cluster, cfg, st.rank, st.params.dense, st.params.expert,
                                        stack.grad_reduce_bytes_per_param(train.precision), network, _pieces(cfg, st, stack))
    return MicrobatchDpTraffic(_stage_gather_s(cfg, cluster, train, st, stack, network), per_f, per_b, reduce)


def _pieces(cfg: ParallelConfig, st: DpStage, stack: StackSpec) -> tuple[int, int]:
    """The collectives a stage's parameters move in (``stage_pieces``: FSDP2 one per unit)."""
    return stage_pieces(stack.overlap, cfg, st.params.dense, st.params.expert, fsdp_units_of(st.layout, st.moe_layers))


def _stage_gather_s(cfg: ParallelConfig, cluster: ClusterSpec, train: TrainSpec, st: DpStage, stack: StackSpec,
                    network: Network) -> float:
    """One all-gather of a stage's parameters at the precision the stack computes in, dense over the dp x cp group
    and routed experts over theirs (``stage_zero3_gather_s``)."""
    return stage_zero3_gather_s(cluster, cfg, st.rank, st.params.dense, st.params.expert,
                                bytes_per_element(stack.held_precision(train.precision)), network, _pieces(cfg, st, stack))


def _gather_copy_s(cluster: ClusterSpec, train: TrainSpec, st: DpStage, stack: StackSpec) -> float:
    """FSDP2's copy of one gather's parameters out of the all-gather buffer (p bytes read and written each)."""
    return memory_bound_time_s(cluster, 2 * bytes_per_element(stack.held_precision(train.precision))
                               * (st.params.dense + st.params.expert))


def mean_gathering_pass_extra_s(pass_s: float, gather_s: float, gathers_per_pass: float, beside_s: float = 0.0) -> float:
    """What gathers add to a stage's pass on average (``overlapped_pass_s``), where ``gathers_per_pass`` of its
    passes each run one whole gather of ``gather_s`` and every pass runs ``beside_s`` of other collectives: a
    gathering pass is slowed by, or waits for, its whole gather (the warm-up forwards of a pipeline at ZeRO 3),
    which an average gather per pass would hide. More than one gather per pass: each pass runs that many.
    Increasing in ``gathers_per_pass`` and ``gather_s``."""
    plain = overlapped_pass_s(pass_s, beside_s)
    if gathers_per_pass > 1.0:
        return overlapped_pass_s(pass_s, gathers_per_pass * gather_s + beside_s) - pass_s
    gathering = overlapped_pass_s(pass_s, gather_s + beside_s)
    return gathers_per_pass * gathering + (1.0 - gathers_per_pass) * plain - pass_s


def dp_traffic_extra_s(cluster: ClusterSpec, stack: StackSpec, f: float, backward: float,
                        traffic: MicrobatchDpTraffic) -> tuple[float, float]:
    """What a microbatch's data-parallel traffic adds to its F and to its backward (B + W, ``backward`` seconds of
    compute), on average over the stage's microbatches (``mean_gathering_pass_extra_s``). Where comm overlaps
    compute each collective runs under its pass, which it slows (``costmodels.overlap.overlapped_pass_s``),
    except the backward's gathers where the stack issues them only after each unit's gradients
    (``StackOverlap.backward_gather`` after_gradients, FSDP1's BACKWARD_POST): those wait on the critical path.
    On a CPU node every collective is exposed."""
    if not comm_overlaps_compute(cluster):
        return traffic.gather_f_s, traffic.backward_s
    extra_f = mean_gathering_pass_extra_s(f, traffic.gather_s, traffic.gathers_per_f)
    if stack.overlap.backward_gather == "after_gradients":
        return extra_f, overlapped_pass_s(backward, traffic.reduce_b_s) - backward + traffic.gather_b_s
    return extra_f, mean_gathering_pass_extra_s(backward, traffic.gather_s, traffic.gathers_per_b, traffic.reduce_b_s)


def fsdp_copy_s(cfg: ParallelConfig, cluster: ClusterSpec, train: TrainSpec, st: DpStage,
                 stack: StackSpec, gathers: tuple[float, float] | None = None) -> tuple[float, float]:
    """FSDP2's copies on the compute stream inside one microbatch's F and B of a stage
    (``StackKernels.fsdp_copies``), for the operations ``microbatch_dp_ops`` says run: each gathered parameter
    copied out of the all-gather buffer (p bytes read and written) per gather; each unsharded gradient copied
    into the reduce-scatter buffer at the reduce dtype (p + r bytes); priced by bytes (``memory_bound_time_s``).
    Accelerators only: on CPU ranks ``ppplan profile`` measures FSDP's host work per unit, copies included
    (``costmodels.runtime_costs.fsdp_host_s``). ``gathers`` as ``microbatch_dp_traffic`` takes them."""
    ops = microbatch_dp_ops(cfg, stack)
    if ops is None or not stack.kernels.fsdp_copies or runs_on_cpu(cluster):
        return 0.0, 0.0
    gather = _gather_copy_s(cluster, train, st, stack)
    per_f, per_b = gathers or (1.0, 1.0 if ops.gather_in_b else 0.0)
    in_f, in_b = per_f * gather, per_b * gather
    if ops.reduce_in_b:
        p = bytes_per_element(stack.held_precision(train.precision))
        in_b += memory_bound_time_s(cluster, (p + stack.grad_reduce_bytes_per_param(train.precision))
                                    * (st.params.dense + st.params.expert))
    return in_f, in_b


def evicted_regathers(cfg: ParallelConfig, stack: StackSpec, precision: str) -> tuple[int, ...]:
    """Per virtual stage, the all-gathers of its parameters a step runs beyond the first, where torch's
    pipeline runtime evicts FSDP-unsharded stages (``costmodels.memory.evicts_unsharded_stages``, the rule the
    memory side takes too), at ZeRO 0-2, whose units stay unsharded between their actions; at ZeRO 3 the lowering's gathers are counted
    with FSDP2's own (``zero3_gathers_per_microbatch``). Empty where none: at most three stages per rank, or
    another runtime."""
    if cfg.zero == 3 or not evicts_unsharded_stages(stack, cfg.pp, cfg.v, cfg.dp * cfg.cp, cfg.zero, precision):
        return ()
    counts = unshards_per_stage(_action_list(cfg))
    extra = tuple(max(0, c - 1) for c in counts)
    return extra if any(extra) else ()


def regather_traffic(cfg: ParallelConfig, cluster: ClusterSpec, train: TrainSpec, st: DpStage, stack: StackSpec,
                     network: Network, regathers: int) -> tuple[MicrobatchDpTraffic, float]:
    """(the gathers, FSDP2's copy seconds per microbatch) that ``regathers`` extra unshards of a stage add to its
    forwards: each gathers the stage's parameters at the precision the stack computes in, dense over the dp x cp
    group and routed experts over theirs (``stage_zero3_gather_s``; none at ZeRO 0, where ppplan's runtime
    shards each replica over one rank), and copies them out of the gather buffer (``fsdp_copy_s``'s 2 p bytes per
    parameter, accelerators only). The runtime issues each asynchronously when the stage enters the look-ahead
    and waits for it in the stage's next action; charged to ``regathers`` of the stage's ``num_microbatches``
    forwards (``dp_traffic_extra_s``)."""
    if regathers <= 0:
        return MicrobatchDpTraffic(), 0.0
    share = regathers / cfg.num_microbatches
    gather = _stage_gather_s(cfg, cluster, train, st, stack, network) if cfg.zero > 0 else 0.0
    copy = _gather_copy_s(cluster, train, st, stack) if stack.kernels.fsdp_copies and not runs_on_cpu(cluster) else 0.0
    return MicrobatchDpTraffic(gather, share), share * copy


def zero3_gathers_per_microbatch(cfg: ParallelConfig, stack: StackSpec, precision: str,
                                 exact: bool = True) -> tuple[tuple[float, float], ...]:
    """Per virtual stage, the all-gathers per microbatch its forwards and its backwards wait for, where FSDP2
    wraps the stages at ZeRO 3 under torch's pipelining (``costmodels.schedules.fsdp_lowering.
    zero3_gathers_per_stage``: about one per microbatch, not one per pass, since a backward leaves its stage
    unsharded for the forward after it). Without ``exact`` (a bounding pricer, which generates no action list)
    a lower bound: each stage's first forward gathers, and the backward after its last forward (which
    resharded it) gathers, or an UNSHARD before it does. Empty where the pipeline does not decide: ZeRO < 3, no
    pipeline, another runtime."""
    if cfg.zero != 3 or cfg.pp == 1 or not _torch_lowers_fsdp(cfg, stack, precision):
        return ()
    m = cfg.num_microbatches
    if not exact:
        return ((1.0 / m, 1.0 / m),) * cfg.num_stages
    counts = zero3_gathers_per_stage(_action_list(cfg))
    return tuple((f / m, b / m) for f, b in counts)


def _torch_lowers_fsdp(cfg: ParallelConfig, stack: StackSpec, precision: str) -> bool:
    """Whether torch's pipeline runtime runs the stages FSDP2-wrapped, gathering as its action list says: stages
    FSDP2 wraps on torch's pipelining without a per-microbatch sync (``gradients_held_per_stage``)."""
    return gradients_held_per_stage(stack, cfg.pp, cfg.dp * cfg.cp, cfg.zero, precision)


def _action_list(cfg: ParallelConfig) -> Schedule:
    """The action list the configuration runs (generated, or its custom CSV)."""
    return schedule_of(cfg.schedule, cfg.pp, cfg.v, cfg.num_microbatches, cfg.schedule_csv)
