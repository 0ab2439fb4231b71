"""Runtime rules: the one place that says which configurations can run.

The search enumerates only configurations these rules accept, and the launcher
checks a plan with the same functions before it starts a process, so the
planner never prices something the runtime refuses. Rules can differ per target
runtime (``torch``: our launcher on torch.distributed.pipelining; ``megatron``:
Megatron-LM); each message says how to fix the input.

Sources: torch 2.13 ``torch/distributed/pipelining/schedules.py`` (Schedule1F1B
needs n_microbatches >= stages; Interleaved1F1B and InterleavedZeroBubble need
n_microbatches % max(1, n_microbatches // pp) == 0, LoopedBFS does not; ZBV and
DualPipeV need exactly two stages per rank in V placement; DualPipeV needs
n_microbatches >= 2 * pp; ZBV accepts any n_microbatches) and Megatron-LM's
``--num-layers-per-virtual-pipeline-stage`` checks (interleaving needs the
microbatch count to be a multiple of pp).
"""

from __future__ import annotations

from typing import Literal

from costmodels.errors import PlanError
from profiles.schema import ModelSpec, ParallelConfig, TrainSpec

Target = Literal["torch", "megatron"]
TARGETS: tuple[str, ...] = ("torch", "megatron")

SINGLE_STAGE_SCHEDULES = frozenset({"gpipe", "1f1b", "zb-h1", "zb-h2"})
LOOPED_SCHEDULES = frozenset({"interleaved-1f1b", "looped-bfs", "interleaved-zb"})
# torch's depth-first looped schedules group microbatches in rounds of max(1, M // pp).
ROUNDS_SCHEDULES = frozenset({"interleaved-1f1b", "interleaved-zb"})
V_SCHEDULES = frozenset({"zbv", "dualpipev"})
SPLIT_BACKWARD_SCHEDULES = frozenset({"zb-h1", "zb-h2", "interleaved-zb", "zbv", "dualpipev"})
SIMULATED_ONLY_SCHEDULES = frozenset({"chimera"})
RUNNABLE_SCHEDULES: dict[str, frozenset[str]] = {
    "torch": frozenset(
        {"gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "interleaved-zb", "zbv", "dualpipev",
         "zb-h1", "zb-h2", "custom"}
    ),
    "megatron": frozenset({"1f1b", "interleaved-1f1b"}),
}
MAX_ZERO: dict[str, int] = {"torch": 3, "megatron": 1}


def interleaved_rounds(num_microbatches: int, pp: int) -> int:
    """torch's ``number_of_rounds`` for looped schedules."""
    return max(1, num_microbatches // pp)


def schedule_shape_violations(schedule: str, pp: int, v: int, num_microbatches: int) -> list[str]:
    """What the schedule itself needs of (pp, v, M), whatever the target; empty when it can be built.

    Checked against torch 2.13 by constructing every schedule class over a grid
    of (pp, v, M): Schedule1F1B raises for M < pp; ScheduleInterleaved1F1B and
    ScheduleInterleavedZeroBubble raise unless M % max(1, M // pp) == 0;
    ScheduleLoopedBFS, ScheduleGPipe and ScheduleZBVZeroBubble accept any M
    (ZB-V pads to 2 pp - 1 microbatches and drops the padding); ScheduleDualPipeV
    raises for M < 2 pp (its stage count). zb-h1 and zb-h2 run through the CSV
    runtime, which needs nothing of M.
    """
    problems: list[str] = []
    m = num_microbatches
    if schedule in SINGLE_STAGE_SCHEDULES | SIMULATED_ONLY_SCHEDULES and v != 1:
        problems.append(f"schedule '{schedule}' places one stage per rank: use --v 1 or an interleaved schedule")
    if schedule in LOOPED_SCHEDULES and v < 2:
        problems.append(f"schedule '{schedule}' needs v >= 2 virtual stages per rank (got v={v}); use 1f1b for v=1")
    if schedule in V_SCHEDULES and v != 2:
        problems.append(f"schedule '{schedule}' needs exactly two stages per rank in V placement: use --v 2")
    if pp > 1 and schedule == "1f1b" and m < pp:
        problems.append(f"schedule '1f1b' needs at least pp={pp} microbatches (got {m}): raise the global batch or lower mbs/dp")
    if schedule == "dualpipev" and m < 2 * pp:
        problems.append(f"schedule 'dualpipev' needs at least 2*pp={2 * pp} microbatches (got {m}): raise the global batch or lower mbs/dp")
    if schedule in ROUNDS_SCHEDULES and pp > 1 and m % interleaved_rounds(m, pp):
        problems.append(
            f"schedule '{schedule}' in torch needs num_microbatches ({m}) to be a multiple of "
            f"max(1, M // pp) = {interleaved_rounds(m, pp)}; pick M from the multiples of pp or M <= pp"
        )
    return problems


def schedule_violations(schedule: str, pp: int, v: int, num_microbatches: int, target: Target = "torch") -> list[str]:
    """Why ``schedule`` cannot run with this (pp, v, M) on ``target``; empty when it can."""
    problems: list[str] = []
    m = num_microbatches
    if schedule in SIMULATED_ONLY_SCHEDULES:
        problems.append(f"schedule '{schedule}' is simulated only (no runtime yet); pick another schedule to launch")
    elif schedule not in RUNNABLE_SCHEDULES[target]:
        problems.append(f"schedule '{schedule}' cannot run on {target}; use one of {sorted(RUNNABLE_SCHEDULES[target])}")
    problems += schedule_shape_violations(schedule, pp, v, m)
    if schedule in LOOPED_SCHEDULES and pp > 1 and target == "megatron" and m % pp:
        problems.append(f"interleaved 1F1B in Megatron-LM needs num_microbatches ({m}) to be a multiple of pp ({pp})")
    return problems


def _degree_violations(model: ModelSpec, train: TrainSpec, gpus: int, cfg: ParallelConfig) -> list[str]:
    problems: list[str] = []
    if cfg.tp * cfg.pp * cfg.dp != gpus:
        problems.append(f"tp*pp*dp = {cfg.tp}*{cfg.pp}*{cfg.dp} = {cfg.tp * cfg.pp * cfg.dp} but there are {gpus} GPUs: pick degrees whose product is {gpus}")
    if model.num_attention_heads % cfg.tp:
        problems.append(f"tp={cfg.tp} does not divide num_attention_heads={model.num_attention_heads}: pick tp from its divisors")
    if model.kv_heads % cfg.tp:
        problems.append(f"tp={cfg.tp} does not divide num_key_value_heads={model.kv_heads}: pick tp from its divisors")
    if model.ffn_size % cfg.tp:
        problems.append(f"tp={cfg.tp} does not divide ffn_hidden_size={model.ffn_size}")
    if train.global_batch % (cfg.dp * cfg.mbs):
        problems.append(f"global batch {train.global_batch} is not divisible by dp*mbs = {cfg.dp}*{cfg.mbs}: change the batch, dp or mbs")
    elif cfg.num_microbatches != train.global_batch // (cfg.dp * cfg.mbs):
        problems.append(f"num_microbatches {cfg.num_microbatches} != global_batch/(dp*mbs) = {train.global_batch // (cfg.dp * cfg.mbs)}")
    if cfg.sequence_parallel and cfg.tp == 1:
        problems.append("sequence parallel needs tp > 1: drop --sequence-parallel or raise --tp")
    return problems


def _stage_violations(model: ModelSpec, cfg: ParallelConfig) -> list[str]:
    problems: list[str] = []
    stages = cfg.pp * cfg.v
    if model.num_layers < stages:
        problems.append(f"{model.num_layers} layers cannot fill pp*v = {stages} stages: lower pp or v")
        return problems
    if len(cfg.stage_layers) != stages:
        problems.append(f"stage_layers has {len(cfg.stage_layers)} entries but pp*v = {stages}")
    elif sum(cfg.stage_layers) != model.num_layers:
        problems.append(f"stage_layers sum to {sum(cfg.stage_layers)} but the model has {model.num_layers} layers")
    if isinstance(cfg.recompute, list) and len(cfg.recompute) != stages:
        problems.append(f"recompute lists {len(cfg.recompute)} stages but pp*v = {stages}")
    return problems


def zero_violations(zero: int, pp: int, schedule: str, target: Target = "torch") -> list[str]:
    """ZeRO stages the target cannot run with this pipeline."""
    if zero > MAX_ZERO[target]:
        return [f"zero={zero} is not available on {target} (max {MAX_ZERO[target]})"]
    if target == "torch" and zero == 3 and pp > 1 and schedule in SPLIT_BACKWARD_SCHEDULES:
        # Found by the launcher's loss-match tests (torch 2.13): FSDP2 with
        # reshard_after_forward=True frees the gathered weights after each
        # forward, and a deferred weight-gradient pass (W) runs outside any
        # module hook that would re-gather them, so its gradients are wrong.
        return [
            f"zero=3 cannot run with the split-backward schedule '{schedule}' on torch "
            "(FSDP2 frees the gathered weights before the deferred W pass): use --zero 2 or a schedule without split backward"
        ]
    return []


def recompute_violations(recompute: str | list[str], pp: int, schedule: str, target: Target = "torch") -> list[str]:
    """Recomputation the target cannot run well with this schedule."""
    kinds = set(recompute) if isinstance(recompute, list) else {recompute}
    if target == "torch" and "full" in kinds and pp > 1 and schedule in SPLIT_BACKWARD_SCHEDULES | {"custom"}:
        # Measured by the profiler (torch 2.13): the split weight-gradient pass re-runs a
        # checkpointed layer's forward once per parameter group (~10x the unsplit W).
        return [
            f"full recompute with the split-backward schedule '{schedule}' re-runs each layer's forward once per "
            "parameter group in torch's W pass: use --recompute selective|none or a schedule without split backward"
        ]
    return []


def config_violations(
    model: ModelSpec, train: TrainSpec, gpus: int, cfg: ParallelConfig, target: Target = "torch"
) -> list[str]:
    """Every reason ``cfg`` cannot run on ``target``; empty when it can."""
    problems = _degree_violations(model, train, gpus, cfg) + _stage_violations(model, cfg)
    if cfg.pp == 1 and cfg.schedule not in {"1f1b", "gpipe"}:
        problems.append(f"pp=1 has no pipeline: use schedule 1f1b (got '{cfg.schedule}')")
    elif cfg.pp > 1:
        problems += schedule_violations(cfg.schedule, cfg.pp, cfg.v, cfg.num_microbatches, target)
    problems += zero_violations(cfg.zero, cfg.pp, cfg.schedule, target)
    problems += recompute_violations(cfg.recompute, cfg.pp, cfg.schedule, target)
    if cfg.schedule == "custom" and cfg.schedule_csv is None:
        problems.append("schedule 'custom' needs its action list in the plan (config.schedule_csv): "
                        "make one with `ppplan simulate plan.json --custom-out custom.json`")
    elif cfg.schedule != "custom" and cfg.schedule_csv is not None:
        problems.append(f"config.schedule_csv is only for schedule 'custom' (the plan says '{cfg.schedule}')")
    return problems


RUNNABLE_PRECISIONS: dict[str, frozenset[str]] = {
    "torch": frozenset({"fp32", "bf16"}),
    "megatron": frozenset({"fp32", "bf16", "fp16", "fp8"}),
}


def precision_violations(precision: str, target: Target = "torch") -> list[str]:
    """Why ``precision`` cannot run on ``target`` (the launcher's runtime has no fp16
    loss scaling and no fp8 GEMMs); kept out of ``config_violations`` so the search
    still plans fp16/fp8 for targets that run them (emit Megatron-LM)."""
    if precision in RUNNABLE_PRECISIONS[target]:
        return []
    runnable = ", ".join(sorted(RUNNABLE_PRECISIONS[target]))
    return [f"precision '{precision}' cannot run on {target} (runs {runnable}): plan with --precision bf16, or emit a config for Megatron-LM"]


def check_config(model: ModelSpec, train: TrainSpec, gpus: int, cfg: ParallelConfig, target: Target = "torch") -> None:
    """Raise ``PlanError`` with the first violated rule."""
    problems = config_violations(model, train, gpus, cfg, target)
    if problems:
        raise PlanError(problems[0])
