"""Mixture-of-experts and multi-head latent attention keys of Hugging Face configs -> ``ModelSpec`` fields.

Families read (key names and defaults from the transformers configuration classes,
``/work/research/moe/FACTS.md`` section 1):

- ``mixtral`` (MixtralConfig): every layer MoE; ``num_local_experts`` experts of FFN size
  ``intermediate_size``; ``num_experts_per_tok`` (default 2).
- ``qwen2_moe`` (Qwen2MoeConfig): ``num_experts`` experts of ``moe_intermediate_size``; one
  shared expert of ``shared_expert_intermediate_size``; ``num_experts_per_tok`` (default 4);
  dense layers from ``mlp_only_layers`` / ``decoder_sparse_step``.
- ``qwen3_moe`` (Qwen3MoeConfig): as qwen2_moe without a shared expert (``num_experts_per_tok``
  default 8); ``head_dim`` set apart from hidden / heads.
- ``deepseek_v2`` / ``deepseek_v3`` (DeepseekV2Config / DeepseekV3Config): ``n_routed_experts``
  of ``moe_intermediate_size``, ``n_shared_experts`` of the same size, the first
  ``first_k_dense_replace`` layers dense (FFN ``intermediate_size``), MLA attention
  (``q_lora_rank`` (null: no query compression), ``kv_lora_rank``, ``qk_nope_head_dim``,
  ``qk_rope_head_dim``, ``v_head_dim``). The multi-token-prediction modules
  (``num_nextn_predict_layers``) are not read: a config plans the 671B main model (DeepSeek's count), on
  any stack with MLA; set ``mtp_layers`` in a model file to plan them too (``costmodels.mtp``, megatron-core
  only).

What ``ModelSpec`` does not hold (a few thousand parameters at most, stated where the
presets count parameters): the Qwen2-MoE shared-expert gate (d weights per layer), the
Qwen2 q/k/v biases, the Qwen3 q/k norms, DeepSeek-V3's router score-correction bias.

Keys that size the model (expert count, expert FFN size, shared-expert size, the MLA ranks
and head dims) are required even where a transformers class has a default (DESIGN.md,
Core types); routing and placement keys take the class default when absent, and a key with
no default (DeepseekV2Config's ``num_experts_per_tok``) is an error that names it.

A config with expert keys of a family not read here, or with hybrid layers (Mamba, linear
attention, chunked or sparse attention, MoE every n-th layer), is refused with what is
unsupported: never planned as a dense model.
"""

from __future__ import annotations

from typing import Any

from profiles.errors import PlanError

MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3")

# Keys whose presence marks a mixture-of-experts config in any family (FACTS.md sections 1.6 and 2).
EXPERT_KEYS = (
    "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok",
    "moe_intermediate_size", "expert_layer_period", "ffn_config",
)  # fmt: skip

# Keys (or key prefixes) of hybrid or non-plain architectures (FACTS.md section 2, generic rule).
HYBRID_KEYS = (
    "hybrid_override_pattern", "attn_type_list", "attn_layer_period", "expert_layer_period", "moe_layers",
    "no_rope_layers", "attention_chunk_size", "text_config", "full_attention_interval",
)  # fmt: skip
HYBRID_PREFIXES = ("mamba_", "linear_", "index_")
# Sliding-window layers are planned as full attention (an upper bound on their time and memory).
PLAIN_LAYER_TYPES = {"full_attention", "sliding_attention"}

# transformers defaults of the routing / placement keys, per family (FACTS.md 1.1-1.5); None: no default.
TOP_K_DEFAULT = {"mixtral": 2, "qwen2_moe": 4, "qwen3_moe": 8, "deepseek_v2": None, "deepseek_v3": 8}
FIRST_DENSE_DEFAULT = {"deepseek_v2": 0, "deepseek_v3": 3}


def _present(config: dict[str, Any], key: str) -> bool:
    return config.get(key) not in (None, [], {}, False)


def unsupported_reason(config: dict[str, Any], model_type: str) -> str | None:
    """Why this config cannot be planned (hybrid layers, or expert keys of a family not read), or None."""
    hybrid = [k for k in HYBRID_KEYS if _present(config, k)]
    hybrid += [k for k in config if k.startswith(HYBRID_PREFIXES) and _present(config, k)]
    layer_types = config.get("layer_types") or config.get("layers_block_type") or []
    if isinstance(layer_types, str):  # one type named for every layer
        layer_types = [layer_types]
    odd_layers = sorted({str(t) for t in layer_types} - PLAIN_LAYER_TYPES) if isinstance(layer_types, list) else []
    if odd_layers:
        hybrid.insert(0, f"layer_types {odd_layers}")
    if hybrid:
        return (f"model_type '{model_type or '?'}' has hybrid or non-standard layers ({', '.join(hybrid[:3])}): "
                "ppplan plans decoder-only transformers with full attention in every layer")  # fmt: skip
    expert_keys = [k for k in EXPERT_KEYS if _present(config, k)]
    if expert_keys and model_type not in MOE_FAMILIES:
        return (f"model_type '{model_type or '?'}' has mixture-of-experts keys ({', '.join(expert_keys)}) but ppplan "
                f"reads the MoE configs of {', '.join(MOE_FAMILIES)} only; write a ppplan model YAML "
                "(num_experts, experts_per_token, moe_ffn_hidden_size, ...) instead")  # fmt: skip
    return None


def _int(value: Any, key: str) -> int:
    """A count as the config writes it: an integer, not a float (even 8.0), bool or string."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"'{key}' must be an integer, got {value!r}")
    return value


def _need(config: dict[str, Any], key: str, model_type: str, why: str) -> Any:
    if key not in config:
        raise PlanError(f"Hugging Face {model_type} config is missing '{key}' ({why})")
    return config[key]


def _top_k(config: dict[str, Any], model_type: str) -> int:
    value = config.get("num_experts_per_tok", TOP_K_DEFAULT[model_type])
    if value is None:
        raise PlanError(f"Hugging Face {model_type} config is missing 'num_experts_per_tok' (the router's top-k; no default)")
    return _int(value, "num_experts_per_tok")


def _qwen_first_dense_layers(config: dict[str, Any], model_type: str, num_layers: int) -> int:
    """Qwen's layer i is MoE iff i not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0;
    ``ModelSpec`` holds leading dense layers only."""
    step = _int(config.get("decoder_sparse_step", 1) or 1, "decoder_sparse_step")
    if step != 1:
        raise PlanError(f"{model_type} decoder_sparse_step {step} makes one layer in {step} MoE: "
                        "ppplan models leading dense layers only (first_dense_layers)")  # fmt: skip
    listed = config.get("mlp_only_layers") or []
    if not isinstance(listed, list):
        raise PlanError(f"{model_type} mlp_only_layers must be a list of layer indices, got {listed!r}")
    dense = sorted(_int(i, "mlp_only_layers") for i in listed)
    if dense != list(range(len(dense))) or len(dense) >= num_layers:
        raise PlanError(f"{model_type} mlp_only_layers {dense} are not a run of leading layers: "
                        "ppplan models leading dense layers only (first_dense_layers)")  # fmt: skip
    return len(dense)


def _mixtral(config: dict[str, Any]) -> dict[str, Any]:
    experts = _need(config, "num_local_experts", "mixtral", "the number of experts")
    return {"num_experts": _int(experts, "num_local_experts"), "experts_per_token": _top_k(config, "mixtral"),
            "moe_ffn_hidden_size": _int(_need(config, "intermediate_size", "mixtral", "the expert FFN size"), "intermediate_size")}  # fmt: skip


def _qwen(config: dict[str, Any], model_type: str, num_layers: int) -> dict[str, Any]:
    fields = {
        "num_experts": _int(_need(config, "num_experts", model_type, "the number of routed experts"), "num_experts"),
        "experts_per_token": _top_k(config, model_type),
        "moe_ffn_hidden_size": _int(_need(config, "moe_intermediate_size", model_type, "the expert FFN size"), "moe_intermediate_size"),
        "first_dense_layers": _qwen_first_dense_layers(config, model_type, num_layers),
    }
    if model_type == "qwen2_moe":
        shared = _int(_need(config, "shared_expert_intermediate_size", model_type, "the shared expert's FFN size") or 0, "shared_expert_intermediate_size")
        fields |= {"num_shared_experts": 1 if shared else 0, "shared_expert_ffn_hidden_size": shared}
    return fields


def _deepseek(config: dict[str, Any], model_type: str) -> dict[str, Any]:
    freq = _int(config.get("moe_layer_freq", 1) or 1, "moe_layer_freq")
    if freq != 1:
        raise PlanError(f"{model_type} moe_layer_freq {freq} interleaves dense and MoE layers: "
                        "ppplan models leading dense layers only (first_dense_layers)")  # fmt: skip
    sizing = {
        "num_experts": ("n_routed_experts", "the number of routed experts"),
        "moe_ffn_hidden_size": ("moe_intermediate_size", "the expert FFN size"),
        "num_shared_experts": ("n_shared_experts", "the number of shared experts"),
        "kv_lora_rank": ("kv_lora_rank", "the MLA key/value latent size"),
        "q_lora_rank": ("q_lora_rank", "the MLA query latent size; null for none"),
        "qk_nope_head_dim": ("qk_nope_head_dim", "the MLA per-head query/key size without RoPE"),
        "qk_rope_head_dim": ("qk_rope_head_dim", "the MLA per-head RoPE size"),
        "v_head_dim": ("v_head_dim", "the MLA per-head value size"),
    }
    fields: dict[str, Any] = {field: _need(config, key, model_type, why) for field, (key, why) in sizing.items()}
    fields = {k: (_int(v, sizing[k][0]) if v is not None else None) for k, v in fields.items()}
    fields["num_shared_experts"] = fields["num_shared_experts"] or 0
    fields["experts_per_token"] = _top_k(config, model_type)
    fields["first_dense_layers"] = _int(config.get("first_k_dense_replace", FIRST_DENSE_DEFAULT[model_type]) or 0, "first_k_dense_replace")
    return fields


def moe_fields(config: dict[str, Any], model_type: str, num_layers: int) -> dict[str, Any]:
    """The ``ModelSpec`` MoE/MLA fields of a config of ``MOE_FAMILIES`` ({} for any other family)."""
    if model_type == "mixtral":
        return _mixtral(config)
    if model_type in ("qwen2_moe", "qwen3_moe"):
        return _qwen(config, model_type, num_layers)
    if model_type in ("deepseek_v2", "deepseek_v3"):
        return _deepseek(config, model_type)
    return {}
