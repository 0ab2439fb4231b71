"""Runtime rules: the one place that says which configurations can run.

The search enumerates only configurations these rules accept, and the launcher
checks a plan with the same functions before it starts a process, so the
planner never prices something the runtime refuses. Rules can differ per target
runtime (``torch``: our launcher on torch.distributed.pipelining; ``megatron``:
Megatron-LM); each message says how to fix the input.

Sources: torch 2.13 ``torch/distributed/pipelining/schedules.py`` (Schedule1F1B
needs n_microbatches >= stages; interleaved schedules need
n_microbatches % max(1, n_microbatches // pp) == 0; ZBV and DualPipeV need
exactly two stages per rank in V placement; DualPipeV needs n_microbatches >=
2 * pp) and Megatron-LM's ``--num-layers-per-virtual-pipeline-stage`` checks
(interleaving needs the microbatch count to be a multiple of pp).
"""

from __future__ import annotations

from typing import Literal

from costmodels.errors import PlanError
from profiles.schema import ModelSpec, ParallelConfig, TrainSpec

Target = Literal["torch", "megatron"]
TARGETS: tuple[str, ...] = ("torch", "megatron")

SINGLE_STAGE_SCHEDULES = frozenset({"gpipe", "1f1b", "zb-h1", "zb-h2"})
LOOPED_SCHEDULES = frozenset({"interleaved-1f1b", "looped-bfs", "interleaved-zb"})
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


def schedule_violations(schedule: str, pp: int, v: int, num_microbatches: int, target: Target = "torch") -> list[str]:
    """Why ``schedule`` cannot run with this (pp, v, M) on ``target``; empty when it can."""
    problems: list[str] = []
    m = num_microbatches
    if schedule in SIMULATED_ONLY_SCHEDULES:
        problems.append(f"schedule '{schedule}' is simulated only (no runtime yet); pick another schedule to launch")
    elif schedule not in RUNNABLE_SCHEDULES[target]:
        problems.append(f"schedule '{schedule}' cannot run on {target}; use one of {sorted(RUNNABLE_SCHEDULES[target])}")
    if schedule in SINGLE_STAGE_SCHEDULES and v != 1:
        problems.append(f"schedule '{schedule}' places one stage per rank: use --v 1 or an interleaved schedule")
    if schedule in LOOPED_SCHEDULES and v < 2:
        problems.append(f"schedule '{schedule}' needs v >= 2 virtual stages per rank (got v={v}); use 1f1b for v=1")
    if schedule in V_SCHEDULES and v != 2:
        problems.append(f"schedule '{schedule}' needs exactly two stages per rank in V placement: use --v 2")
    if pp > 1 and schedule in {"1f1b", "zb-h1", "zb-h2"} and m < pp:
        problems.append(f"schedule '{schedule}' needs at least pp={pp} microbatches (got {m}): raise the global batch or lower mbs/dp")
    if schedule == "dualpipev" and m < 2 * pp:
        problems.append(f"schedule 'dualpipev' needs at least 2*pp={2 * pp} microbatches (got {m})")
    if schedule in LOOPED_SCHEDULES and pp > 1:
        rounds = interleaved_rounds(m, pp)
        if target == "torch" and m % rounds:
            problems.append(
                f"schedule '{schedule}' in torch needs num_microbatches ({m}) to be a multiple of "
                f"max(1, M // pp) = {rounds}; pick M from the multiples of pp or M <= pp"
            )
        if target == "megatron" and m % pp:
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


def config_violations(
    model: ModelSpec, train: TrainSpec, gpus: int, cfg: ParallelConfig, target: Target = "torch"
) -> list[str]:
    """Every reason ``cfg`` cannot run on ``target``; empty when it can."""
    problems = _degree_violations(model, train, gpus, cfg) + _stage_violations(model, cfg)
    if cfg.pp == 1 and cfg.schedule not in {"1f1b", "gpipe"}:
        problems.append(f"pp=1 has no pipeline: use schedule 1f1b (got '{cfg.schedule}')")
    elif cfg.pp > 1:
        problems += schedule_violations(cfg.schedule, cfg.pp, cfg.v, cfg.num_microbatches, target)
    if cfg.zero > MAX_ZERO[target]:
        problems.append(f"zero={cfg.zero} is not available on {target} (max {MAX_ZERO[target]})")
    return problems


def check_config(model: ModelSpec, train: TrainSpec, gpus: int, cfg: ParallelConfig, target: Target = "torch") -> None:
    """Raise ``PlanError`` with the first violated rule."""
    problems = config_violations(model, train, gpus, cfg, target)
    if problems:
        raise PlanError(problems[0])
