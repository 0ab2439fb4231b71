"""Parameter counts (``costmodels.params``) against hand-derived values and published totals.

Hand arithmetic (research notes, MoE FACTS section 3): Mixtral-8x7B attention 41,943,040, expert
3·4096·14336 = 176,160,768, router 32,768, norms 8,192 per layer; DeepSeek-V3 MLA attention
187,107,328, dense layer 583,483,392, expert 3·7168·2048 = 44,040,192, router 1,835,008 per layer.
"""

from __future__ import annotations

import pytest

from costmodels.flops import parameter_counts, sc21_parameter_count
from costmodels.params import attention_params, model_parameters, moe_layer_params
from profiles.loader import load_model


def test_mixtral_8x7b_by_hand() -> None:
    model = load_model("mixtral-8x7b")
    assert attention_params(model) == 4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 == 41_943_040
    layer = 41_943_040 + 8_192 + 32_768 + 8 * 176_160_768
    assert moe_layer_params(model, 8) == layer == 1_451_270_144
    parts = model_parameters(model)
    assert parts.total == 2 * 32000 * 4096 + 4096 + 32 * layer == 46_702_792_704
    assert parts.active == 2 * 32000 * 4096 + 4096 + 32 * (layer - 6 * 176_160_768) == 12_879_925_248


def test_deepseek_v3_mla_and_dense_layers_by_hand() -> None:
    model = load_model("deepseek-v3")
    q = 7168 * 1536 + 1536 + 1536 * 128 * 192
    kv = 7168 * 576 + 512 + 512 * 128 * 256
    assert attention_params(model) == q + kv + 128 * 128 * 7168 == 187_107_328
    parts = model_parameters(model)
    assert parts.dense_layer == 187_107_328 + 3 * 7168 * 18432 + 2 * 7168 == 583_483_392
    assert (parts.num_dense_layers, parts.num_moe_layers) == (3, 58)
    assert parts.moe_layer == 187_107_328 + 2 * 7168 + 7168 * 256 + 257 * 44_040_192


# (preset, published total, published active, what the published active counts): the sources are each preset's comments.
PUBLISHED = [
    ("mixtral-8x7b", 46.7e9, 12.9e9, "active"),
    ("mixtral-8x22b", 141e9, 39e9, "active"),
    ("qwen3-30b-a3b", 30.5e9, 3.3e9, "active"),
    ("deepseek-v3", 671e9, 36.7e9, "active_without_embedding"),
]


@pytest.mark.parametrize(("preset", "total", "active", "convention"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_counts_match_published_totals_and_active(preset: str, total: float, active: float, convention: str) -> None:
    """Totals within 0.5 %; active counts within 0.5 % of the decimal figure, or within the rounding of
    an integer-rounded one (Mixtral-8x22B's 39B: 38.5-39.5B; Qwen3's 3.3B is truncated: 3.30-3.40B)."""
    parts = model_parameters(load_model(preset))
    assert parts.total == pytest.approx(total, rel=5e-3)
    got = getattr(parts, convention)
    if preset == "mixtral-8x22b":
        assert 38.5e9 <= got < 39.5e9
    elif preset == "qwen3-30b-a3b":
        assert 3.30e9 <= got < 3.40e9
    else:
        assert got == pytest.approx(active, rel=5e-3)


def test_deepseek_v3_active_is_37b_less_its_embedding_and_37_55b_with_it() -> None:
    parts = model_parameters(load_model("deepseek-v3"))
    assert round(parts.active_without_embedding / 1e9) == 37  # the paper's "37B activated"
    assert parts.active == 37_552_282_624
    assert parts.active - parts.active_without_embedding == 129280 * 7168


def test_dense_models_are_unchanged_gpt_layers_follow_sc21() -> None:
    gpt = load_model("gpt3-175b")
    h = gpt.hidden_size
    assert parameter_counts(gpt).per_layer == 12 * h * h + 13 * h
    parts = model_parameters(gpt)
    assert parts.total == parts.active
    # SC21's formula leaves out the final LayerNorm (2h)
    assert parts.total - parts.final_norm == pytest.approx(sc21_parameter_count(gpt), abs=1.0)


def test_moe_layer_weights_bound_every_layer_of_the_estimate() -> None:
    """Until experts are placed per rank, a layer of an MoE model is priced with every expert."""
    model = load_model("deepseek-v3")
    assert parameter_counts(model).per_layer == model_parameters(model).moe_layer


def test_head_dim_set_apart_sizes_the_projections() -> None:
    qwen3 = load_model("qwen3-30b-a3b")  # 32 heads of 128 on hidden 2048: q is 4096 wide
    assert attention_params(qwen3) == 2048 * 4096 + 2 * 2048 * 512 + 4096 * 2048
