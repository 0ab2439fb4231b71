"""Hugging Face mixture-of-experts configs: the four families read, the refuse list, bad input.

Configs carry the keys of the released files (mistralai/Mixtral-8x7B-v0.1, Qwen/Qwen1.5-MoE-A2.7B,
Qwen/Qwen3-30B-A3B, deepseek-ai/DeepSeek-V3 config.json; routing-only keys left out).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.cli.main import run
from profiles.errors import PlanError
from profiles.loader import load_model

MIXTRAL_8X7B = {
    "model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "num_attention_heads": 32, "num_experts_per_tok": 2,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8, "sliding_window": None,
    "tie_word_embeddings": False, "vocab_size": 32000,
}  # fmt: skip
QWEN15_MOE = {
    "model_type": "qwen2_moe", "hidden_act": "silu", "hidden_size": 2048, "intermediate_size": 5632,
    "max_position_embeddings": 8192, "moe_intermediate_size": 1408, "num_attention_heads": 16, "num_experts": 60,
    "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 16, "shared_expert_intermediate_size": 5632,
    "decoder_sparse_step": 1, "tie_word_embeddings": False, "vocab_size": 151936,
}  # fmt: skip
QWEN3_30B_A3B = {
    "model_type": "qwen3_moe", "decoder_sparse_step": 1, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
    "intermediate_size": 6144, "max_position_embeddings": 40960, "mlp_only_layers": [], "moe_intermediate_size": 768,
    "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48,
    "num_key_value_heads": 4, "tie_word_embeddings": False, "vocab_size": 151936,
}  # fmt: skip
DEEPSEEK_V3 = {
    "model_type": "deepseek_v3", "first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
    "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840, "moe_intermediate_size": 2048,
    "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256, "n_shared_experts": 1, "num_attention_heads": 128,
    "num_experts_per_tok": 8, "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1,
    "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "tie_word_embeddings": False,
    "topk_group": 4, "v_head_dim": 128, "vocab_size": 129280,
}  # fmt: skip


def _load(tmp_path: Path, config: dict) -> object:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return load_model(str(path))


FAMILIES = {
    "mixtral": (MIXTRAL_8X7B, dict(num_experts=8, experts_per_token=2, moe_ffn_hidden_size=14336, ffn_size=14336,
                                   num_shared_experts=0, first_dense_layers=0, kv_heads=8, tie_embeddings=False)),
    "qwen2_moe": (QWEN15_MOE, dict(num_experts=60, experts_per_token=4, moe_ffn_hidden_size=1408, ffn_size=5632,
                                   num_shared_experts=1, shared_expert_ffn_hidden_size=5632, first_dense_layers=0)),
    "qwen3_moe": (QWEN3_30B_A3B, dict(num_experts=128, experts_per_token=8, moe_ffn_hidden_size=768, head_dim=128,
                                      q_dim=4096, num_shared_experts=0, shared_expert_ffn_hidden_size=0)),
    "deepseek_v3": (DEEPSEEK_V3, dict(num_experts=256, experts_per_token=8, moe_ffn_hidden_size=2048, ffn_size=18432,
                                      num_shared_experts=1, shared_expert_ffn_hidden_size=2048, first_dense_layers=3,
                                      q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                                      v_head_dim=128, is_mla=True, activation="swiglu", norm="rmsnorm")),
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_moe_family_loads_as_moe(family: str, tmp_path: Path) -> None:
    config, expected = FAMILIES[family]
    spec = _load(tmp_path, config)
    assert spec.is_moe
    for key, value in expected.items():
        assert getattr(spec, key) == value, key


def test_mixtral_is_never_planned_as_dense(tmp_path: Path) -> None:
    spec = _load(tmp_path, MIXTRAL_8X7B)
    assert spec.num_moe_layers == 32


def test_defaults_of_routing_keys_follow_transformers(tmp_path: Path) -> None:
    config = {k: v for k, v in MIXTRAL_8X7B.items() if k != "num_experts_per_tok"}
    assert _load(tmp_path, config).experts_per_token == 2  # MixtralConfig default
    deepseek = {k: v for k, v in DEEPSEEK_V3.items() if k != "first_k_dense_replace"}
    assert _load(tmp_path, deepseek).first_dense_layers == 3  # DeepseekV3Config default


def test_leading_mlp_only_layers_become_first_dense_layers(tmp_path: Path) -> None:
    assert _load(tmp_path, {**QWEN3_30B_A3B, "mlp_only_layers": [1, 0]}).first_dense_layers == 2


def test_mlp_only_layers_not_a_list_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="mlp_only_layers must be a list of layer indices, got 5"):
        _load(tmp_path, {**QWEN3_30B_A3B, "mlp_only_layers": 5})


def test_one_layer_type_named_for_every_layer_is_read(tmp_path: Path) -> None:
    """``layer_types: "mamba"`` (a string, not a list) names a hybrid model as a list of them would."""
    with pytest.raises(PlanError, match=r"hybrid or non-standard layers \(layer_types \['mamba'\]"):
        _load(tmp_path, {**QWEN3_30B_A3B, "layer_types": "mamba"})


def test_query_rank_null_means_no_query_compression(tmp_path: Path) -> None:
    assert _load(tmp_path, {**DEEPSEEK_V3, "q_lora_rank": None}).q_lora_rank is None


JAMBA = {"model_type": "jamba", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 65536,
         "intermediate_size": 14336, "num_experts": 16, "num_experts_per_tok": 2, "expert_layer_period": 2,
         "attn_layer_period": 8, "mamba_d_state": 16}  # fmt: skip


@pytest.mark.parametrize(
    "config, fragment",
    [
        (JAMBA, "model_type 'jamba' has hybrid or non-standard layers (attn_layer_period, expert_layer_period, mamba_d_state)"),
        ({**QWEN3_30B_A3B, "model_type": "qwen3_next", "layer_types": ["linear_attention", "full_attention"]},
         "layer_types ['linear_attention']"),
        ({**MIXTRAL_8X7B, "model_type": "llama4", "text_config": {"hidden_size": 5120}}, "text_config"),
        ({**QWEN3_30B_A3B, "model_type": "olmoe"}, "model_type 'olmoe' has mixture-of-experts keys"),
        ({**MIXTRAL_8X7B, "model_type": "phimoe"}, "reads the MoE configs of mixtral, qwen2_moe, qwen3_moe"),
        ({**QWEN3_30B_A3B, "decoder_sparse_step": 2}, "decoder_sparse_step 2 makes one layer in 2 MoE"),
        ({**QWEN3_30B_A3B, "mlp_only_layers": [3]}, "mlp_only_layers [3] are not a run of leading layers"),
        ({**DEEPSEEK_V3, "moe_layer_freq": 2}, "moe_layer_freq 2 interleaves dense and MoE layers"),
    ],  # fmt: skip
)
def test_unsupported_architectures_are_refused_by_name(config: dict, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(PlanError) as err:
        _load(tmp_path, config)
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({k: v for k, v in MIXTRAL_8X7B.items() if k != "num_local_experts"}, "missing 'num_local_experts'"),
        ({k: v for k, v in QWEN3_30B_A3B.items() if k != "moe_intermediate_size"}, "missing 'moe_intermediate_size'"),
        ({k: v for k, v in DEEPSEEK_V3.items() if k != "q_lora_rank"}, "missing 'q_lora_rank'"),
        ({**{k: v for k, v in DEEPSEEK_V3.items() if k != "num_experts_per_tok"}, "model_type": "deepseek_v2"},
         "missing 'num_experts_per_tok' (the router's top-k; no default)"),
        ({**MIXTRAL_8X7B, "num_experts_per_tok": 9}, "experts_per_token 9 is above num_experts 8"),
    ],  # fmt: skip
)
def test_bad_moe_input_names_the_key_or_rule(config: dict, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(PlanError) as err:
        _load(tmp_path, config)
    assert fragment in str(err.value)


def test_cli_bad_moe_config_is_one_error_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**MIXTRAL_8X7B, "num_experts_per_tok": 9}))
    code = run(["search", "--model", str(path), "--cluster", "dgx-h100", "--gpus", "16", "--global-batch", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and "experts_per_token 9 is above num_experts 8" in err[0]


def test_cli_refuses_a_hybrid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(JAMBA))
    code = run(["search", "--model", str(path), "--cluster", "dgx-h100", "--gpus", "16", "--global-batch", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "jamba" in err[0]


@pytest.mark.parametrize("stack", [None, "megatron-core"])
def test_mixtral_config_on_64_h100_gets_expert_parallelism_and_sane_memory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], stack: str | None) -> None:
    """The issue's check, as its command reads (the default stack) and on megatron-core: Mixtral-8x7B's
    config.json on 64 H100, global batch 256, seq 4096 plans the experts as experts, and its peak memory lies
    between what the rank must hold and the usable HBM.

    megatron-core picks ep > 1 and holds its bf16 weights and gradients whole (4 B per parameter: the
    32·8·176,160,768 expert parameters over ep·tp·pp ranks, the other 1,605,632,000 (46,702,792,704 −
    45,097,156,608) over tp·pp). On the default stack torch's runtime keeps at most three of a rank's stages
    unsharded and frees each stage's gradients at its REDUCE_GRAD, so the pick may instead shard the experts
    over the data ranks on more than three stages a rank (it did from 2026-12-06: ep 1, pp 2, v 8, 4.22 s, against
    4.38 s for the best ep 4 plan): either expert parallelism or that eviction, and at least the bf16 weights of
    three of its v stages (2 B x 3/v per parameter, equal stages: the fewest three stages can hold) and its
    fp32 optimizer state (12 B per parameter, over its dp ranks at ZeRO 1 or 2, whole at ZeRO 0)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(MIXTRAL_8X7B))
    code = run(["search", "--model", str(path), "--cluster", "dgx-h100", "--gpus", "64", "--global-batch", "256",
                "--seq-len", "4096", "--top-k", "1", "--json", *(["--stack", stack] if stack else [])])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)[0]
    cfg, est = plan["config"], plan["estimate"]
    assert est["params_total"] == 46_702_792_704
    expert, dense = 32 * 8 * 176_160_768, 46_702_792_704 - 32 * 8 * 176_160_768
    on_rank = expert / (cfg["ep"] * cfg["tp"] * cfg["pp"]) + dense / (cfg["tp"] * cfg["pp"])
    if stack == "megatron-core":
        assert cfg["ep"] > 1
        floor_gib = 4 * on_rank / 2**30
    else:
        assert cfg["ep"] > 1 or cfg["v"] > 3
        assert cfg["zero"] < 3  # the optimizer state at least its ZeRO-1 shard
        floor_gib = (2 * min(1.0, 3 / cfg["v"]) + 12 / cfg["dp"]) * on_rank / 2**30
    assert floor_gib < max(est["peak_memory_gib"]) <= est["memory_limit_gib"]
