"""DeepSeek-V3's multi-token prediction modules (``costmodels.mtp``): parameters against DeepSeek's published
total, the last stage's time and memory, the stacks that run them, the Megatron flag, and the corpus rows."""

from __future__ import annotations

import pytest

from costmodels.estimate import estimate, stage_times
from costmodels.flops import logits_forward_flops, model_flops_per_iteration, transformer_layer_forward_flops
from costmodels.layer_costs import RooflineTimes
from costmodels.memory import stage_param_split
from costmodels.params import model_parameters, moe_layer_params
from costmodels.rules import model_support_violations
from launch.emit.experts import megatron_model_args
from planner.trust.published_runs import PublishedRow, read_published_runs
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ModelSpec, ParallelConfig, TrainSpec


def _with_mtp(name: str, layers: int = 1) -> ModelSpec:
    model = load_model(name)
    return ModelSpec.model_validate({**model.model_dump(), "mtp_layers": layers})


def test_deepseek_v3_with_its_mtp_module_is_deepseeks_685b_less_the_modules_own_embedding_and_head() -> None:
    """One module: enorm, hnorm and the final norm (3 x 7168), eh_proj 2 x 7168 x 7168, and one MoE layer with all
    256 routed experts: 11.61B, 682.64B in all. DeepSeek's Hugging Face total, 685B "including 14B of the MTP
    module", stores the module's own copies of the embedding and the output head (2 x 129,280 x 7168 = 1.85B),
    which Megatron-Core shares with the model's: 682.64 + 1.85 = 684.49B, 685B to 0.1 %."""
    base, model = load_model("deepseek-v3"), _with_mtp("deepseek-v3")
    module = 3 * 7168 + 2 * 7168 * 7168 + moe_layer_params(base, 256)
    assert model_parameters(model).total == model_parameters(base).total + module
    shared_copies = 2 * 129_280 * 7168
    assert (model_parameters(model).total + shared_copies) / 685e9 == pytest.approx(1.0, abs=0.002)
    assert model_parameters(model).active == model_parameters(base).active + 3 * 7168 + 2 * 7168**2 + moe_layer_params(base, 8)


def test_model_flops_count_each_module_once_more_through_a_layer_and_the_logits() -> None:
    base, model = load_model("deepseek-v3"), _with_mtp("deepseek-v3")
    s, gb = 4096, 8
    module = 2.0 * s * gb * 2 * 7168**2 + transformer_layer_forward_flops(base, s, gb, moe=True).total \
        + logits_forward_flops(base, s, gb)
    assert model_flops_per_iteration(model, gb, s) == pytest.approx(model_flops_per_iteration(base, gb, s) + 3 * module)


def test_the_last_stage_holds_the_modules_and_a_copy_of_the_embedding() -> None:
    base, model = load_model("deepseek-v3"), _with_mtp("deepseek-v3")
    extra = stage_param_split(model, 60, 1, False, True, 1, 8).dense - stage_param_split(base, 60, 1, False, True, 1, 8).dense
    moe_dense_part = stage_param_split(base, 10, 1, False, False, 1, 8).dense  # one MoE layer's non-expert parameters
    assert extra == pytest.approx(129_280 * 7168 + 3 * 7168 + 2 * 7168**2 + moe_dense_part)
    experts = stage_param_split(model, 60, 1, False, True, 1, 8).expert - stage_param_split(base, 60, 1, False, True, 1, 8).expert
    assert experts == pytest.approx(stage_param_split(base, 10, 1, False, False, 1, 8).expert)
    assert stage_param_split(model, 0, 4, True, False, 1, 8) == stage_param_split(base, 0, 4, True, False, 1, 8)


def test_the_modules_lengthen_only_the_last_stage_by_a_projection_a_layer_and_a_head() -> None:
    """Megatron-Bridge's pp 16 layout for DeepSeek-V3 (4 decoder layers per stage, 1 on the last, which holds the
    MTP module and the loss), 8 B200 per node, ep 8, fp8: every stage but the last is unchanged; the last grows by
    the projection's, one MoE layer's and one head's F."""
    cluster, stack = load_cluster("dgx-b200"), load_stack("megatron-core")
    train = TrainSpec(global_batch=256, seq_len=4096, precision="fp8")
    cfg = ParallelConfig(stack="megatron-core", tp=1, pp=16, dp=16, ep=8, etp=1, mbs=1, num_microbatches=16,
                         schedule="1f1b", stage_layers=[4] * 15 + [1])
    base, model = load_model("deepseek-v3"), _with_mtp("deepseek-v3")
    plain, mtp = (stage_times(m, cluster, train, cfg, stack=stack) for m in (base, model))
    assert plain.forward_s[:-1] == mtp.forward_s[:-1]
    layers = RooflineTimes(base, cluster, "fp8", stack=stack)
    added = layers.mtp_projection(1, 1, 4096, False).forward_s + layers.transformer(1, 1, 4096, False, "none", ep=8, moe=True, etp=1).forward_s \
        + layers.head(1, 1, 4096, False).forward_s
    assert mtp.forward_s[-1] - plain.forward_s[-1] == pytest.approx(added)
    assert estimate(model, cluster, train, cfg, stack=stack).step_time_s > estimate(base, cluster, train, cfg, stack=stack).step_time_s


@pytest.mark.parametrize(("stack", "runs"), [("megatron-core", True), ("ppplan-torch", False), ("torchtitan", False)])
def test_only_megatron_core_runs_multi_token_prediction(stack: str, runs: bool) -> None:
    problems = model_support_violations(_with_mtp("deepseek-v3"), load_stack(stack))
    assert any("multi-token prediction" in p for p in problems) != runs


def test_megatron_args_carry_the_module_count() -> None:
    args = dict(megatron_model_args(_with_mtp("deepseek-v3")))
    assert args["--mtp-num-layers"] == "1"
    assert "--mtp-num-layers" not in dict(megatron_model_args(load_model("deepseek-v3")))


def test_nemo_deepseek_rows_run_the_recipes_layout_and_module_unless_named_without() -> None:
    rows = [r for r in read_published_runs() if isinstance(r, PublishedRow) and r.model.num_layers == 61
            and r.source == "nemo-perf"]
    pp16 = [r for r in rows if (r.config.pp, r.config.v) == (16, 1)]
    assert pp16 and all(r.config.stage_layers == [4] * 15 + [1] and r.model.mtp_layers == 1 for r in pp16)
    without = [r for r in rows if "w/o MTP" in r.run]
    assert without and all(r.model.mtp_layers == 0 for r in without)


def test_nemo_deepseek_h100_row_runs_what_its_release_script_set() -> None:
    """NeMo 25.09's DeepSeek-V3 on 1024 H100 ran Megatron-Bridge v0.1.0rc4's run_script.py, which for h100 turns on
    the expert all-to-all overlap (A2A_1F1B) and recomputes MLA's up-projections and the dense layers' MLP: priced as
    the combined 1F1B, those recomputes listed as not priced."""
    row = next(r for r in read_published_runs() if isinstance(r, PublishedRow)
               and r.run.startswith("DeepSeekV3 (dropless) DGX-H100 FP8 1024GPU"))
    assert (row.config.pp, row.config.v, row.config.schedule) == (8, 4, "combined-1f1b")
    assert any(a.startswith("Megatron-Core's recompute_modules (mla_up_proj") for a in row.assumptions)


def test_megatron_layout_puts_the_modules_before_the_loss_on_the_last_stage() -> None:
    """Megatron-Core's layout grammar: ``m`` per module, after every decoder layer, in the last stage with ``L``."""
    from launch.emit.megatron_cuts import layout_string, pipeline_args

    assert layout_string([4] * 3 + [1], 1) == "Et*4|t*4|t*4|tmL"
    # pp 8 x v 2: rank 7's chunks hold 4 and 1 layers, which no first/last flag expresses
    args, emitted, warnings = pipeline_args([4] * 15 + [1], 8, 2, True, 1)
    assert args == [("--pipeline-model-parallel-layout", "Et*4|" + "t*4|" * 14 + "tmL")] and not warnings
    assert emitted == [4] * 15 + [1]
    # pp 16: the last rank's count alone differs; Megatron builds the modules on the last stage itself
    assert pipeline_args([4] * 15 + [1], 16, 1, True, 1)[0] == [("--decoder-last-pipeline-num-layers", "1")]


def test_megatron_core_refuses_what_its_config_asserts() -> None:
    """Megatron-Core's checks: the combined 1F1B (--overlap-moe-expert-parallel-comm) with at most one module
    (transformer_config.py __post_init__), and modules only with rotary or no position embedding (arguments.py)."""
    from costmodels.rules import expert_overlap_violations

    assert expert_overlap_violations("combined-1f1b", 8, "none", "bf16", 1) == []
    assert any("multi-token prediction" in p for p in expert_overlap_violations("combined-1f1b", 8, "none", "bf16", 2))
    assert expert_overlap_violations("interleaved-1f1b", 8, "none", "bf16", 2) == []
    gpt = ModelSpec.model_validate({**load_model("gpt3-1.7b").model_dump(), "mtp_layers": 1})
    assert gpt.position_embedding == "learned"
    assert any("position embedding" in p for p in model_support_violations(gpt, load_stack("megatron-core")))
    assert model_support_violations(_with_mtp("deepseek-v3"), load_stack("megatron-core")) == []


def test_hardware_flops_count_the_module_layers_recompute() -> None:
    """Under full recompute the module's transformer layer runs its forward again, as the decoder's do: HFU's
    FLOPs grow by 4 x its forward over MFU's 3 x (one more forward), with MTP as without."""
    cluster, stack = load_cluster("dgx-b200"), load_stack("megatron-core")
    train = TrainSpec(global_batch=64, seq_len=4096, precision="bf16")
    cfg = ParallelConfig(stack="megatron-core", tp=1, pp=16, dp=4, ep=4, etp=1, mbs=1, num_microbatches=16,
                         schedule="1f1b", recompute="full", stage_layers=[4] * 15 + [1])
    base, model = load_model("deepseek-v3"), _with_mtp("deepseek-v3")
    est_base, est = (estimate(m, cluster, train, cfg, stack=stack) for m in (base, model))
    extra_hw = est.hw_tflops_per_gpu * est.step_time_s - est_base.hw_tflops_per_gpu * est_base.step_time_s
    extra_model = est.model_tflops_per_gpu * est.step_time_s - est_base.model_tflops_per_gpu * est_base.step_time_s
    layer = transformer_layer_forward_flops(base, 4096, 64, moe=True).total * 1e-12 / cfg.world_size
    assert extra_hw - extra_model == pytest.approx(layer, rel=1e-6)
