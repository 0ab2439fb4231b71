"""Megatron-LM ``pretrain_gpt.py`` arguments for a plan priced on a Megatron stack.

``megatron-core`` plans get the option names of NVIDIA/Megatron-LM
``megatron/training/arguments.py`` at d98e8a6 (2026-08-22), listed with their
source in ``launch/options/megatron_args.txt``; ``megatron-lm-2021`` plans get the
options of that era (``megatron/arguments.py`` at fc7f4f035a, 2022-09-30),
listed in ``launch/options/megatron_lm_2022_args.txt`` (the tests check every
emitted flag against its list). The plan keeps its stack's rules
(``launch.emit.common.check_stack``): 1F1B or interleaved 1F1B, ZeRO 0 or 1
(``--use-distributed-optimizer``), one recompute granularity. Every behaviour
the price assumed is a flag: the stack's overlaps (``StackSpec.overlap``:
``--overlap-grad-reduce`` and ``--overlap-param-gather`` for megatron-core,
nothing for 2021-22, which reduced after the backward) and its attention kernel.
What Megatron-LM cannot express about the model is a warning.
"""

from __future__ import annotations

from costmodels.schedules.registry import schedule_spec
from launch.emit.common import (
    EmitContext,
    Rendered,
    comment_block,
    header_lines,
    shell_command,
    strongest_recompute,
)
from launch.emit.experts import megatron_model_args, megatron_parallel_args
from launch.emit.megatron_cuts import Arg, pipeline_args
from launch.emit.torchrun import torchrun_launcher_args
from profiles.errors import PlanError
from profiles.loader import plan_stack
from profiles.schema import ModelSpec, ParallelConfig, Plan
from profiles.stack_schema import StackSpec

VOCAB_PAD_CANDIDATES = (128, 64, 32, 16, 8, 4, 2, 1)
MEGATRON_2022 = "megatron-lm-2021"  # the stack whose jobs get the 2022 option names
GPT2_VOCAB = 50257  # GPT-2 BPE (the --vocab-file Megatron-LM of 2021-22 trains GPT with)


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


def offload_args(cfg: ParallelConfig) -> list[Arg]:
    """Activation CPU offload of the first ``offload_layers`` layers (``costmodels.offload``): Megatron-Core's
    ``--cpu-offloading-num-layers``, which turns ``cpu_offloading`` on (activations only: weights off by default)."""
    return [("--cpu-offloading-num-layers", str(cfg.offload_layers))] if cfg.offload_layers else []


def recompute_args(cfg: ParallelConfig) -> list[Arg]:
    """Selective = Korthikanti et al. 2022's attention-core recompute (Megatron's default module);
    full = every layer's input checkpointed, one layer per checkpoint (method uniform, 1 layer)."""
    kind = strongest_recompute(cfg)
    if kind == "selective":
        return [("--recompute-granularity", "selective")]
    if kind == "full":
        return [("--recompute-granularity", "full"), ("--recompute-method", "uniform"), ("--recompute-num-layers", "1")]
    return []


def zero_args(cfg: ParallelConfig) -> list[Arg]:
    """ZeRO-1: the distributed optimizer (the stacks' rules allow no other ZeRO stage)."""
    return [("--use-distributed-optimizer", None)] if cfg.zero >= 1 else []


def overlap_args(cfg: ParallelConfig, stack: StackSpec) -> list[Arg]:
    """The overlaps the price assumed (``StackSpec.overlap``): the gradient reduce in buckets during the
    backward, the distributed optimizer's parameter all-gather during the forward (Megatron needs the
    distributed optimizer and --overlap-grad-reduce for it), TE's TP communication overlap (needs SP) and,
    for the combined 1F1B, the expert all-to-all overlap (``--overlap-moe-expert-parallel-comm``)."""
    args: list[Arg] = []
    if schedule_spec(cfg.schedule).overlaps_expert_comm:
        args.append(("--overlap-moe-expert-parallel-comm", None))
    if cfg.dp > 1 and stack.overlap.dp_grad_reduce == "bucketed":
        args.append(("--overlap-grad-reduce", None))
        if cfg.zero >= 1 and stack.overlap.param_gather == "overlapped":
            args.append(("--overlap-param-gather", None))
    if cfg.tp > 1 and cfg.sequence_parallel and stack.overlap.tp_comm == "overlapped":
        args.append(("--tp-comm-overlap", None))
    return args


def kernel_args(stack: StackSpec) -> list[Arg]:
    """The attention kernel the price assumed: Transformer Engine's flash attention, or unfused."""
    return [("--attention-backend", "flash" if stack.kernels.attention == "flash" else "unfused")]


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
    """Every ``pretrain_gpt.py`` flag for ``plan`` on its stack (in a stable order) and the warnings."""
    stack = plan_stack(plan)
    if stack.name == MEGATRON_2022:
        return megatron_2022_args(plan, steps=steps, lr=lr)
    cfg = plan.config
    cuts, _, cut_warnings = pipeline_args(cfg.stage_layers, cfg.pp, cfg.v, allow_layout, plan.model.mtp_layers)
    shape, shape_warnings = model_args(plan.model, plan.train.seq_len)
    vocab, vocab_warnings = vocab_args(plan.model, cfg.tp)
    expert_context, expert_warnings, _ = megatron_parallel_args(cfg)
    args = parallel_args(cfg, plan.train.global_batch) + expert_context + cuts + recompute_args(cfg) + zero_args(cfg)
    args += offload_args(cfg) + overlap_args(cfg, stack) + kernel_args(stack) + precision_args(plan.train.precision) + shape
    args += megatron_model_args(plan.model) + vocab
    args += [("--mock-data", None), ("--train-iters", str(steps)), ("--lr", f"{lr:g}"), ("--log-interval", "1")]
    return args, expert_warnings + cut_warnings + shape_warnings + vocab_warnings + _connection_warnings(cfg)


def _connection_warnings(cfg: ParallelConfig) -> list[str]:
    """Megatron-Core warns that on Hopper and earlier TP and CP want CUDA_DEVICE_MAX_CONNECTIONS=1 while the
    expert all-to-all overlap wants more (megatron/training/arguments.py @23e00ed0); the price assumes both."""
    if not schedule_spec(cfg.schedule).overlaps_expert_comm or (cfg.tp == 1 and cfg.cp == 1):
        return []
    return ["the combined 1F1B with tensor or context parallelism: on Hopper and earlier Megatron-Core asks for "
            "CUDA_DEVICE_MAX_CONNECTIONS=1 for TP/CP overlap but a larger value for the expert all-to-all overlap; "
            "the price assumes both overlaps at full speed"]


def megatron_2022_args(plan: Plan, *, steps: int, lr: float) -> tuple[list[Arg], list[str]]:
    """Flags of Megatron-LM as of 2022-09 (the ``megatron-lm-2021`` stack): uniform cuts
    (``--num-layers-per-virtual-pipeline-stage`` for interleaving), ``--recompute-granularity``,
    the distributed optimizer (from 2022-06), local DDP reducing after the backward (no overlap
    flags existed), GPT-2 BPE data files; learned positions, LayerNorm and GELU only."""
    cfg, model = plan.config, plan.model
    if cfg.offload_layers:
        raise PlanError("Megatron-LM of 2022 has no activation CPU offload (Megatron-Core's --cpu-offloading-num-layers "
                        "came in 2025): re-plan with --offload-layers 0 or --stack megatron-core")
    args = parallel_args(cfg, plan.train.global_batch)
    if cfg.v > 1:
        args.append(("--num-layers-per-virtual-pipeline-stage", str(cfg.stage_layers[0])))
    args += recompute_args(cfg) + zero_args(cfg) + [("--DDP-impl", "local")] + precision_args(plan.train.precision)
    args += [
        ("--num-layers", str(model.num_layers)), ("--hidden-size", str(model.hidden_size)),
        ("--num-attention-heads", str(model.num_attention_heads)), ("--ffn-hidden-size", str(model.ffn_size)),
        ("--seq-length", str(plan.train.seq_len)), ("--max-position-embeddings", str(max(plan.train.seq_len, model.seq_len))),
    ]  # fmt: skip
    vocab, warnings = gpt2_vocab_args(model, cfg.tp)
    args += vocab + [("--data-path", '"${DATA_PATH}"'), ("--train-iters", str(steps)), ("--lr", f"{lr:g}"), ("--log-interval", "1")]
    return args, warnings + era_model_warnings(model)


def gpt2_vocab_args(model: ModelSpec, tp: int) -> tuple[list[Arg], list[str]]:
    """GPT-2 BPE files; the vocabulary is padded to a multiple of make-vocab-size-divisible-by x tp:
    pick the divisor that pads 50257 to the plan's vocabulary, else say what it becomes."""
    args: list[Arg] = [("--tokenizer-type", "GPT2BPETokenizer"), ("--vocab-file", '"${VOCAB_FILE}"'),
                       ("--merge-file", '"${MERGE_FILE}"')]
    for divisor in VOCAB_PAD_CANDIDATES:
        if -(-GPT2_VOCAB // (divisor * tp)) * divisor * tp == model.vocab_size:
            return args + ([] if divisor == 128 else [("--make-vocab-size-divisible-by", str(divisor))]), []
    padded = -(-GPT2_VOCAB // (128 * tp)) * 128 * tp
    return args, [f"Megatron-LM of 2022 takes its vocabulary from the GPT-2 BPE files ({GPT2_VOCAB} tokens, padded to "
                  f"{padded}); the plan's vocabulary is {model.vocab_size}, so the embedding and logits differ"]


def era_model_warnings(model: ModelSpec) -> list[str]:
    """What the 2022 GPT model of Megatron-LM cannot build."""
    missing = [what for what, present in (
        ("SwiGLU", model.activation == "swiglu"), ("RMSNorm", model.norm == "rmsnorm"),
        ("rotary or ALiBi positions", model.position_embedding != "learned"),
        ("grouped-query attention", model.kv_heads != model.num_attention_heads),
        ("untied embeddings", not model.tie_embeddings), ("linear layers without biases", not model.linear_bias),
        ("mixture of experts", model.is_moe), ("multi-head latent attention", model.is_mla),
    ) if present]  # fmt: skip
    if not missing:
        return []
    return [f"Megatron-LM of 2022 builds GPT with GELU, LayerNorm, learned positions, biases and tied embeddings; "
            f"it has no {', '.join(missing)}: the job trains a different model than the plan priced"]


def flat_args(args: list[Arg]) -> list[str]:
    return [token for flag, value in args for token in ((flag,) if value is None else (flag, value))]


def render_megatron(ctx: EmitContext) -> Rendered:
    """``megatron_args.txt`` (one flag per line) and ``megatron.sh`` (torchrun + pretrain_gpt.py with them)."""
    era = ctx.plan.config.stack == MEGATRON_2022
    steps = ctx.options.steps if ctx.options.steps is not None else 100
    args, warnings = megatron_args(ctx.plan, steps=steps, lr=ctx.options.lr, allow_layout=ctx.options.megatron_layout)
    what = "Megatron-LM (main of 2022-09-30, fc7f4f035a) pretrain_gpt.py arguments" if era else "Megatron-LM pretrain_gpt.py arguments"
    head = header_lines(ctx.plan, what, warnings)
    args_text = comment_block(head) + shell_command(flat_args(args), indent="").replace(" \\\n", "\n")
    launcher = torchrun_launcher_args(ctx.layout, '"${MASTER_ADDR}:${MASTER_PORT}"')
    env = "export CUDA_DEVICE_MAX_CONNECTIONS=1\n" if ctx.plan.config.tp > 1 else ""
    script = (
        "#!/usr/bin/env bash\n"
        + comment_block(head + ["MEGATRON_LM: a Megatron-LM checkout; run on every node with MASTER_ADDR = node 0"]
                        + (["DATA_PATH, VOCAB_FILE, MERGE_FILE: a preprocessed GPT dataset and the GPT-2 BPE files"] if era else []))
        + "set -euo pipefail\n"
        + 'MEGATRON_LM="${MEGATRON_LM:?set MEGATRON_LM to a Megatron-LM checkout}"\n'
        + ("".join(f'{name}="${{{name}:?set {name}}}"\n' for name in ("DATA_PATH", "VOCAB_FILE", "MERGE_FILE")) if era else "")
        + 'MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"\n'
        + f'MASTER_PORT="${{MASTER_PORT:-{ctx.options.master_port}}}"\n'
        + env
        + "exec "
        + shell_command(launcher + ['"${MEGATRON_LM}/pretrain_gpt.py"'] + flat_args(args))
    )
    return Rendered(
        files={"megatron_args.txt": args_text, "megatron.sh": script}, executable={"megatron.sh"}, warnings=warnings
    )
