"""Mixture-of-experts, multi-head latent attention, expert- and context-parallel options for the
Megatron-LM and torchtitan emitters.

Megatron-LM (``megatron/training/arguments.py``, ``_add_moe_args`` / ``_add_mla_args``; flags in
``launch/options/megatron_args.txt``): ``--num-experts``, ``--moe-router-topk`` (softmax after
top-k is the default, as the plan's router), ``--moe-ffn-hidden-size``,
``--moe-shared-expert-intermediate-size`` (all shared experts together), ``--moe-layer-freq`` as a
pattern for leading dense layers (``"([0]*3+[1]*58)"``), ``--expert-model-parallel-size`` with
the all-to-all dispatcher the plan prices (``--moe-token-dispatcher-type alltoall``; Megatron's
default is allgather), ``--context-parallel-size`` (the default ``--cp-comm-type p2p`` is the
ring), MLA's ``--multi-latent-attention --q-lora-rank --kv-lora-rank --qk-head-dim
--qk-pos-emb-head-dim --v-head-dim``, ``--mtp-num-layers`` for DeepSeek-V3's multi-token prediction
modules (``_add_mtp_args``), and ``--kv-channels`` for heads sized apart from hidden / heads. Expert TP
stays at its default (= tp) unless the plan folds it to 1 (``--expert-tensor-parallel-size 1``,
Megatron-Core's MoE parallel folding). Megatron requires sequence parallelism with expert and tensor parallelism (``megatron/core/model_parallel_config.py``).

torchtitan (``torchtitan/config/job_config.py``, ``[parallelism]``): ``context_parallel_degree``,
``expert_parallel_degree`` and ``expert_tensor_parallel_degree`` = tp (torchtitan allows 1 or tp);
its MoE models are ``qwen3`` (MoE flavors) and ``deepseek_v3`` (MLA), shapes defined in code.
"""

from __future__ import annotations

from launch.emit.megatron_cuts import Arg
from launch.emit.toml_writer import TomlValue
from profiles.schema import ModelSpec, ParallelConfig

# torchtitan models/qwen3/__init__.py qwen3_args and models/deepseek_v3/__init__.py deepseekv3_args:
# (hidden, layers, heads, experts, top-k, expert FFN, shared experts, dense layers) -> flavor
TORCHTITAN_MOE_FLAVORS: dict[str, dict[tuple[int, ...], str]] = {
    "qwen3": {
        (2048, 48, 32, 128, 8, 768, 0, 0): "30B-A3B",
        (4096, 94, 64, 128, 8, 1536, 0, 0): "235B-A22B",
    },
    "deepseek_v3": {
        (7168, 61, 128, 256, 8, 2048, 1, 3): "671B",
        (5120, 60, 128, 160, 6, 1536, 2, 1): "236B",
    },
}


def moe_layer_pattern(model: ModelSpec) -> str:
    """``--moe-layer-freq`` for ``first_dense_layers`` dense layers then MoE ones (Megatron's list pattern)."""
    return f"([0]*{model.first_dense_layers}+[1]*{model.num_moe_layers})"


def megatron_model_args(model: ModelSpec) -> list[Arg]:
    """MoE, MLA, multi-token prediction and head-size flags of ``model`` (none for a dense model with hidden /
    heads heads)."""
    args: list[Arg] = []
    if model.is_mla:
        args += [("--multi-latent-attention", None)]
        if model.q_lora_rank is not None:
            args.append(("--q-lora-rank", str(model.q_lora_rank)))
        args += [
            ("--kv-lora-rank", str(model.kv_lora_rank)),
            ("--qk-head-dim", str(model.qk_nope_head_dim)),
            ("--qk-pos-emb-head-dim", str(model.qk_rope_head_dim)),
            ("--v-head-dim", str(model.v_head_dim)),
        ]
    elif model.head_dim * model.num_attention_heads != model.hidden_size:
        args.append(("--kv-channels", str(model.head_dim)))
    if model.is_moe:
        args += [
            ("--num-experts", str(model.num_experts)),
            ("--moe-router-topk", str(model.experts_per_token)),
            ("--moe-ffn-hidden-size", str(model.moe_ffn_hidden_size)),
        ]
        if model.shared_expert_ffn_hidden_size:
            args.append(("--moe-shared-expert-intermediate-size", str(model.shared_expert_ffn_hidden_size)))
        if model.first_dense_layers:
            args.append(("--moe-layer-freq", moe_layer_pattern(model)))
    if model.mtp_layers:
        args.append(("--mtp-num-layers", str(model.mtp_layers)))
    return args


def megatron_parallel_args(cfg: ParallelConfig) -> tuple[list[Arg], list[str], bool]:
    """Context- and expert-parallel flags, the warnings, and whether sequence parallelism had to be
    switched on (Megatron requires it with ep > 1 and tp > 1)."""
    args: list[Arg] = []
    if cfg.cp > 1:
        args.append(("--context-parallel-size", str(cfg.cp)))
    if cfg.expert_tp != cfg.tp:
        args.append(("--expert-tensor-parallel-size", str(cfg.expert_tp)))
    if cfg.ep == 1:
        return args, [], False
    args += [("--expert-model-parallel-size", str(cfg.ep)), ("--moe-token-dispatcher-type", "alltoall")]
    if cfg.tp > 1 and not cfg.sequence_parallel:
        return args + [("--sequence-parallel", None)], [
            "Megatron-LM requires sequence parallelism with expert and tensor parallelism; emitted --sequence-parallel, "
            "so activation memory is lower and TP traffic is reduce-scatter/all-gather instead of the planned all-reduce"
        ], True
    return args, [], False


def torchtitan_parallel_entries(model: ModelSpec, cfg: ParallelConfig) -> dict[str, TomlValue]:
    """``[parallelism]`` context and expert degrees (expert TP = tp)."""
    entries: dict[str, TomlValue] = {"context_parallel_degree": cfg.cp}
    if model.is_moe:
        entries["expert_parallel_degree"] = cfg.ep
        entries["expert_tensor_parallel_degree"] = cfg.expert_tp
    return entries


def torchtitan_moe_model(model: ModelSpec) -> tuple[dict[str, TomlValue], list[str]]:
    """``[model]`` name and flavor of an MoE model: deepseek_v3 with MLA, qwen3 without."""
    name = "deepseek_v3" if model.is_mla else "qwen3"
    key = (model.hidden_size, model.num_layers, model.num_attention_heads, model.num_experts, model.experts_per_token,
           model.moe_ffn_hidden_size, model.num_shared_experts, model.first_dense_layers)  # fmt: skip
    flavor = TORCHTITAN_MOE_FLAVORS[name].get(key)
    if flavor is not None:
        return {"name": name, "flavor": flavor}, []
    return {"name": name, "flavor": model.name}, [
        f"no torchtitan {name} flavor has this shape; register flavor '{model.name}' (torchtitan/models/{name}/__init__.py): "
        f"dim={model.hidden_size}, n_layers={model.num_layers}, n_heads={model.num_attention_heads}, "
        f"{model.num_experts} experts of {model.moe_ffn_hidden_size}, top_k={model.experts_per_token}, "
        f"{model.num_shared_experts} shared, {model.first_dense_layers} dense layers"
    ]
