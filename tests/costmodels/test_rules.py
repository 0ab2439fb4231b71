"""The runtime rules (``costmodels.rules``): each rule fires on the smallest case that breaks it,
says how to fix it, and stays silent on a legal configuration."""

from __future__ import annotations

import pytest

from costmodels.rules import (
    check_config,
    config_violations,
    layout_violations,
    precision_violations,
    recompute_violations,
    schedule_violations,
    tp_violations,
    zero_violations,
)
from profiles.errors import PlanError
from profiles.loader import load_model, load_stack
from profiles.schema import ParallelConfig, TrainSpec

TORCH = load_stack("ppplan-torch")
MEGATRON = load_stack("megatron-core")
MEGATRON_2021 = load_stack("megatron-lm-2021")
LLAMA = load_model("tiny-llama")  # 8 layers, 8 heads, 4 kv heads, FFN 704 = 2^6 * 11
TRAIN = TrainSpec(global_batch=8, seq_len=128, precision="fp32")


def cfg(**update: object) -> ParallelConfig:
    base = dict(tp=1, pp=2, dp=2, mbs=1, num_microbatches=4, schedule="1f1b", stage_layers=[4, 4])
    base.update(update)
    return ParallelConfig(**base)


def test_a_legal_configuration_has_no_violations() -> None:
    assert config_violations(LLAMA, TRAIN, 4, cfg(), TORCH) == []
    check_config(LLAMA, TRAIN, 4, cfg(), TORCH)


@pytest.mark.parametrize(
    "tp, fragment",
    [(3, "num_attention_heads=8"), (8, "num_key_value_heads=4"), (1, None), (2, None), (4, None)],
)
def test_tp_must_divide_heads_kv_heads_and_ffn(tp: int, fragment: str | None) -> None:
    problems = tp_violations(LLAMA, tp)
    assert (fragment in problems[0]) if fragment else problems == []


def test_ffn_divisibility_is_its_own_rule() -> None:
    wide = LLAMA.model_copy(update={"num_attention_heads": 16, "num_key_value_heads": 16, "ffn_hidden_size": 700})
    assert any("ffn_hidden_size=700" in p for p in tp_violations(wide, 8))


@pytest.mark.parametrize(
    "gpus, update, fragment",
    [
        (8, {}, "pick degrees whose product is 8"),
        (4, {"mbs": 3, "num_microbatches": 1}, "not divisible by dp*mbs"),
        (4, {"num_microbatches": 3}, "num_microbatches 3 != global_batch/(dp*mbs) = 4"),
        (4, {"sequence_parallel": True}, "sequence parallel needs tp > 1"),
        (4, {"stage_layers": [4, 3]}, "sum to 7"),
        (4, {"stage_layers": [2, 2, 4]}, "3 entries but pp*v = 2"),
        (4, {"recompute": ["none", "full", "none"]}, "recompute lists 3 stages"),
        (2, {"pp": 1, "dp": 2, "schedule": "zb-h1", "stage_layers": [8]}, "pp=1 has no pipeline"),
        (4, {"schedule_csv": "0F0\n"}, "only for schedule 'custom'"),
        (4, {"schedule": "custom"}, "needs its action list"),
    ],
)
def test_each_rule_names_the_problem(gpus: int, update: dict, fragment: str) -> None:
    problems = config_violations(LLAMA, TRAIN, gpus, cfg(**update), TORCH)
    assert any(fragment in p for p in problems), problems
    with pytest.raises(PlanError):
        check_config(LLAMA, TRAIN, gpus, cfg(**update), TORCH)


def test_more_stages_than_layers() -> None:
    problems = config_violations(LLAMA, TRAIN, 4, cfg(pp=4, dp=1, v=4, num_microbatches=8, schedule="interleaved-1f1b",
                                                        stage_layers=[1] * 16), TORCH)
    assert problems[0] == ("8 layers cannot fill pp*v = 16 stages (at least 14: one per stage, the end stages may hold "
                           "only the embedding or the head): lower pp or v")
    # 8 layers on 10 stages: the embedding and the head alone on the end stages
    legal = cfg(pp=2, dp=2, v=5, num_microbatches=8, schedule="interleaved-1f1b", stage_layers=[0] + [1] * 8 + [0])
    assert not [p for p in config_violations(LLAMA, TRAIN, 4, legal, TORCH) if "layers" in p]


def test_schedules_by_stack() -> None:
    assert schedule_violations("zbv", 2, 2, 4, TORCH) == []
    assert "not run by stack 'megatron-core'" in schedule_violations("zbv", 2, 2, 4, MEGATRON)[0]
    assert "simulated only" in schedule_violations("chimera", 2, 1, 4, TORCH)[0]
    # Megatron-LM's interleaving needs M % pp == 0; torch's needs M % max(1, M // pp) == 0
    assert schedule_violations("interleaved-1f1b", 4, 2, 6, MEGATRON)[-1].endswith("multiple of pp (4)")
    assert schedule_violations("interleaved-1f1b", 4, 2, 3, TORCH) == []
    # Megatron-LM of 2021 interleaves only with pp > 2
    assert "needs pp >= 3" in schedule_violations("interleaved-1f1b", 2, 2, 4, MEGATRON_2021)[0]
    assert "above stack" in schedule_violations("interleaved-1f1b", 2, 9, 4, TORCH)[0]


def test_layouts_by_stack() -> None:
    assert layout_violations([3, 5], 2, 1, TORCH) == []
    assert "uniformly only" in layout_violations([3, 5], 2, 1, MEGATRON_2021)[0]
    assert layout_violations([4, 4], 2, 1, MEGATRON_2021) == []
    first_last = TORCH.model_copy(update={"name": "fl", "cut_layouts": "first-last"})
    assert layout_violations([2, 3, 3, 2], 4, 1, first_last) == []  # first 2, middle 3, last 2
    assert layout_violations([2, 3, 4, 1], 4, 1, first_last)  # middle ranks differ


def test_stack_mismatch_and_parallelism() -> None:
    assert "checked against 'megatron-core'" in config_violations(LLAMA, TRAIN, 4, cfg(), MEGATRON)[0]
    no_sp = TORCH.model_copy(update={"sequence_parallel": False})
    assert "no sequence parallelism" in config_violations(LLAMA, TRAIN, 4, cfg(tp=2, pp=1, dp=2, num_microbatches=4,
                                                                              stage_layers=[8], sequence_parallel=True), no_sp)[0]


def test_zero_rules() -> None:
    assert zero_violations(3, 2, "1f1b", TORCH) == []
    assert "deferred W pass" in zero_violations(3, 2, "zb-h1", TORCH)[0]
    assert zero_violations(3, 1, "zb-h1", TORCH) == []  # no pipeline: no deferred W
    assert "runs 0, 1" in zero_violations(3, 2, "1f1b", MEGATRON)[0]


def test_full_recompute_with_split_backward_is_refused_on_torch_only() -> None:
    assert "once per parameter group" in recompute_violations("full", 2, "zbv", TORCH)[0]
    assert "once per parameter group" in recompute_violations(["none", "full"], 2, "custom", TORCH)[0]
    assert recompute_violations("selective", 2, "zbv", TORCH) == []
    assert recompute_violations("full", 2, "1f1b", TORCH) == []
    megatron_with_zbv = MEGATRON.model_copy(update={"schedules": ["zbv"]})
    assert recompute_violations("full", 2, "zbv", megatron_with_zbv) == []
    assert "one recompute kind" in recompute_violations(["none", "full"], 2, "1f1b", MEGATRON)[0]


def test_precision_by_stack() -> None:
    assert precision_violations("bf16", TORCH) == [] and precision_violations("fp32", TORCH) == []
    assert "not run by stack 'ppplan-torch'" in precision_violations("fp16", TORCH)[0]
    assert precision_violations("fp8", MEGATRON) == []


# --- expert and context parallelism ------------------------------------------------------------

MOE = load_model("tiny-moe")  # tiny-llama with 8 experts of FFN 512, top-2
TORCHTITAN = load_stack("torchtitan")


def moe_cfg(**update: object) -> ParallelConfig:
    base = dict(tp=1, pp=1, dp=4, mbs=1, num_microbatches=2, stage_layers=[8], zero=1)
    base.update(update)
    return ParallelConfig(**base)


def test_legal_expert_and_context_parallel_configurations() -> None:
    assert config_violations(MOE, TRAIN, 4, moe_cfg(ep=4), TORCH) == []
    assert config_violations(MOE, TRAIN, 4, moe_cfg(ep=2, cp=2, dp=2, num_microbatches=4), TORCH) == []  # ep folds over cp
    assert config_violations(LLAMA, TRAIN, 4, moe_cfg(cp=2, dp=2, num_microbatches=4), TORCH) == []


@pytest.mark.parametrize(
    "model, update, fragment",
    [
        (LLAMA, {"ep": 2}, "ep=2 needs a mixture-of-experts model"),
        (MOE.model_copy(update={"num_experts": 6}), {"ep": 4}, "ep=4 does not divide num_experts=6"),
        (MOE, {"ep": 8, "dp": 4}, "ep=8 does not divide dp*cp = 4*1"),
        (MOE, {"ep": 2, "dp": 1, "tp": 4, "num_microbatches": 8}, "ep=2 does not divide dp*cp = 1*1"),
        (LLAMA, {"cp": 3, "dp": 1, "tp": 1, "num_microbatches": 8}, None),  # world 3: only the GPU count and 2cp rules
    ],
)
def test_expert_parallel_rules_name_the_rule(model, update: dict, fragment: str | None) -> None:
    cfg = moe_cfg(**update)
    problems = config_violations(model, TRAIN, cfg.world_size, cfg, TORCH)
    if fragment is None:
        assert problems == ["cp=3 needs the sequence (128) divisible by 2*cp = 6 (two chunks per rank for causal load balance)"]
    else:
        assert any(fragment in p for p in problems), problems


def test_cp_needs_two_chunks_per_rank_of_the_sequence() -> None:
    train = TrainSpec(global_batch=8, seq_len=100, precision="fp32")  # 100 % (2*2) == 0, 100 % (2*4) != 0
    assert config_violations(LLAMA, train, 4, moe_cfg(cp=2, dp=2, num_microbatches=4), TORCH) == []
    problems = config_violations(LLAMA, train, 4, moe_cfg(cp=4, dp=1, num_microbatches=8), TORCH)
    assert problems == ["cp=4 needs the sequence (100) divisible by 2*cp = 8 (two chunks per rank for causal load balance)"]


def test_experts_are_tp_sharded_so_tp_must_divide_their_ffn() -> None:
    odd = MOE.model_copy(update={"moe_ffn_hidden_size": 500})
    assert tp_violations(odd, 2) == []  # 500 / 2
    assert any("moe_ffn_hidden_size=500" in p for p in tp_violations(odd, 8))


def test_megatron_needs_sequence_parallel_with_expert_and_tensor_parallelism_and_no_fp16() -> None:
    bf16 = TrainSpec(global_batch=8, seq_len=128, precision="bf16")
    cfg = moe_cfg(tp=2, dp=2, ep=2, num_microbatches=4, stack="megatron-core")
    problems = config_violations(MOE, bf16, 4, cfg, MEGATRON)
    assert problems == ["stack 'megatron-core' needs sequence parallelism with expert and tensor parallelism: add --sequence-parallel"]
    assert config_violations(MOE, bf16, 4, cfg.model_copy(update={"sequence_parallel": True}), MEGATRON) == []
    fp16 = TrainSpec(global_batch=8, seq_len=128, precision="fp16")
    assert "stack 'megatron-core' runs expert parallelism without fp16: use bf16" in config_violations(
        MOE, fp16, 4, moe_cfg(ep=2, stack="megatron-core"), MEGATRON
    )


def test_torchtitan_carves_experts_out_of_fsdp_and_splits_the_sequence_by_2_cp_tp() -> None:
    bf16 = TrainSpec(global_batch=8, seq_len=128, precision="bf16")
    ok = moe_cfg(ep=2, stack="torchtitan")
    assert config_violations(MOE, bf16, 4, ok, TORCHTITAN) == []
    assert any("use zero >= 1 with ep > 1" in p for p in config_violations(MOE, bf16, 4, ok.model_copy(update={"zero": 0}), TORCHTITAN))
    short = TrainSpec(global_batch=8, seq_len=12, precision="bf16")  # 12 % (2*2) == 0 but 12 % (2*2*2) != 0
    cfg = moe_cfg(cp=2, tp=2, dp=1, num_microbatches=8, stack="torchtitan", sequence_parallel=True)
    assert config_violations(LLAMA, short, 4, cfg, TORCHTITAN) == [
        "stack 'torchtitan' needs the sequence (12) divisible by 2*cp*tp = 8 with cp > 1"
    ]
    assert config_violations(LLAMA, short, 4, cfg.model_copy(update={"stack": "ppplan-torch"}), TORCH) == []


def test_stacks_without_moe_or_mla_refuse_those_models() -> None:
    bf16 = TrainSpec(global_batch=8, seq_len=128, precision="bf16")
    cfg = moe_cfg(stack="megatron-lm-2021")
    assert any("stack 'megatron-lm-2021' has no mixture-of-experts layers" in p for p in config_violations(MOE, bf16, 4, cfg, MEGATRON_2021))
    mla = load_model("deepseek-v3")
    problems = config_violations(mla, bf16, 4, moe_cfg(), TORCH)
    assert "stack 'ppplan-torch' has no multi-head latent attention (deepseek-v3 uses it): use another stack" in problems


@pytest.mark.parametrize(("update", "precision", "fragment"), [
    # torchtitan's DDP is one-dimensional: zero 0 with pipeline (or tensor, context) parallelism does not run
    (dict(zero=0), "bf16", "runs zero 0 as DDP"),
    (dict(zero=1), "bf16", None),
    (dict(zero=0, pp=1, stage_layers=[8]), "fp32", None),  # dp alone: DDP runs ...
    (dict(zero=0, pp=1, stage_layers=[8]), "bf16", "autocasts over fp32 weights"),  # ... autocast, not the priced FSDP2
    (dict(zero=0, dp=1, cp=2, num_microbatches=8), "fp32", "FSDP over the context ranks"),
    # mixed precision with TP or PP only under FSDP: one data-context rank trains in fp32
    (dict(dp=1, num_microbatches=8), "bf16", "trains in fp32"),
    (dict(dp=1, num_microbatches=8), "fp8", "trains in fp32"),
    (dict(dp=1, num_microbatches=8), "fp32", None),
    (dict(tp=2, zero=1), "bf16", "sequence parallelism always"),  # apply_tp shards the norms along the sequence
    (dict(tp=2, zero=1, sequence_parallel=True), "bf16", None),
    (dict(dp=1, cp=2, zero=1, num_microbatches=8), "bf16", None),  # FSDP over the context ranks
])
def test_torchtitan_ties_ddp_and_mixed_precision_to_fsdp(update: dict, precision: str, fragment: str | None) -> None:
    """torchtitan v0.2.2: llama3 parallelize.py raises "DDP has not supported > 1D parallelism", and
    maybe_enable_amp leaves autocast off with TP or PP unless FSDP is on. ppplan's runtime has neither limit."""
    train = TrainSpec(global_batch=8, seq_len=128, precision=precision)
    config = cfg(stack="torchtitan", **update)
    problems = config_violations(LLAMA, train, config.world_size, config, TORCHTITAN)
    if fragment is None:
        assert problems == []
    else:
        assert any(fragment in p for p in problems), problems
    if fragment is not None and precision != "fp8":  # ppplan-torch has no fp8
        mine = config.model_copy(update={"stack": "ppplan-torch"})
        assert config_violations(LLAMA, train, mine.world_size, mine, TORCH) == []
