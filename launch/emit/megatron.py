"""Megatron-LM ``pretrain_gpt.py`` arguments for a plan.

Option names and choices are those of NVIDIA/Megatron-LM
``megatron/training/arguments.py`` at d98e8a6 (2026-08-22), listed with their
source in ``launch/options/megatron_args.txt`` (the tests check every emitted
flag against it). What Megatron-LM cannot express is emitted as the closest
config with a warning, and the planner's Megatron rules
(``costmodels.rules``, target ``megatron``) are re-checked on what was emitted:

- schedules: Megatron-LM trains with 1F1B (v = 1) or interleaved 1F1B (v > 1)
  only (``megatron/core/pipeline_parallel/schedules.py``);
- ZeRO: ``--use-distributed-optimizer`` shards optimizer state (ZeRO-1) only;
- recompute: one granularity for every stage;
- position embeddings: no ALiBi.
"""

from __future__ import annotations

from costmodels.schedules.registry import schedule_spec
from launch.emit.common import (
    EmitContext,
    Rendered,
    comment_block,
    header_lines,
    recompute_warning,
    rule_warnings,
    shell_command,
    strongest_recompute,
)
from launch.emit.experts import megatron_model_args, megatron_parallel_args
from launch.emit.megatron_cuts import Arg, pipeline_args
from launch.emit.torchrun import torchrun_launcher_args
from profiles.loader import load_stack
from profiles.schema import ModelSpec, ParallelConfig, Plan

VOCAB_PAD_CANDIDATES = (128, 64, 32, 16, 8, 4, 2, 1)


def megatron_schedule(cfg: ParallelConfig) -> tuple[str, list[str]]:
    """The Megatron-LM schedule closest to the plan's (same v), with a warning when it differs."""
    target = "1f1b" if cfg.v == 1 else "interleaved-1f1b"
    if cfg.pp == 1 or cfg.schedule in load_stack("megatron-core").schedules:
        return cfg.schedule if cfg.pp > 1 else "1f1b", []
    placement = ""
    if schedule_spec(cfg.schedule).placement == "v":
        placement = " and Megatron places virtual stages round-robin (loop), not in a V"
    return target, [
        f"Megatron-LM has no '{cfg.schedule}' schedule; emitted {target} with v={cfg.v}{placement}: "
        "the bubble, step time and in-flight activation memory differ from the plan's"
    ]


def parallel_args(cfg: ParallelConfig, global_batch: int) -> list[Arg]:
    args: list[Arg] = [
        ("--tensor-model-parallel-size", str(cfg.tp)),
        ("--pipeline-model-parallel-size", str(cfg.pp)),
        ("--micro-batch-size", str(cfg.mbs)),
        ("--global-batch-size", str(global_batch)),
    ]
    if cfg.sequence_parallel:
        args.append(("--sequence-parallel", None))
    return args


def recompute_args(cfg: ParallelConfig) -> list[Arg]:
    """Selective = Korthikanti et al. 2022's attention-core recompute (Megatron's default module);
    full = every layer's input checkpointed, one layer per checkpoint (method uniform, 1 layer)."""
    kind = strongest_recompute(cfg)
    if kind == "selective":
        return [("--recompute-granularity", "selective")]
    if kind == "full":
        return [("--recompute-granularity", "full"), ("--recompute-method", "uniform"), ("--recompute-num-layers", "1")]
    return []


def zero_args(cfg: ParallelConfig) -> tuple[list[Arg], list[str]]:
    if cfg.zero == 0:
        return [], []
    warnings = []
    if cfg.zero >= 2:
        sharded = "gradients and parameters" if cfg.zero == 3 else "gradients"
        warnings.append(
            f"Megatron-LM's distributed optimizer shards optimizer state only (ZeRO-1); the plan's zero={cfg.zero} "
            f"also shards {sharded}, so each rank holds more memory than planned"
        )
    return [("--use-distributed-optimizer", None)], warnings


def precision_args(precision: str) -> list[Arg]:
    """bf16/fp16 mixed precision; fp8 = Transformer Engine GEMMs in fp8 (E4M3 forward, E5M2 backward) over bf16."""
    if precision == "bf16":
        return [("--bf16", None)]
    if precision == "fp16":
        return [("--fp16", None)]
    if precision == "fp8":
        return [("--bf16", None), ("--fp8-format", "hybrid")]
    return []


def vocab_args(model: ModelSpec, tp: int) -> tuple[list[Arg], list[str]]:
    """Megatron pads the vocabulary to a multiple of make-vocab-size-divisible-by * tp; pick the divisor that pads nothing."""
    args: list[Arg] = [("--tokenizer-type", "NullTokenizer"), ("--vocab-size", str(model.vocab_size))]
    for divisor in VOCAB_PAD_CANDIDATES:
        if model.vocab_size % (divisor * tp) == 0:
            return args + ([] if divisor == 128 else [("--make-vocab-size-divisible-by", str(divisor))]), []
    padded = -(-model.vocab_size // tp) * tp
    return args + [("--make-vocab-size-divisible-by", "1")], [
        f"Megatron-LM pads the vocabulary {model.vocab_size} to {padded} (a multiple of tp={tp}); "
        "the embedding and logits are that much larger than planned"
    ]


def model_args(model: ModelSpec, seq_len: int) -> tuple[list[Arg], list[str]]:
    """Shape flags (names as in ``megatron/training/arguments.py`` and TransformerConfig)."""
    args: list[Arg] = [
        ("--num-layers", str(model.num_layers)),
        ("--hidden-size", str(model.hidden_size)),
        ("--num-attention-heads", str(model.num_attention_heads)),
        ("--ffn-hidden-size", str(model.ffn_size)),
        ("--seq-length", str(seq_len)),
        ("--max-position-embeddings", str(max(seq_len, model.seq_len))),
    ]
    if model.kv_heads != model.num_attention_heads:
        args += [("--group-query-attention", None), ("--num-query-groups", str(model.kv_heads))]
    if model.activation == "swiglu":
        args.append(("--swiglu", None))
    args.append(("--normalization", "RMSNorm" if model.norm == "rmsnorm" else "LayerNorm"))
    warnings: list[str] = []
    position = {"learned": "learned_absolute", "rope": "rope"}.get(model.position_embedding or "", "none")
    if model.position_embedding == "alibi":
        warnings.append(
            "Megatron-LM has no ALiBi; emitted --position-embedding-type none (no position parameters, as with ALiBi), "
            "so attention gets no position bias: add ALiBi yourself for a faithful model"
        )
    args.append(("--position-embedding-type", position))
    if not model.tie_embeddings:
        args.append(("--untie-embeddings-and-output-weights", None))
    if not model.linear_bias:
        args.append(("--disable-bias-linear", None))
    return args, warnings


def megatron_args(plan: Plan, *, steps: int, lr: float, allow_layout: bool = True) -> tuple[list[Arg], list[str]]:
    """Every ``pretrain_gpt.py`` flag for ``plan`` (in a stable order) and the warnings."""
    cfg = plan.config
    schedule, warnings = megatron_schedule(cfg)
    cuts, emitted_layers, cut_warnings = pipeline_args(cfg.stage_layers, cfg.pp, cfg.v, allow_layout)
    zero, zero_warnings = zero_args(cfg)
    shape, shape_warnings = model_args(plan.model, plan.train.seq_len)
    vocab, vocab_warnings = vocab_args(plan.model, cfg.tp)
    expert_context, expert_warnings, forced_sp = megatron_parallel_args(cfg)
    args = parallel_args(cfg, plan.train.global_batch) + expert_context + cuts + recompute_args(cfg) + zero
    args += precision_args(plan.train.precision) + shape + megatron_model_args(plan.model) + vocab
    args += [("--mock-data", None), ("--train-iters", str(steps)), ("--lr", f"{lr:g}"), ("--log-interval", "1")]
    emitted = cfg.model_copy(
        update={
            "schedule": schedule,
            "zero": min(cfg.zero, 1),
            "stage_layers": emitted_layers,
            "recompute": strongest_recompute(cfg),
            "sequence_parallel": cfg.sequence_parallel or forced_sp,
        }
    )
    warnings += expert_warnings + cut_warnings + recompute_warning(cfg, "Megatron-LM") + zero_warnings + shape_warnings + vocab_warnings
    warnings += rule_warnings(plan, emitted, "megatron-core", "Megatron-LM")
    return args, warnings


def flat_args(args: list[Arg]) -> list[str]:
    return [token for flag, value in args for token in ((flag,) if value is None else (flag, value))]


def render_megatron(ctx: EmitContext) -> Rendered:
    """``megatron_args.txt`` (one flag per line) and ``megatron.sh`` (torchrun + pretrain_gpt.py with them)."""
    steps = ctx.options.steps if ctx.options.steps is not None else 100
    args, warnings = megatron_args(ctx.plan, steps=steps, lr=ctx.options.lr, allow_layout=ctx.options.megatron_layout)
    head = header_lines(ctx.plan, "Megatron-LM pretrain_gpt.py arguments", warnings)
    args_text = comment_block(head) + shell_command(flat_args(args), indent="").replace(" \\\n", "\n")
    launcher = torchrun_launcher_args(ctx.layout, '"${MASTER_ADDR}:${MASTER_PORT}"')
    env = "export CUDA_DEVICE_MAX_CONNECTIONS=1\n" if ctx.plan.config.tp > 1 else ""
    script = (
        "#!/usr/bin/env bash\n"
        + comment_block(head + ["MEGATRON_LM: a Megatron-LM checkout; run on every node with MASTER_ADDR = node 0"])
        + "set -euo pipefail\n"
        + 'MEGATRON_LM="${MEGATRON_LM:?set MEGATRON_LM to a Megatron-LM checkout}"\n'
        + 'MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"\n'
        + f'MASTER_PORT="${{MASTER_PORT:-{ctx.options.master_port}}}"\n'
        + env
        + "exec "
        + shell_command(launcher + ['"${MEGATRON_LM}/pretrain_gpt.py"'] + flat_args(args))
    )
    return Rendered(
        files={"megatron_args.txt": args_text, "megatron.sh": script}, executable={"megatron.sh"}, warnings=warnings
    )
