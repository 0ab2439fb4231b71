"""Hugging Face config.json ingestion across families."""

import json

import pytest

from profiles.errors import PlanError
from profiles.loader import load_model

CONFIGS = {
    "llama": ({"model_type": "llama", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
               "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
               "max_position_embeddings": 8192, "hidden_act": "silu", "tie_word_embeddings": False},
              dict(num_layers=32, kv_heads=8, ffn_size=14336, activation="swiglu", tie_embeddings=False, norm="rmsnorm")),
    "mistral": ({"model_type": "mistral", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000,
                 "max_position_embeddings": 32768, "tie_word_embeddings": False},
                dict(kv_heads=8, activation="swiglu", seq_len=32768, position_embedding="rope")),
    "qwen2": ({"model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 3584, "num_attention_heads": 28,
               "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
               "max_position_embeddings": 32768, "tie_word_embeddings": False},
              dict(kv_heads=4, ffn_size=18944)),
    "gpt2": ({"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257,
              "n_positions": 1024, "n_inner": None, "activation_function": "gelu_new"},
             dict(num_layers=12, ffn_size=3072, activation="gelu", tie_embeddings=True, position_embedding="learned")),
    "gpt_neox": ({"model_type": "gpt_neox", "num_hidden_layers": 44, "hidden_size": 6144, "num_attention_heads": 64,
                  "intermediate_size": 24576, "vocab_size": 50432, "max_position_embeddings": 2048,
                  "hidden_act": "gelu"},
                 dict(num_layers=44, ffn_size=24576, tie_embeddings=False, position_embedding="rope")),
    "bloom": ({"model_type": "bloom", "n_layer": 70, "hidden_size": 14336, "n_head": 112, "vocab_size": 250880},
              dict(num_layers=70, seq_len=2048, position_embedding="alibi", ffn_size=4 * 14336)),
    "falcon": ({"model_type": "falcon", "num_hidden_layers": 80, "hidden_size": 14848, "num_attention_heads": 232,
                "num_kv_heads": 8, "new_decoder_architecture": True, "vocab_size": 65024},
               dict(num_layers=80, kv_heads=8, seq_len=2048)),
}


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_family_loads(family, tmp_path):
    data, expected = CONFIGS[family]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    spec = load_model(str(path))
    for key, value in expected.items():
        assert getattr(spec, key) == value, key


def test_missing_key_names_it(tmp_path):
    data = dict(CONFIGS["llama"][0])
    del data["vocab_size"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PlanError, match="vocab_size"):
        load_model(str(path))


@pytest.mark.parametrize("family, key, table", [("llama", "max_position_embeddings", 2048),
                                                 ("mistral", "max_position_embeddings", 131072),
                                                 ("qwen2", "max_position_embeddings", 32768),
                                                 ("gpt2", "n_positions", 1024)])
def test_a_config_without_its_position_size_takes_the_family_classes_default(family, key, table, tmp_path):
    """transformers fills a left-out max_position_embeddings (GPT-2: n_positions) from the family's
    configuration class (LlamaConfig 2048, MistralConfig 4096 x 32, Qwen2Config 32768, GPT2Config 1024);
    ppplan reads such a config as Hugging Face does instead of refusing it. A family without a known
    default still names the keys it needs."""
    data = {k: v for k, v in CONFIGS[family][0].items() if k != key}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    assert load_model(str(path)).seq_len == table
    path.write_text(json.dumps({**data, "model_type": "phi"}))
    with pytest.raises(PlanError, match="max_position_embeddings"):
        load_model(str(path))


def test_a_checkpoint_named_by_a_long_path_loads_and_a_control_character_does_not(tmp_path):
    """The model's name is the config's ``_name_or_path`` (often a local path): 400 characters load; an escape
    sequence in it is refused (``profiles.schema.Name``: printable, up to 1,024 characters)."""
    data = dict(CONFIGS["llama"][0])
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**data, "_name_or_path": "/ckpt/" + "d" * 400}))
    assert load_model(str(path)).name == "/ckpt/" + "d" * 400
    path.write_text(json.dumps({**data, "_name_or_path": "ckpt\x1b[2J"}))
    with pytest.raises(PlanError, match="holds a control character"):
        load_model(str(path))
