"""Hugging Face ``config.json`` -> ``ModelSpec``.

Key aliases follow the model families' own configuration classes (llama, mistral,
qwen2, qwen3, gpt2, gpt_neox, bloom, falcon; the mixture-of-experts families mixtral,
qwen2_moe, qwen3_moe, deepseek_v2/v3 through ``hf_moe``). Keys that Hugging Face
defaults are optional with the same default; a missing key without one is an error
naming it. A config of hybrid layers or with expert keys of a family not read is
refused (``hf_moe.unsupported_reason``), never planned as a dense model.
"""

from __future__ import annotations

from typing import Any

from profiles.errors import PlanError
from profiles.hf_moe import moe_fields, unsupported_reason
from profiles.schema import ModelSpec

_ALIASES: dict[str, tuple[str, ...]] = {
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_attention_heads": ("num_attention_heads", "n_head", "num_heads"),
    "vocab_size": ("vocab_size",),
    "seq_len": ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"),
}

# What each family's configuration class defaults its position-table size to when a config.json
# leaves the key out (transformers' LlamaConfig ... Qwen3MoeConfig: max_position_embeddings; GPT2Config:
# n_positions). BloomConfig has none: bloom's 2048-token pretraining context.
_SEQ_LEN_DEFAULTS: dict[str, int] = {
    "llama": 2048, "mistral": 4096 * 32, "mixtral": 4096 * 32, "qwen2": 32768, "qwen3": 32768,
    "qwen2_moe": 32768, "qwen3_moe": 32768, "deepseek_v2": 2048, "deepseek_v3": 4096, "gemma": 8192,
    "gpt_neox": 2048, "gpt2": 1024, "opt": 2048, "falcon": 2048, "bloom": 2048,
}

_SWIGLU_TYPES = {"llama", "mistral", "qwen2", "qwen3", "mixtral", "gemma", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3"}


def _first(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return None


def _require(config: dict[str, Any], field: str, source: str) -> Any:
    value = _first(config, _ALIASES[field])
    if value is None:
        names = " or ".join(repr(k) for k in _ALIASES[field])
        raise PlanError(f"{source}: Hugging Face config is missing {names} (needed for {field})")
    return value


def _count(value: Any, key: str, source: str) -> int:
    """An integer as Hugging Face writes counts; a float (even 8.0), a bool, a string or a
    non-finite number is bad input naming the key (``ModelSpec`` then checks its range)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"{source}: '{key}' must be an integer, got {value!r}")
    return value


def _require_count(config: dict[str, Any], field: str, source: str) -> int:
    value = _require(config, field, source)
    key = next(k for k in _ALIASES[field] if config.get(k) is not None)
    return _count(value, key, source)


def _flag(config: dict[str, Any], key: str, default: bool, source: str) -> bool:
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise PlanError(f"{source}: '{key}' must be true or false, got {value!r}")
    return value


def _kv_heads(config: dict[str, Any], heads: int, source: str) -> int:
    if config.get("num_key_value_heads") is not None:
        return _count(config["num_key_value_heads"], "num_key_value_heads", source)
    if config.get("multi_query") and not config.get("new_decoder_architecture"):
        return 1  # falcon-7b style multi-query attention
    if config.get("num_kv_heads") is not None:  # falcon new_decoder_architecture
        return _count(config["num_kv_heads"], "num_kv_heads", source)
    return heads


def _activation(config: dict[str, Any], model_type: str) -> str:
    act = str(config.get("hidden_act") or config.get("activation_function") or "").lower()
    if model_type in _SWIGLU_TYPES or act in {"silu", "swish", "swiglu"}:
        return "swiglu"
    return "gelu"


def _ffn(config: dict[str, Any], hidden: int, model_type: str, source: str) -> int:
    for key in ("intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim"):
        if config.get(key) is not None:
            return _count(config[key], key, source)
    if model_type in _SWIGLU_TYPES:
        raise PlanError(f"Hugging Face {model_type} config is missing 'intermediate_size'")
    return 4 * hidden  # gpt2 n_inner=None, bloom, falcon: 4h


def _position_embedding(config: dict[str, Any], model_type: str, activation: str) -> str:
    if model_type == "bloom" or config.get("alibi"):
        return "alibi"
    if model_type in {"gpt2", "opt"}:
        return "learned"
    if model_type in {"gpt_neox", "falcon"} or activation == "swiglu":
        return "rope"
    return "learned"


def model_from_hf_config(config: dict[str, Any], name: str, source: str = "config.json") -> ModelSpec:
    """Build a ``ModelSpec`` from a Hugging Face config dict."""
    model_type = str(config.get("model_type", "")).lower()
    unsupported = unsupported_reason(config, model_type)
    if unsupported:
        raise PlanError(f"{source}: {unsupported}")
    hidden = _require_count(config, "hidden_size", source)
    heads = _require_count(config, "num_attention_heads", source)
    activation = _activation(config, model_type)
    if _first(config, _ALIASES["seq_len"]) is None and model_type in _SEQ_LEN_DEFAULTS:
        seq_len = _SEQ_LEN_DEFAULTS[model_type]
    else:
        seq_len = _require_count(config, "seq_len", source)
    tied_default = model_type not in {"gpt_neox"}
    position = _position_embedding(config, model_type, activation)
    num_layers = _require_count(config, "num_layers", source)
    try:
        extra = moe_fields(config, model_type, num_layers)
    except PlanError as exc:
        raise PlanError(f"{source}: {exc}") from None
    if not extra.get("kv_lora_rank") and config.get("head_dim") is not None:
        extra["head_dim"] = _count(config["head_dim"], "head_dim", source)  # Qwen3 and others size heads apart from hidden / heads
    try:
        return ModelSpec(
            name=name,
            num_layers=num_layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_key_value_heads=_kv_heads(config, heads, source),
            ffn_hidden_size=_ffn(config, hidden, model_type, source),
            vocab_size=_require_count(config, "vocab_size", source),
            seq_len=seq_len,
            activation=activation,
            tie_embeddings=_flag(config, "tie_word_embeddings", tied_default, source),
            norm="rmsnorm" if activation == "swiglu" else "layernorm",
            position_embedding=position,
            linear_bias=_flag(config, "bias" if "bias" in config else "attention_bias", activation == "gelu", source),
            **extra,
        )
    except ValueError as exc:
        if isinstance(exc, PlanError):
            raise
        raise PlanError(f"{source}: {_first_error(exc)}") from None


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        return f"{loc}: {first.get('msg', '').removeprefix('Value error, ')}".strip(": ")
    return str(exc)
