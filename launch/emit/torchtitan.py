"""A torchtitan TOML job config (``--job.config_file``) for a plan.

Key names are those of pytorch/torchtitan ``torchtitan/config/job_config.py``
at 238fa99 (2026-02-15), the last version that reads TOML job configs
(9810191, 2026-02-23, replaced them with Python config functions); they are
listed in ``launch/options/torchtitan_keys.txt``. How torchtitan reads them
(same commit):

- ``distributed/pipeline_parallel.py``: ``module_fqns_per_model_part`` gives the
  modules of each virtual stage in pipeline order (llama3 names
  ``tok_embeddings``, ``layers.<i>``, ``norm``, ``output``); ZBVZeroBubble and
  DualPipeV place them in a V, the others round-robin; with
  ``pipeline_parallel_schedule_csv`` the schedule runs as
  ``_PipelineScheduleRuntime`` and the schedule name only picks single/multi
  stage; microbatches = ``local_batch_size / pipeline_parallel_microbatch_size``.
- ``models/llama3/infra/parallelize.py``: TP always shards norms along the
  sequence (sequence parallel); FSDP2 ``reshard_after_forward`` from
  ``fsdp_reshard_after_forward``; DDP only when nothing else is parallel.
- ``distributed/utils.py`` ``maybe_enable_amp``: bf16 mixed precision only via
  FSDP, or autocast without TP/PP (the stack's rules keep plans to those).
"""

from __future__ import annotations

from costmodels.schedules.registry import schedule_spec
from launch.emit.common import (
    EmitContext,
    Rendered,
    comment_block,
    header_lines,
    strongest_recompute,
)
from launch.emit.csv import CSV_NAME, render_csv
from launch.emit.experts import torchtitan_moe_model, torchtitan_parallel_entries
from launch.emit.toml_writer import TomlValue, toml_document
from profiles.loader import plan_stack
from profiles.schema import ModelSpec, ParallelConfig, Plan

# torchtitan/models/llama3/__init__.py llama3_args at 238fa99:
# (hidden, layers, heads, kv heads, FFN hidden after the ffn_dim_multiplier / multiple_of rounding, vocab)
LLAMA3_FLAVORS: dict[tuple[int, int, int, int, int, int], str] = {
    (4096, 32, 32, 8, 14336, 128256): "8B",
    (8192, 80, 64, 8, 28672, 128256): "70B",
    (16384, 126, 128, 8, 53248, 128256): "405B",
}


def stage_module_names(stage_layers: list[int]) -> list[list[str]]:
    """``module_fqns_per_model_part``: embedding on the first stage, norm and output on the last."""
    parts, start = [], 0
    for count in stage_layers:
        parts.append([f"layers.{i}" for i in range(start, start + count)])
        start += count
    parts[0].insert(0, "tok_embeddings")
    parts[-1] += ["norm", "output"]
    return parts


def schedule_entries(cfg: ParallelConfig, csv_path: str) -> dict[str, TomlValue]:
    """``pipeline_parallel_schedule`` (+ the CSV for schedules torch runs from an action list)."""
    spec = schedule_spec(cfg.schedule)
    if spec.torch_csv:
        name = "PipelineScheduleSingle" if cfg.v == 1 else "PipelineScheduleMulti"
        return {"pipeline_parallel_schedule": name, "pipeline_parallel_schedule_csv": csv_path}
    return {"pipeline_parallel_schedule": spec.torchtitan_name}


def data_parallel_entries(cfg: ParallelConfig) -> dict[str, TomlValue]:
    """ZeRO onto FSDP2 as the torchtitan stack prices it: zero 3 = reshard after forward, zero 1 and 2 =
    keep the gathered weights until the backward ends (gradients accumulate unsharded across
    microbatches with PP, as on ppplan's runtime); zero 0 = DDP, which the stack's rules allow only with
    data parallelism alone (``costmodels.rules.data_parallel_violations``)."""
    if cfg.dp == 1 or cfg.zero == 0:
        return {"data_parallel_replicate_degree": cfg.dp, "data_parallel_shard_degree": 1}
    return {
        "data_parallel_replicate_degree": 1,
        "data_parallel_shard_degree": cfg.dp,
        "fsdp_reshard_after_forward": "always" if cfg.zero == 3 else "never",
    }


def precision_entries(plan: Plan) -> dict[str, dict[str, TomlValue]]:
    """``[training]`` dtype keys, and float8 (torchao tensorwise, output layer kept high precision) for fp8.
    The stack's rules leave no plan torchtitan would train in another precision: no fp16 (``precisions``), and
    mixed precision with TP or PP only under FSDP (``costmodels.rules.data_parallel_violations``)."""
    precision = plan.train.precision
    tables: dict[str, dict[str, TomlValue]] = {"training": {}}
    tables["training"]["mixed_precision_param"] = "float32" if precision == "fp32" else "bfloat16"
    if precision == "fp8":
        tables["model"] = {"converters": ["quantize.linear.float8"]}
        tables["quantize.linear.float8"] = {"recipe_name": "tensorwise", "filter_fqns": ["output"]}
    return tables


def recompute_entries(cfg: ParallelConfig) -> dict[str, TomlValue]:
    kind = strongest_recompute(cfg)
    if kind != "selective":
        return {"mode": kind}
    # the per-op policy the torchtitan stack prices (StackKernels.selective_recompute, costmodels.selective_ac);
    # only torchtitan-stack plans emit torchtitan (launch.emit.common)
    return {"mode": "selective", "selective_ac_option": "op"}


def model_entries(model: ModelSpec) -> tuple[dict[str, TomlValue], list[str]]:
    """torchtitan defines shapes in code (``llama3_args``); name a matching flavor or say what to register."""
    if model.is_moe:
        return torchtitan_moe_model(model)
    key = (model.hidden_size, model.num_layers, model.num_attention_heads, model.kv_heads, model.ffn_size, model.vocab_size)
    llama_style = model.activation == "swiglu" and model.norm == "rmsnorm" and model.position_embedding == "rope"
    warnings = []
    if not llama_style or model.linear_bias or model.tie_embeddings:
        warnings.append(
            "torchtitan's llama3 model is RMSNorm + SwiGLU + RoPE, no biases, untied embeddings; the plan's model "
            f"({model.norm}, {model.activation}, {model.position_embedding} positions, biases={model.linear_bias}, "
            f"tied={model.tie_embeddings}) differs, so FLOPs and memory differ from the plan"
        )
    flavor = LLAMA3_FLAVORS.get(key) if llama_style else None
    if flavor is None:
        flavor = model.name
        warnings.append(
            f"no torchtitan llama3 flavor has this shape; register flavor '{flavor}' in llama3_args "
            f"(torchtitan/models/llama3/__init__.py): dim={model.hidden_size}, n_layers={model.num_layers}, "
            f"n_heads={model.num_attention_heads}, n_kv_heads={model.kv_heads}, vocab_size={model.vocab_size}, "
            f"FFN hidden {model.ffn_size} (via ffn_dim_multiplier/multiple_of)"
        )
    return {"name": "llama3", "flavor": flavor}, warnings


def parallelism_entries(ctx: EmitContext) -> dict[str, TomlValue]:
    """``[parallelism]``: every degree as the plan has it (the stack's rules leave nothing torchtitan would run
    otherwise: sequence parallelism with TP, FSDP wherever more than data parallelism is on)."""
    cfg = ctx.cfg
    entries = data_parallel_entries(cfg)
    entries["tensor_parallel_degree"] = cfg.tp
    entries["enable_async_tensor_parallel"] = False
    entries["pipeline_parallel_degree"] = cfg.pp
    if cfg.pp > 1:
        entries.update(schedule_entries(cfg, str(ctx.out_dir.resolve() / CSV_NAME)))
        entries["pipeline_parallel_microbatch_size"] = cfg.mbs
        entries["module_fqns_per_model_part"] = stage_module_names(cfg.stage_layers)
    entries.update(torchtitan_parallel_entries(ctx.plan.model, cfg))
    entries["disable_loss_parallel"] = not plan_stack(ctx.plan).kernels.vocab_parallel_loss
    return entries


def torchtitan_tables(ctx: EmitContext) -> tuple[dict[str, dict[str, TomlValue]], list[str]]:
    """All TOML tables, in file order, and the warnings."""
    plan, cfg = ctx.plan, ctx.cfg
    model, warnings = model_entries(plan.model)
    parallelism = parallelism_entries(ctx)
    recompute = recompute_entries(cfg)
    precision = precision_entries(plan)
    local_batch = cfg.num_microbatches * cfg.mbs if cfg.pp > 1 else cfg.mbs
    steps = ctx.options.steps if ctx.options.steps is not None else 100
    tables: dict[str, dict[str, TomlValue]] = {
        "job": {"dump_folder": "./outputs", "description": f"ppplan plan for {plan.model.name} on {plan.cluster.name}"},
        "model": model | precision.pop("model", {}),
        "optimizer": {"name": "AdamW", "lr": ctx.options.lr},
        "training": {
            "local_batch_size": local_batch,
            "global_batch_size": plan.train.global_batch,
            "seq_len": plan.train.seq_len,
            "steps": steps,
            "dataset": "c4_test",
        }
        | precision.pop("training"),
        "parallelism": parallelism,
        "activation_checkpoint": recompute,
        "compile": {"enable": False},
    }
    tables.update(precision)
    return tables, warnings


def render_torchtitan(ctx: EmitContext) -> Rendered:
    """``torchtitan.toml`` (and ``schedule.csv`` for schedules torchtitan runs from a CSV)."""
    tables, warnings = torchtitan_tables(ctx)
    what = "torchtitan job config (run: torchtitan/train.py --job.config_file torchtitan.toml)"
    head = header_lines(ctx.plan, what, warnings)
    rendered = Rendered(files={"torchtitan.toml": comment_block(head) + "\n" + toml_document(tables)}, warnings=warnings)
    if ctx.cfg.pp > 1 and schedule_spec(ctx.cfg.schedule).torch_csv:
        rendered.merge(render_csv(ctx))
    return rendered
