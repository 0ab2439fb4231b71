"""Runtime rules: the one place that says which configurations can run.

The search enumerates only configurations these rules accept, and the launcher
checks a plan with the same functions before it starts a process, so the
planner never prices something the runtime refuses. Rules can differ per target
runtime (``torch``: our launcher on torch.distributed.pipelining; ``megatron``:
Megatron-LM); each message says how to fix the input.

What each schedule needs of (pp, v, M) and which runtimes run it are the
schedule registry's facts (``costmodels.schedules.registry``, with its torch
sources); this module adds the rules of the model, the degrees, ZeRO and
recomputation, and Megatron-LM's ``--num-layers-per-virtual-pipeline-stage``
check (interleaving needs the microbatch count to be a multiple of pp).
"""

from __future__ import annotations

from typing import Literal

from costmodels.schedules.registry import (
    LOOPED_SCHEDULES,
    runnable_on,
    schedule_spec,
    shape_violations,
)
from profiles.errors import PlanError
from profiles.schema import ModelSpec, ParallelConfig, TrainSpec

Target = Literal["torch", "megatron"]
TARGETS: tuple[str, ...] = ("torch", "megatron")
MAX_ZERO: dict[str, int] = {"torch": 3, "megatron": 1}


def schedule_violations(schedule: str, pp: int, v: int, num_microbatches: int, target: Target = "torch") -> list[str]:
    """Why ``schedule`` cannot run with this (pp, v, M) on ``target``; empty when it can."""
    problems: list[str] = []
    m = num_microbatches
    if schedule_spec(schedule).simulated_only:
        problems.append(f"schedule '{schedule}' is simulated only (no runtime yet); pick another schedule to launch")
    elif schedule not in runnable_on(target):
        problems.append(f"schedule '{schedule}' cannot run on {target}; use one of {sorted(runnable_on(target))}")
    problems += shape_violations(schedule, pp, v, m)
    if schedule in LOOPED_SCHEDULES and pp > 1 and target == "megatron" and m % pp:
        problems.append(f"interleaved 1F1B in Megatron-LM needs num_microbatches ({m}) to be a multiple of pp ({pp})")
    return problems


def tp_violations(model: ModelSpec, tp: int) -> list[str]:
    """Why ``tp`` ranks cannot split the model's heads, kv-heads and FFN evenly (Megatron-LM's
    column/row-parallel layers shard each of them over the TP group); empty when they can."""
    problems: list[str] = []
    if model.num_attention_heads % tp:
        problems.append(f"tp={tp} does not divide num_attention_heads={model.num_attention_heads}: pick tp from its divisors")
    if model.kv_heads % tp:
        problems.append(f"tp={tp} does not divide num_key_value_heads={model.kv_heads}: pick tp from its divisors")
    if model.ffn_size % tp:
        problems.append(f"tp={tp} does not divide ffn_hidden_size={model.ffn_size}")
    return problems


def _degree_violations(model: ModelSpec, train: TrainSpec, gpus: int, cfg: ParallelConfig) -> list[str]:
    problems: list[str] = []
    if cfg.world_size != gpus:
        problems.append(f"tp*pp*dp = {cfg.tp}*{cfg.pp}*{cfg.dp} = {cfg.world_size} but there are {gpus} GPUs: pick degrees whose product is {gpus}")
    problems += tp_violations(model, cfg.tp)
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
    if target == "torch" and zero == 3 and pp > 1 and schedule_spec(schedule).split_backward:
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
    if target == "torch" and "full" in kinds and pp > 1 and schedule_spec(schedule).split_backward:
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
