"""Runtime rules: the one place that says which configurations can run.

The search enumerates only configurations these rules accept, and the launcher
and the emitters check a plan with the same functions, so the planner never
prices something its stack refuses. The stack (``profiles.stack_schema.StackSpec``,
presets in ``profiles/stacks/``) says which schedules, virtual stages, cut
layouts, recompute kinds, ZeRO stages and precisions it runs; what each schedule
needs of (pp, v, M) is the schedule registry's fact
(``costmodels.schedules.registry``, with its torch sources). Each message says
how to fix the input.
"""

from __future__ import annotations

from costmodels.layout import end_slots_of, first_last_of, min_layers_for, uniform_split
from costmodels.schedules.generate import schedule_of
from costmodels.schedules.registry import LOOPED_SCHEDULES, schedule_spec, shape_violations
from costmodels.simulator import schedule_graph
from profiles.errors import PlanError
from profiles.limits import MAX_MICROBATCHES, MAX_STAGE_MICROBATCHES
from profiles.schema import ModelSpec, ParallelConfig, Plan, TrainSpec
from profiles.stack_schema import StackSpec


def schedule_violations(schedule: str, pp: int, v: int, num_microbatches: int, stack: StackSpec) -> list[str]:
    """Why ``schedule`` cannot run with this (pp, v, M) on ``stack``; empty when it can: the
    schedule's own shape rules (registry) and the stack's."""
    return shape_violations(schedule, pp, v, num_microbatches) + _stack_schedule_violations(schedule, pp, v, num_microbatches, stack)


def _stack_schedule_violations(schedule: str, pp: int, v: int, m: int, stack: StackSpec) -> list[str]:
    problems: list[str] = []
    if schedule_spec(schedule).simulated_only:
        problems.append(f"schedule '{schedule}' is simulated only (no runtime yet); pick another schedule to launch")
    elif schedule not in stack.schedules:
        problems.append(f"schedule '{schedule}' is not run by stack '{stack.name}'; use one of {', '.join(stack.schedules)}")
    if v > stack.max_virtual_stages:
        problems.append(f"v={v} virtual stages per rank is above stack '{stack.name}''s {stack.max_virtual_stages}")
    if schedule in LOOPED_SCHEDULES and pp > 1:
        if pp < stack.interleaved_min_pp:
            problems.append(f"interleaving on stack '{stack.name}' needs pp >= {stack.interleaved_min_pp} (got {pp})")
        if stack.interleaved_microbatches == "multiple-of-pp" and m % pp:
            problems.append(f"interleaved 1F1B on stack '{stack.name}' needs num_microbatches ({m}) to be a multiple of pp ({pp})")
    return problems


def tp_violations(model: ModelSpec, tp: int, expert_tp: int | None = None) -> list[str]:
    """Why ``tp`` ranks cannot split the model's heads, kv-heads and FFN evenly (Megatron-LM's
    column/row-parallel layers shard each of them over the TP group; the routed experts are split the
    same way over ``expert_tp`` ranks, tp unless given, Megatron-Core's default; the shared experts
    always over tp); empty when they can."""
    expert_tp = tp if expert_tp is None else expert_tp
    problems: list[str] = []
    if model.num_attention_heads % tp:
        problems.append(f"tp={tp} does not divide num_attention_heads={model.num_attention_heads}: pick tp from its divisors")
    if model.kv_heads % tp and not model.is_mla:
        problems.append(f"tp={tp} does not divide num_key_value_heads={model.kv_heads}: pick tp from its divisors")
    if model.ffn_size % tp and model.num_moe_layers < model.num_layers:
        problems.append(f"tp={tp} does not divide ffn_hidden_size={model.ffn_size}")
    if model.is_moe:
        routed = "tp" if expert_tp == tp else "etp"  # the degree the user set for the routed experts
        for name, degree, ranks in (("moe_ffn_hidden_size", routed, expert_tp), ("shared_expert_ffn_hidden_size", "tp", tp)):
            if getattr(model, name) % ranks:
                problems.append(f"{degree}={ranks} does not divide {name}={getattr(model, name)} "
                                f"(experts are TP-sharded over {degree} ranks like the dense MLP)")
    return problems


def expert_context_violations(model: ModelSpec, train: TrainSpec, cfg: ParallelConfig) -> list[str]:
    """Expert and context parallelism any stack needs: experts split evenly over ep ranks carved out
    of the dp x cp ranks with expert TP = tp, or of the tp x cp x dp ranks with expert TP 1
    (Megatron-Core's parallel folding: ep * etp divides tp * cp * dp, ``megatron/core/parallel_state.py``),
    and the sequence in 2*cp equal chunks, rank i holding chunks i and 2cp-1-i for causal load balance
    (Megatron-Core validate_args: seq_length % (2 cp) == 0)."""
    problems = expert_degree_violations(model, cfg.ep)
    if cfg.etp is not None and cfg.etp not in (1, cfg.tp):
        problems.append(f"etp={cfg.etp}: ppplan prices expert TP = tp or 1 (tp={cfg.tp})")
    elif cfg.etp is not None and cfg.etp != cfg.tp and not model.is_moe:
        problems.append(f"etp={cfg.etp} needs a mixture-of-experts model ({model.name} is dense): drop etp")
    elif cfg.expert_tp != cfg.tp and not cfg.sequence_parallel:
        problems.append(f"etp=1 under tp={cfg.tp} needs sequence parallelism (each tp rank routes its own 1/tp of the "
                        "tokens): add --sequence-parallel")  # fmt: skip
    elif cfg.ep > 1 and cfg.expert_tp != cfg.tp and (cfg.tp * cfg.dp * cfg.cp) % cfg.ep:
        problems.append(f"ep={cfg.ep} does not divide tp*dp*cp = {cfg.tp}*{cfg.dp}*{cfg.cp}: with etp=1 expert-parallel "
                        "ranks are carved out of the tensor-, data- and context-parallel ranks")  # fmt: skip
    elif cfg.ep > 1 and cfg.expert_tp == cfg.tp and (cfg.dp * cfg.cp) % cfg.ep:
        problems.append(f"ep={cfg.ep} does not divide dp*cp = {cfg.dp}*{cfg.cp}: expert-parallel ranks are carved out of "
                        "the data- and context-parallel ranks")  # fmt: skip
    return problems + context_degree_violations(train.seq_len, cfg.cp)


def expert_degree_violations(model: ModelSpec, ep: int) -> list[str]:
    """What rules out an expert-parallel degree whatever the other degrees are."""
    if ep == 1:
        return []
    if not model.is_moe:
        return [f"ep={ep} needs a mixture-of-experts model ({model.name} is dense): use ep=1"]
    if model.num_experts % ep:
        return [f"ep={ep} does not divide num_experts={model.num_experts}: pick ep from its divisors"]
    return []


def context_degree_violations(seq_len: int, cp: int) -> list[str]:
    """What rules out a context-parallel degree whatever the other degrees are."""
    if cp > 1 and seq_len % (2 * cp):
        return [f"cp={cp} needs the sequence ({seq_len}) divisible by 2*cp = {2 * cp} "
                "(two chunks per rank for causal load balance)"]
    return []


def _degree_violations(model: ModelSpec, train: TrainSpec, gpus: int, cfg: ParallelConfig) -> list[str]:
    problems: list[str] = []
    if cfg.world_size != gpus:
        problems.append(f"tp*cp*pp*dp = {cfg.tp}*{cfg.cp}*{cfg.pp}*{cfg.dp} = {cfg.world_size} but there are {gpus} GPUs: "
                        f"pick degrees whose product is {gpus}")
    problems += tp_violations(model, cfg.tp, cfg.expert_tp)
    if train.global_batch % (cfg.dp * cfg.mbs):
        problems.append(f"global batch {train.global_batch} is not divisible by dp*mbs = {cfg.dp}*{cfg.mbs}: change the batch, dp or mbs")
    elif cfg.num_microbatches != train.global_batch // (cfg.dp * cfg.mbs):
        problems.append(f"num_microbatches {cfg.num_microbatches} != global_batch/(dp*mbs) = {train.global_batch // (cfg.dp * cfg.mbs)}")
    if cfg.sequence_parallel and cfg.tp == 1:
        problems.append("sequence parallel needs tp > 1: drop --sequence-parallel or raise --tp")
    if cfg.sp_regather and not cfg.sequence_parallel:
        problems.append("--sp-regather keeps sequence-parallel inputs as shards: add --sequence-parallel or drop --sp-regather")
    return problems


def _stage_violations(model: ModelSpec, cfg: ParallelConfig) -> list[str]:
    problems: list[str] = []
    stages = cfg.pp * cfg.v
    if model.num_layers < min_layers_for(stages):
        problems.append(f"{model.num_layers} layers cannot fill pp*v = {stages} stages "
                        f"(at least {min_layers_for(stages)}: one per stage, the end stages may hold only the embedding or the head): "
                        "lower pp or v")
        return problems
    if len(cfg.stage_layers) != stages:
        problems.append(f"stage_layers has {len(cfg.stage_layers)} entries but pp*v = {stages}")
    elif sum(cfg.stage_layers) != model.num_layers:
        problems.append(f"stage_layers sum to {sum(cfg.stage_layers)} but the model has {model.num_layers} layers")
    if isinstance(cfg.recompute, list) and len(cfg.recompute) != stages:
        problems.append(f"recompute lists {len(cfg.recompute)} stages but pp*v = {stages}")
    return problems


def zero_violations(zero: int, pp: int, schedule: str, stack: StackSpec) -> list[str]:
    """ZeRO stages the stack cannot run with this pipeline."""
    if zero not in stack.zero:
        return [f"zero={zero} is not run by stack '{stack.name}' (runs {', '.join(map(str, stack.zero))})"]
    if stack.pipeline_runtime == "torch" and zero == 3 and pp > 1 and schedule_spec(schedule).split_backward:
        # Found by the launcher's loss-match tests (torch 2.13): FSDP2 with
        # reshard_after_forward=True frees the gathered weights after each
        # forward, and a deferred weight-gradient pass (W) runs outside any
        # module hook that would re-gather them, so its gradients are wrong.
        return [
            f"zero=3 cannot run with the split-backward schedule '{schedule}' on torch "
            "(FSDP2 frees the gathered weights before the deferred W pass): use --zero 2 or a schedule without split backward"
        ]
    return []


def recompute_kinds(recompute: str | list[str]) -> set[str]:
    """The recompute kinds a configuration uses: its one kind, or each stage's."""
    return set(recompute) if isinstance(recompute, list) else {recompute}


def recompute_violations(recompute: str | list[str], pp: int, schedule: str, stack: StackSpec) -> list[str]:
    """Recomputation the stack cannot run (or cannot run well) with this schedule."""
    kinds = recompute_kinds(recompute)
    missing = sorted(kinds - set(stack.recompute))
    if missing:
        return [f"recompute '{missing[0]}' is not run by stack '{stack.name}' (runs {', '.join(stack.recompute)})"]
    if len(kinds) > 1 and not stack.recompute_per_stage:
        return [f"stack '{stack.name}' applies one recompute kind to every stage: use one of {', '.join(sorted(kinds))}"]
    if stack.pipeline_runtime == "torch" and "full" in kinds and pp > 1 and schedule_spec(schedule).split_backward:
        # Measured by the profiler (torch 2.13): the split weight-gradient pass re-runs a
        # checkpointed layer's forward once per parameter group (~10x the unsplit W).
        return [
            f"full recompute with the split-backward schedule '{schedule}' re-runs each layer's forward once per "
            "parameter group in torch's W pass: use --recompute selective|none or a schedule without split backward"
        ]
    return []


def offload_violations(offload_layers: int, num_layers: int, pp: int, recompute: str | list[str],
                       stack: StackSpec) -> list[str]:
    """Activation CPU offload the stack cannot run: Megatron-Core's TransformerConfig refuses it with pipeline
    parallelism, with recomputation and for num_layers layers or more (transformer_config.py __post_init__ @
    core_v0.14.0: "Currently there is no support for Pipeline parallelism with CPU offloading", "CPU offloading
    does not work when activation recomputation is enabled", "CPU offloading can be done only for layers less
    than {num_layers}")."""
    if not offload_layers:
        return []
    if not stack.activation_offload:
        return [f"stack '{stack.name}' does not offload activations to the host: use --offload-layers 0"]
    if pp > 1:
        return ["activation offload runs without pipeline parallelism only (Megatron-Core): use --pp 1 or "
                "--offload-layers 0"]
    if recompute_kinds(recompute) != {"none"}:
        return ["activation offload runs without recomputation only (Megatron-Core): use --recompute none or "
                "--offload-layers 0"]
    if offload_layers >= num_layers:
        return [f"offload_layers {offload_layers}: at most {num_layers - 1} of the model's {num_layers} layers can be "
                "offloaded (Megatron-Core)"]
    return []


def layout_violations(stage_layers: list[int], pp: int, v: int, stack: StackSpec) -> list[str]:
    """Cut layouts the stack cannot express (``StackSpec.cut_layouts``)."""
    if stack.cut_layouts == "uniform" and stage_layers != uniform_split(sum(stage_layers), len(stage_layers)):
        return [f"stack '{stack.name}' splits layers uniformly only: stage_layers {stage_layers} are uneven"]
    if stack.cut_layouts == "uniform" and sum(stage_layers) % len(stage_layers):
        return [f"stack '{stack.name}' needs num_layers ({sum(stage_layers)}) divisible by pp*v = {len(stage_layers)}"]
    if stack.cut_layouts == "first-last" and first_last_of(stage_layers, pp, v) is None and end_slots_of(stage_layers) is None:
        return [f"stack '{stack.name}' gives the first and last rank their own layer counts and every other rank the "
                f"same, split equally over its virtual stages, or counts the embedding and the loss as a layer each: "
                f"stage_layers {stage_layers} are of neither shape"]
    return []


def parallelism_violations(cfg: ParallelConfig, stack: StackSpec, train: TrainSpec | None = None) -> list[str]:
    """Sequence, context and expert parallelism the stack does not have, or not in this form."""
    problems: list[str] = []
    if cfg.sequence_parallel and not stack.sequence_parallel:
        problems.append(f"stack '{stack.name}' has no sequence parallelism: drop --sequence-parallel")
    if cfg.sp_regather and not stack.kernels.sequence_parallel_regather_exposed:
        keeps = stack.kernels.sequence_parallel_keeps_gathered_inputs
        problems.append(f"stack '{stack.name}' " + ("keeps the gathered sequence-parallel inputs always" if keeps
                                                    else "keeps the sequence-parallel inputs as shards always")
                        + ": drop --sp-regather")
    if stack.tp_needs_sequence_parallel and cfg.tp > 1 and not cfg.sequence_parallel:
        problems.append(f"stack '{stack.name}' runs tensor parallelism with sequence parallelism always: "
                        "add --sequence-parallel")  # fmt: skip
    if cfg.cp > 1 and not stack.context_parallel:
        problems.append(f"stack '{stack.name}' has no context parallelism: use cp=1 or another stack")
    if cfg.ep > 1 and not stack.expert_parallel:
        problems.append(f"stack '{stack.name}' has no expert parallelism: use ep=1 or another stack")
    problems += _stack_cp_violations(cfg, stack, train) + _stack_ep_violations(cfg, stack, train)
    return problems


def _stack_cp_violations(cfg: ParallelConfig, stack: StackSpec, train: TrainSpec | None) -> list[str]:
    if cfg.cp == 1 or not stack.context_parallel or train is None or stack.cp_sequence_multiple != "2cp_tp":
        return []
    multiple = 2 * cfg.cp * cfg.tp
    if train.seq_len % multiple:
        return [f"stack '{stack.name}' needs the sequence ({train.seq_len}) divisible by 2*cp*tp = {multiple} with cp > 1"]
    return []


def _stack_ep_violations(cfg: ParallelConfig, stack: StackSpec, train: TrainSpec | None) -> list[str]:
    problems: list[str] = []
    if cfg.expert_tp != cfg.tp and not stack.expert_tp_folding:
        problems.append(f"stack '{stack.name}' splits every expert over the tp ranks: use etp = tp ({cfg.tp}), "
                        "or --stack megatron-core for expert TP 1")  # fmt: skip
    if cfg.ep == 1 or not stack.expert_parallel:
        return problems
    if stack.ep_folding == "fsdp_dp_cp" and cfg.zero == 0 and cfg.dp > 1:
        problems.append(f"stack '{stack.name}' carves expert parallelism out of FSDP's dp_shard x cp ranks: "
                        "use zero >= 1 with ep > 1")  # fmt: skip
    if stack.ep_needs_sequence_parallel and cfg.tp > 1 and not cfg.sequence_parallel:
        problems.append(f"stack '{stack.name}' needs sequence parallelism with expert and tensor parallelism: "
                        "add --sequence-parallel")  # fmt: skip
    if not stack.ep_fp16 and train is not None and train.precision == "fp16":
        problems.append(f"stack '{stack.name}' runs expert parallelism without fp16: use bf16")
    return problems


def data_parallel_violations(precision: str, tp: int, cp: int, pp: int, dp: int, zero: int, stack: StackSpec) -> list[str]:
    """ZeRO 0 and mixed precision where the stack ties them to FSDP2 (``StackSpec.ddp_one_dimensional``,
    ``StackSpec.mixed_precision_needs_fsdp``: torchtitan, whose FSDP2 is on over dp_shard > 1 or cp > 1)."""
    problems: list[str] = []
    if stack.ddp_one_dimensional and zero == 0 and dp > 1 and (tp > 1 or pp > 1):
        problems.append(f"stack '{stack.name}' runs zero 0 as DDP, only with no tensor or pipeline parallelism: "
                        "use zero >= 1")  # fmt: skip
    if stack.ddp_one_dimensional and zero == 0 and cp > 1:
        problems.append(f"stack '{stack.name}' shards its data ranks with FSDP over the context ranks (cp > 1), "
                        "not zero 0: use zero >= 1")  # fmt: skip
    fsdp = (dp > 1 and zero >= 1) or cp > 1
    if stack.mixed_precision_needs_fsdp and precision != "fp32" and not fsdp:
        kind = "trains in fp32" if tp > 1 or pp > 1 else "autocasts over fp32 weights, which this stack does not price"
        problems.append(f"stack '{stack.name}' runs {precision} as mixed precision only under FSDP (without it, it "
                        f"{kind}): use zero >= 1 with dp > 1, or cp > 1")  # fmt: skip
    return problems


def model_support_violations(model: ModelSpec, stack: StackSpec) -> list[str]:
    """Layers of ``model`` the stack does not run (mixture of experts, multi-head latent attention,
    multi-token prediction)."""
    problems: list[str] = []
    if model.is_moe and not stack.moe:
        problems.append(f"stack '{stack.name}' has no mixture-of-experts layers ({model.name} has {model.num_experts} experts): "
                        "use another stack")  # fmt: skip
    if model.is_mla and not stack.multi_latent_attention:
        problems.append(f"stack '{stack.name}' has no multi-head latent attention ({model.name} uses it): use another stack")
    if model.mtp_layers and not stack.multi_token_prediction:
        problems.append(f"stack '{stack.name}' has no multi-token prediction ({model.name} has mtp_layers "
                        f"{model.mtp_layers}): use --stack megatron-core or set mtp_layers 0")
    elif model.mtp_layers and model.position_embedding == "learned":
        # megatron/training/arguments.py validate_args: MTP only with rope or no position embedding
        problems.append(f"multi-token prediction runs with rotary or no position embedding, not learned ones "
                        f"({model.name}): set mtp_layers 0")
    return problems


def expert_overlap_violations(schedule: str, ep: int, recompute: str | list[str], precision: str,
                              mtp_layers: int = 0) -> list[str]:
    """What the combined 1F1B (``--overlap-moe-expert-parallel-comm``) needs beyond interleaved 1F1B's shape:
    expert parallelism, no full recompute, a bf16/fp16 model (fp8 runs one), at most one multi-token prediction
    module (Megatron-Core ``transformer_config.py __post_init__`` @23e00ed0: "MTP layernum only supports 1 when
    enabling overlap_moe_expert_parallel_comm")."""
    if not schedule_spec(schedule).overlaps_expert_comm:
        return []
    kinds = recompute_kinds(recompute)
    problems: list[str] = []
    if ep == 1:
        problems.append(f"schedule '{schedule}' overlaps the expert all-to-alls: it needs ep > 1 (use interleaved-1f1b)")
    if "full" in kinds:
        problems.append(f"schedule '{schedule}' runs without full recompute: use --recompute selective|none")
    if precision == "fp32":
        problems.append(f"schedule '{schedule}' needs a bf16, fp16 or fp8 model: use another --precision or interleaved-1f1b")
    if mtp_layers > 1:
        problems.append(f"schedule '{schedule}' runs at most 1 multi-token prediction module (the model has {mtp_layers}): "
                        "use interleaved-1f1b")
    return problems


def size_violations(num_stages: int, num_microbatches: int) -> list[str]:
    """Pipelines too large to simulate (``profiles/limits.py``: the action list grows with
    stages x microbatches)."""
    if num_microbatches > MAX_MICROBATCHES:
        return [f"{num_microbatches} microbatches is above the cap of {MAX_MICROBATCHES:,}: raise mbs or dp, or lower the global batch"]
    if num_stages * num_microbatches > MAX_STAGE_MICROBATCHES:
        return [f"pp*v x microbatches = {num_stages} x {num_microbatches} is above the cap of {MAX_STAGE_MICROBATCHES:,} "
                "(the simulated action list would take minutes): fewer stages or microbatches"]
    return []


def position_violations(model: ModelSpec, train: TrainSpec) -> list[str]:
    """A model with a learned position table (GPT-2, OPT, MPT without ALiBi) has no embedding for positions past
    its ``seq_len``: the runtime's lookup would index outside the table."""
    if train.seq_len > model.seq_len and model.position_embedding == "learned":
        return [f"seq_len {train.seq_len} exceeds the model's {model.seq_len} learned positions: lower the sequence length"]
    return []


def structural_violations(model: ModelSpec, train: TrainSpec, gpus: int, cfg: ParallelConfig) -> list[str]:
    """The rules of any stack: positions, degrees, batch, stages and the schedule's own shape (registry)."""
    problems = position_violations(model, train)
    problems += _degree_violations(model, train, gpus, cfg) + expert_context_violations(model, train, cfg)
    problems += _stage_violations(model, cfg)
    problems += size_violations(cfg.num_stages, cfg.num_microbatches)
    if cfg.pp == 1 and cfg.schedule not in {"1f1b", "gpipe"}:
        problems.append(f"pp=1 has no pipeline: use schedule 1f1b (got '{cfg.schedule}')")
    elif cfg.pp > 1:
        problems += shape_violations(cfg.schedule, cfg.pp, cfg.v, cfg.num_microbatches)
    if cfg.schedule == "custom" and cfg.schedule_csv is None:
        problems.append("schedule 'custom' needs its action list in the plan (config.schedule_csv): "
                        "make one with `ppplan simulate plan.json --custom-out custom.json`")
    elif cfg.schedule != "custom" and cfg.schedule_csv is not None:
        problems.append(f"config.schedule_csv is only for schedule 'custom' (the plan says '{cfg.schedule}')")
    return problems


def config_violations(model: ModelSpec, train: TrainSpec, gpus: int, cfg: ParallelConfig, stack: StackSpec) -> list[str]:
    """Every reason ``cfg`` cannot run on ``stack``; empty when it can."""
    problems: list[str] = []
    if cfg.stack != stack.name:
        problems.append(f"the configuration is for stack '{cfg.stack}', checked against '{stack.name}'")
    problems += structural_violations(model, train, gpus, cfg)
    if cfg.pp > 1:
        problems += _stack_schedule_violations(cfg.schedule, cfg.pp, cfg.v, cfg.num_microbatches, stack)
    if len(cfg.stage_layers) == cfg.num_stages:
        problems += layout_violations(cfg.stage_layers, cfg.pp, cfg.v, stack)
    problems += zero_violations(cfg.zero, cfg.pp, cfg.schedule, stack)
    problems += recompute_violations(cfg.recompute, cfg.pp, cfg.schedule, stack)
    problems += offload_violations(cfg.offload_layers, model.num_layers, cfg.pp, cfg.recompute, stack)
    problems += parallelism_violations(cfg, stack, train)
    problems += data_parallel_violations(train.precision, cfg.tp, cfg.cp, cfg.pp, cfg.dp, cfg.zero, stack)
    problems += expert_overlap_violations(cfg.schedule, cfg.ep, cfg.recompute, train.precision, model.mtp_layers)
    problems += model_support_violations(model, stack)
    problems += precision_violations(train.precision, stack)
    return problems


def precision_violations(precision: str, stack: StackSpec) -> list[str]:
    """Why ``precision`` cannot run on ``stack`` (ppplan's runtime has no fp16 loss scaling and
    no fp8 GEMMs; Megatron-LM and torchtitan run them)."""
    if precision in stack.precisions:
        return []
    return [f"precision '{precision}' is not run by stack '{stack.name}' (runs {', '.join(stack.precisions)}): "
            "plan with another --precision or --stack"]


def check_config(model: ModelSpec, train: TrainSpec, gpus: int, cfg: ParallelConfig, stack: StackSpec) -> None:
    """Raise ``PlanError`` with the first violated rule."""
    problems = config_violations(model, train, gpus, cfg, stack)
    if problems:
        raise PlanError(problems[0])


def check_custom_schedule(cfg: ParallelConfig) -> None:
    """A custom plan's action list, as a launch or an emitted job would run it: parsed (every pass once, each stage
    on one rank, pp, v and M as configured) and walked as torch lowers it (a deadlock is refused), as simulate does
    (``PlanError`` with the first problem; nothing for a generated schedule)."""
    if cfg.schedule != "custom" or cfg.schedule_csv is None:
        return
    schedule_graph(schedule_of("custom", cfg.pp, cfg.v, cfg.num_microbatches, cfg.schedule_csv))


def check_plan(plan: Plan, stack: StackSpec) -> None:
    """A plan file against the rules of ``stack``: what ``launch``, ``explain``, ``simulate``, ``compare`` and
    ``calibrate`` all check before they use a plan (``PlanError`` with the first problem)."""
    check_config(plan.model, plan.train, plan.config.world_size, plan.config, stack)
    check_custom_schedule(plan.config)
