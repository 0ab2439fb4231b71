"""FLOPs and parameter counts against the papers' closed forms."""

import pytest

from costmodels.flops import (
    hardware_flops_per_iteration,
    model_flops_per_iteration,
    parameter_counts,
    sc21_parameter_count,
)
from profiles.loader import load_model

SC21_MODELS = ["gpt3-1.7b", "gpt3-3.6b", "gpt3-7.5b", "gpt3-18b", "gpt3-39b", "gpt3-76b", "gpt3-145b",
               "gpt3-175b", "gpt3-310b", "gpt3-530b", "gpt-1t"]


@pytest.mark.parametrize("name", SC21_MODELS)
def test_hardware_flops_match_sc21_formula_with_full_recompute(name):
    m = load_model(name)
    batch, s, layers, h, v = 512, m.seq_len, m.num_layers, m.hidden_size, m.vocab_size
    paper = 96 * batch * s * layers * h * h * (1 + s / (6 * h) + v / (16 * layers * h))
    ours = hardware_flops_per_iteration(m, batch, s, ["full"] * layers)
    assert ours == pytest.approx(paper, rel=1e-3)


@pytest.mark.parametrize("name", SC21_MODELS)
def test_model_flops_match_72_blsh2_form_without_recompute(name):
    m = load_model(name)
    batch, s, layers, h, v = 8, m.seq_len, m.num_layers, m.hidden_size, m.vocab_size
    paper = 72 * batch * s * layers * h * h * (1 + s / (6 * h) + v / (12 * layers * h))
    assert model_flops_per_iteration(m, batch, s) == pytest.approx(paper, rel=1e-9)


@pytest.mark.parametrize("name", SC21_MODELS)
def test_gpt_parameter_counts_within_one_percent_of_sc21_formula(name):
    m = load_model(name)
    assert parameter_counts(m).total(m.num_layers) == pytest.approx(sc21_parameter_count(m), rel=0.01)


@pytest.mark.parametrize(
    "name, nominal",
    [
        ("llama3-8b", 8_030_261_248),  # Hugging Face meta-llama/Meta-Llama-3-8B safetensors total
        ("llama3-70b", 70_553_706_496),
        ("llama3-405b", 405_853_388_800),
        ("bloom-176b", 176_247_271_424),  # bigscience/bloom model card
    ],
)
def test_published_parameter_counts_within_one_percent(name, nominal):
    m = load_model(name)
    assert parameter_counts(m).total(m.num_layers) == pytest.approx(nominal, rel=0.01)


def test_sc21_1t_is_about_one_trillion():
    m = load_model("gpt-1t")
    assert sc21_parameter_count(m) == pytest.approx(1.008e12, rel=0.005)  # SC21 Table 1: 1008.0B
