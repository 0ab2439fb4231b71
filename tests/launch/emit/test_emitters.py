"""Emitters: option names against the allow-lists, round trips, scripts, atomic writes.

Expected values are derived by hand from the plans and the targets' documented
rules (Megatron-LM ``get_num_layers_to_build``, torchtitan's
``module_fqns_per_model_part``, torchrun/SLURM node counts).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import profiles.files as files_module
from launch.emit import EmitOptions, emit, render
from launch.emit.common import node_layout
from launch.emit.megatron_cuts import layout_string
from planner.cli.main import run
from profiles.errors import PlanError
from profiles.schema import Plan
from tests.launch.emit.megatron_argparse import (
    OPTIONS_DIR,
    layout_stage_layers,
    load_allowlist,
    megatron_plan_view,
    parse_megatron_args,
    parse_torchrun_command,
    parse_torchtitan_toml,
    toml_keys,
    torchtitan_plan_view,
)

MakePlan = Callable[..., Plan]
OUT = Path("/nonexistent/out")  # render() never touches the disk

# (plan kwargs) -> a spread of what the emitters must handle, each on the stack that emits it
MEGATRON = dict(stack="megatron-core")
# torchtitan runs bf16 with TP or PP only under FSDP (stack rule): single-data-rank plans here are fp32
TORCHTITAN = dict(stack="torchtitan", precision="fp32")
PLANS = {
    "uniform": dict(tp=2, pp=2, dp=2, global_batch=8),
    "uneven-first-last": dict(pp=4, stage_layers=[1, 3, 3, 1], global_batch=8),
    "uneven-middle": dict(pp=4, stage_layers=[2, 3, 2, 1], global_batch=8),
    "interleaved": dict(pp=4, v=2, global_batch=8, schedule="interleaved-1f1b"),
    "zbv": dict(pp=2, v=2, dp=2, global_batch=8, schedule="zbv", zero=2),
    "llama-gqa-fp8": dict(model="tiny-llama", tp=2, pp=2, global_batch=4, precision="fp8", recompute="full", sequence_parallel=True),
    "zero-1": dict(pp=2, global_batch=4, recompute="full", zero=1, dp=2),
    # the embedding and the head alone on the end stages (tiny-gpt's 8 layers on pp 2 x v 5)
    "end-slots": dict(pp=2, v=5, global_batch=8, schedule="interleaved-1f1b", stage_layers=[0, 1, 1, 1, 1, 1, 1, 1, 1, 0]),
    # activation CPU offload of 4 of tiny-gpt's 8 layers (megatron-core: no pipeline, no recompute)
    "offload": dict(dp=2, global_batch=4, zero=1, offload_layers=4),
}
MEGATRON_PLANS = {name: {**MEGATRON, **PLANS[name]} for name in
                  ("uniform", "uneven-first-last", "uneven-middle", "interleaved", "llama-gqa-fp8", "zero-1", "end-slots",
                   "offload")}


def _on_fsdp(plan: dict) -> dict:
    """``plan`` as torchtitan runs it in its own precision: FSDP over 2 data ranks (ZeRO >= 1), since torchtitan runs
    DDP only alone and mixed precision with TP or PP only under FSDP (``costmodels.rules.data_parallel_violations``),
    and TP with sequence parallelism."""
    dp = plan.get("dp", 1)
    return {**plan, "stack": "torchtitan", "zero": max(1, plan.get("zero", 0)), "dp": 2, "global_batch": plan["global_batch"] * 2 // dp,
            "sequence_parallel": plan.get("tp", 1) > 1}


TORCHTITAN_PLANS = {name: _on_fsdp(PLANS[name]) for name in
                    ("uniform", "uneven-middle", "interleaved", "zbv", "llama-gqa-fp8", "zero-1", "end-slots")}


def megatron_text(plan: Plan, **options: object) -> str:
    return render(plan, "megatron", OUT, EmitOptions(**options)).files["megatron_args.txt"]


def torchtitan_doc(plan: Plan, **options: object) -> dict:
    return parse_torchtitan_toml(render(plan, "torchtitan", OUT, EmitOptions(**options)).files["torchtitan.toml"])


# --- option names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MEGATRON_PLANS))
def test_megatron_flags_are_in_the_allowlist(build_plan: MakePlan, name: str) -> None:
    allowed = load_allowlist("megatron_args.txt")
    args = parse_megatron_args(megatron_text(build_plan(**MEGATRON_PLANS[name])))
    for flag, value in args.items():
        assert flag in allowed, f"{flag} is not a Megatron-LM option in launch/options/megatron_args.txt"
        if allowed[flag] is not None:
            assert value in allowed[flag], f"{flag} {value} not in {allowed[flag]}"


@pytest.mark.parametrize("name", sorted(TORCHTITAN_PLANS))
def test_torchtitan_keys_are_in_the_allowlist(build_plan: MakePlan, name: str) -> None:
    allowed = load_allowlist("torchtitan_keys.txt")
    doc = torchtitan_doc(build_plan(**TORCHTITAN_PLANS[name]))
    for key in toml_keys(doc):
        assert key in allowed, f"{key} is not a torchtitan key in launch/options/torchtitan_keys.txt"
        value = doc
        for part in key.split("."):
            value = value[part]
        if allowed[key] is not None:
            assert all(v in allowed[key] for v in (value if isinstance(value, list) else [value])), (key, value)


def test_megatron_offloads_the_layers_the_plan_priced(build_plan: MakePlan) -> None:
    """``--cpu-offloading-num-layers N`` for a plan offloading N layers, nothing without; torchtitan, which does not
    offload, refuses the plan."""
    assert parse_megatron_args(megatron_text(build_plan(**MEGATRON_PLANS["offload"])))["--cpu-offloading-num-layers"] == "4"
    assert "--cpu-offloading-num-layers" not in parse_megatron_args(megatron_text(build_plan(**MEGATRON_PLANS["zero-1"])))
    with pytest.raises(PlanError, match="does not offload"):
        torchtitan_doc(build_plan(**{**PLANS["offload"], "stack": "torchtitan"}))


def test_allowlists_name_their_source() -> None:
    for name in ("megatron_args.txt", "megatron_lm_2022_args.txt", "torchtitan_keys.txt"):
        header = (OPTIONS_DIR / name).read_text()
        assert "Source:" in header and "commit" in header


# --- Megatron-LM round trips ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["uniform", "uneven-first-last", "uneven-middle", "interleaved", "end-slots"])
def test_megatron_round_trip(build_plan: MakePlan, name: str) -> None:
    plan = build_plan(**MEGATRON_PLANS[name])
    rendered = render(plan, "megatron", OUT)
    world = plan.config.tp * plan.config.pp * plan.config.dp
    view = megatron_plan_view(parse_megatron_args(rendered.files["megatron.sh"]), world_size=world)
    cfg = plan.config
    assert (view["tp"], view["pp"], view["v"], view["mbs"]) == (cfg.tp, cfg.pp, cfg.v, cfg.mbs)
    assert view["dp"] == cfg.dp
    assert view["global_batch"] == plan.train.global_batch
    assert view["schedule"] == cfg.schedule
    assert view["stage_layers"] == cfg.stage_layers
    assert rendered.warnings == []


def test_megatron_uneven_first_last_uses_first_last_flags(build_plan: MakePlan) -> None:
    args = parse_megatron_args(megatron_text(build_plan(**MEGATRON_PLANS["uneven-first-last"])))
    assert args["--decoder-first-pipeline-num-layers"] == "1"
    assert args["--decoder-last-pipeline-num-layers"] == "1"
    assert "--pipeline-model-parallel-layout" not in args


def test_megatron_end_stages_alone_use_the_account_for_flags(build_plan: MakePlan) -> None:
    # exact without the layout string (core < 0.13 too): the embedding and the loss each take a layer's slot
    args = parse_megatron_args(megatron_text(build_plan(**MEGATRON_PLANS["end-slots"])))
    assert args["--account-for-embedding-in-pipeline-split"] and args["--account-for-loss-in-pipeline-split"]
    assert args["--num-virtual-stages-per-pipeline-rank"] == "5"
    assert "--pipeline-model-parallel-layout" not in args and "--decoder-first-pipeline-num-layers" not in args


def test_megatron_layout_string_writes_an_end_stage_without_layers() -> None:
    assert layout_string([0, 4, 4, 0]) == "E|t*4|t*4|L"
    assert layout_stage_layers(layout_string([0, 3, 3, 2])) == [0, 3, 3, 2]


def test_megatron_uneven_middle_is_exact_with_a_layout(build_plan: MakePlan) -> None:
    args = parse_megatron_args(megatron_text(build_plan(**MEGATRON_PLANS["uneven-middle"])))
    assert args["--pipeline-model-parallel-layout"] == "Et*2|t*3|t*2|tL"


def test_megatron_uneven_middle_without_layout_warns_and_emits_the_closest_split(build_plan: MakePlan) -> None:
    plan = build_plan(**MEGATRON_PLANS["uneven-middle"])
    rendered = render(plan, "megatron", OUT, EmitOptions(megatron_layout=False))
    view = megatron_plan_view(parse_megatron_args(rendered.files["megatron_args.txt"]))
    # [2,3,2,1] is 2 layer moves from both [2,2,2,2] and [1,3,3,1]; the lower max stage wins.
    assert view["stage_layers"] == [2, 2, 2, 2]
    assert len(rendered.warnings) == 1 and "[2, 3, 2, 1]" in rendered.warnings[0] and "[2, 2, 2, 2]" in rendered.warnings[0]
    assert "warning: " in rendered.files["megatron_args.txt"]


def test_megatron_interleaved_uneven_first_last_uses_virtual_stage_count(build_plan: MakePlan) -> None:
    # llama3-8b: 32 layers, pp 4, v 2: rank 0 holds 3+3, middle ranks 4+4, the last rank 5+5.
    plan = build_plan("llama3-8b", pp=4, v=2, global_batch=8, schedule="interleaved-1f1b", stage_layers=[3, 4, 4, 5] * 2,
                      **MEGATRON)
    rendered = render(plan, "megatron", OUT)
    args = parse_megatron_args(rendered.files["megatron_args.txt"])
    assert (args["--decoder-first-pipeline-num-layers"], args["--decoder-last-pipeline-num-layers"]) == ("6", "10")
    assert args["--num-virtual-stages-per-pipeline-rank"] == "2"
    assert "--num-layers-per-virtual-pipeline-stage" not in args
    assert megatron_plan_view(args)["stage_layers"] == [3, 4, 4, 5, 3, 4, 4, 5]
    assert rendered.warnings == []


def test_megatron_gpt3_175b_command(build_plan: MakePlan) -> None:
    """SC21 Table 1's 175B row at tp 8, pp 12 with two virtual stages: 96 / (12 * 2) = 4 layers per virtual stage."""
    plan = build_plan("gpt3-175b", tp=8, pp=12, dp=8, v=2, global_batch=1536, schedule="interleaved-1f1b",
                     recompute="selective", sequence_parallel=True, zero=1, **MEGATRON)  # fmt: skip
    args = parse_megatron_args(megatron_text(plan))
    expected = {
        "--tensor-model-parallel-size": "8", "--pipeline-model-parallel-size": "12",
        "--num-layers-per-virtual-pipeline-stage": "4", "--micro-batch-size": "1", "--global-batch-size": "1536",
        "--sequence-parallel": True, "--recompute-granularity": "selective", "--use-distributed-optimizer": True,
        "--bf16": True, "--num-layers": "96", "--hidden-size": "12288", "--num-attention-heads": "96",
        "--ffn-hidden-size": "49152", "--seq-length": "2048", "--vocab-size": "51200",
    }  # fmt: skip
    assert {k: args[k] for k in expected} == expected
    assert "--untie-embeddings-and-output-weights" not in args and "--swiglu" not in args


def test_megatron_llama_shape_and_precision_flags(build_plan: MakePlan) -> None:
    args = parse_megatron_args(megatron_text(build_plan(**MEGATRON_PLANS["llama-gqa-fp8"])))
    assert args["--group-query-attention"] is True and args["--num-query-groups"] == "4"
    assert args["--swiglu"] is True and args["--normalization"] == "RMSNorm"
    assert args["--position-embedding-type"] == "rope" and args["--disable-bias-linear"] is True
    assert (args["--bf16"], args["--fp8-format"]) == (True, "hybrid")
    assert (args["--recompute-granularity"], args["--recompute-method"], args["--recompute-num-layers"]) == ("full", "uniform", "1")


def test_megatron_warns_about_what_it_cannot_express(build_plan: MakePlan) -> None:
    rendered = render(build_plan(model="bloom-176b", pp=2, global_batch=2, **MEGATRON), "megatron", OUT)
    assert any("ALiBi" in w for w in rendered.warnings), rendered.warnings


def test_megatron_core_writes_the_overlaps_the_price_assumed(build_plan: MakePlan) -> None:
    """megatron-core prices DP traffic hidden behind compute (StackSpec.overlap): its job overlaps it."""
    def flags(**kwargs: object) -> dict:
        return parse_megatron_args(megatron_text(build_plan(**MEGATRON, **kwargs)))

    zero1 = flags(pp=2, dp=2, global_batch=4, zero=1)
    assert zero1["--use-distributed-optimizer"] and zero1["--overlap-grad-reduce"] and zero1["--overlap-param-gather"]
    assert zero1["--attention-backend"] == "flash"
    zero0 = flags(pp=2, dp=2, global_batch=4)
    assert zero0["--overlap-grad-reduce"] and "--overlap-param-gather" not in zero0 and "--use-distributed-optimizer" not in zero0
    alone = flags(pp=2, global_batch=4)
    assert "--overlap-grad-reduce" not in alone


def test_megatron_lm_2021_gets_the_flags_of_its_era(build_plan: MakePlan) -> None:
    """SC21's 175B row on the megatron-lm-2021 stack: interleaved by layers per virtual stage, the
    distributed optimizer over local DDP, no overlap flags (it reduced after the backward), GPT-2 BPE
    files whose 50257 tokens pad to the plan's 51200 at tp 8."""
    plan = build_plan("gpt3-175b", tp=8, pp=12, dp=8, v=2, global_batch=1536, schedule="interleaved-1f1b",
                      recompute="selective", sequence_parallel=True, zero=1, stack="megatron-lm-2021")  # fmt: skip
    rendered = render(plan, "megatron", OUT)
    args = parse_megatron_args(rendered.files["megatron_args.txt"])
    allowed = load_allowlist("megatron_lm_2022_args.txt")
    assert set(args) <= set(allowed), set(args) - set(allowed)
    assert args["--num-layers-per-virtual-pipeline-stage"] == "4" and args["--DDP-impl"] == "local"
    assert args["--use-distributed-optimizer"] and args["--recompute-granularity"] == "selective"
    assert "--overlap-grad-reduce" not in args and args["--tokenizer-type"] == "GPT2BPETokenizer"
    assert megatron_plan_view(args, world_size=768)["stage_layers"] == [4] * 24
    assert rendered.warnings == []
    assert subprocess.run(["bash", "-n"], input=rendered.files["megatron.sh"], text=True).returncode == 0


def test_megatron_lm_2021_warns_for_a_llama_model(build_plan: MakePlan) -> None:
    rendered = render(build_plan("tiny-llama", pp=2, global_batch=2, stack="megatron-lm-2021"), "megatron", OUT)
    assert any("no SwiGLU, RMSNorm, rotary" in w for w in rendered.warnings), rendered.warnings


@pytest.mark.parametrize(
    ("plan_kwargs", "target", "needle"),
    [
        (PLANS["uniform"], "megatron", "re-plan with --stack megatron-core or --stack megatron-lm-2021"),
        (PLANS["uniform"], "torchtitan", "re-plan with --stack torchtitan"),
        ({**PLANS["uniform"], **MEGATRON}, "torchrun", "re-plan with --stack ppplan-torch"),
        ({**PLANS["zbv"], **MEGATRON}, "megatron", "schedule 'zbv' is not run by stack 'megatron-core'"),
        (dict(pp=4, v=2, global_batch=10, schedule="interleaved-1f1b", **MEGATRON), "megatron", "multiple of pp"),
        (dict(pp=2, global_batch=4, zero=3, dp=2, **MEGATRON), "megatron", "zero=3 is not run"),
        (dict(pp=2, global_batch=4, recompute=["full", "none"], **MEGATRON), "megatron", "one recompute kind"),
        (dict(pp=2, global_batch=2, schedule="chimera", **TORCHTITAN), "torchtitan", "simulated only"),
        # priced only: ppplan writes Megatron-LM's arguments, not DeepSpeed's config
        (dict(pp=2, global_batch=4, recompute="full", stack="megatron-deepspeed"), "megatron",
         "stack 'megatron-deepspeed', which emits nothing; to emit megatron, re-plan with --stack megatron-core or "
         "--stack megatron-lm-2021"),
    ],
)
def test_a_plan_is_emitted_only_for_the_stack_it_was_priced_on(build_plan: MakePlan, plan_kwargs: dict, target: str,
                                                              needle: str) -> None:
    with pytest.raises(PlanError, match=re.escape(needle)):
        render(build_plan(**plan_kwargs), target, OUT)


# --- torchtitan round trips -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["uniform", "uneven-middle", "interleaved", "zbv"])
def test_torchtitan_round_trip(build_plan: MakePlan, name: str) -> None:
    plan = build_plan(**TORCHTITAN_PLANS[name])
    view = torchtitan_plan_view(torchtitan_doc(plan))
    cfg = plan.config
    assert (view["tp"], view["pp"], view["dp"], view["v"], view["mbs"]) == (cfg.tp, cfg.pp, cfg.dp, cfg.v, cfg.mbs)
    assert view["global_batch"] == plan.train.global_batch
    assert view["num_microbatches"] == cfg.num_microbatches
    assert view["schedule"] == cfg.schedule
    assert view["stage_layers"] == cfg.stage_layers


def test_torchtitan_zbv_names_and_modules(build_plan: MakePlan) -> None:
    doc = torchtitan_doc(build_plan(**TORCHTITAN_PLANS["zbv"]))
    par = doc["parallelism"]
    assert par["pipeline_parallel_schedule"] == "ZBVZeroBubble"
    assert par["fsdp_reshard_after_forward"] == "never"  # zero 2
    assert par["disable_loss_parallel"] is False  # the stack prices vocab-parallel cross-entropy
    zero3 = torchtitan_doc(build_plan(pp=2, dp=2, global_batch=8, zero=3, **TORCHTITAN))["parallelism"]
    assert zero3["fsdp_reshard_after_forward"] == "always"
    assert par["module_fqns_per_model_part"][0][:2] == ["tok_embeddings", "layers.0"]
    assert par["module_fqns_per_model_part"][-1][-2:] == ["norm", "output"]


def test_torchtitan_custom_schedule_points_at_the_csv(build_plan: MakePlan, tmp_path: Path) -> None:
    actions = "0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n"
    plan = build_plan(pp=2, global_batch=2, schedule="custom", schedule_csv=actions, **TORCHTITAN)  # the plan carries its order
    out = tmp_path / "out"
    paths = emit(plan, "torchtitan", out, on_warning=lambda w: None)
    assert sorted(p.name for p in paths) == ["schedule.csv", "torchtitan.toml"]
    doc = parse_torchtitan_toml((out / "torchtitan.toml").read_text())
    view = torchtitan_plan_view(doc)
    assert view["schedule"] == "csv" and Path(view["schedule_csv"]) == (out / "schedule.csv").resolve()
    assert (out / "schedule.csv").read_text() == actions
    assert doc["parallelism"]["pipeline_parallel_schedule"] == "PipelineScheduleSingle"  # one stage per rank


def test_custom_schedule_without_its_csv_is_a_clear_error(build_plan: MakePlan, tmp_path: Path) -> None:
    plan = build_plan(pp=2, global_batch=2, schedule="custom")
    with pytest.raises(PlanError, match=re.escape("needs its action list in the plan (config.schedule_csv)")):
        render(plan, "csv", OUT)
    other = tmp_path / "other.csv"
    other.write_text("0F0,0B0\n1F0,1B0\n")  # one microbatch, the plan has two
    with pytest.raises(PlanError, match=r"\(pp, v, M\) = \(2, 1, 1\) but the plan has \(2, 1, 2\)"):
        render(plan, "csv", OUT, EmitOptions(custom_schedule_csv=other))


@pytest.mark.parametrize("schedule", ["zb-h1", "1f1b"])
def test_csv_target_writes_the_generated_schedule(build_plan: MakePlan, schedule: str) -> None:
    from costmodels.schedules.generate import generate_schedule
    from costmodels.schedules.torch_csv import parse_torch_csv

    text = render(build_plan(pp=4, global_batch=8, schedule=schedule), "csv", OUT).files["schedule.csv"]
    rows = [row.split(",") for row in text.splitlines()]
    assert len(rows) == 4  # one row per pipeline rank
    # every rank runs F, then B (1F1B) or I + W (ZB-H1), for each of the 8 microbatches
    assert all(len(row) == 8 * (2 if schedule == "1f1b" else 3) for row in rows)
    assert rows[0][0] == "0F0"
    assert parse_torch_csv(text, schedule).ranks == generate_schedule(schedule, 4, 1, 8).ranks


def test_torchtitan_zb_h1_writes_its_csv(build_plan: MakePlan) -> None:
    rendered = render(build_plan(pp=2, global_batch=4, schedule="zb-h1", **TORCHTITAN), "torchtitan", OUT)
    assert set(rendered.files) == {"torchtitan.toml", "schedule.csv"}
    par = parse_torchtitan_toml(rendered.files["torchtitan.toml"])["parallelism"]
    assert par["pipeline_parallel_schedule_csv"].endswith("schedule.csv")


@pytest.mark.parametrize(
    ("plan_kwargs", "needle"),
    [
        (dict(pp=2, global_batch=2), "register flavor 'tiny-gpt'"),
    ],
)
def test_torchtitan_warns_about_what_it_cannot_express(build_plan: MakePlan, plan_kwargs: dict, needle: str) -> None:
    rendered = render(build_plan(**plan_kwargs, **TORCHTITAN), "torchtitan", OUT)
    assert any(needle in w for w in rendered.warnings), rendered.warnings


@pytest.mark.parametrize(
    ("plan_kwargs", "needle"),
    [
        (dict(pp=2, dp=2, global_batch=4, zero=0), "runs zero 0 as DDP"),
        (dict(tp=2, pp=2, dp=2, global_batch=4, zero=1), "sequence parallelism always"),
        (dict(tp=2, pp=2, global_batch=2, sequence_parallel=True, precision="bf16"), "trains in fp32"),
    ],
)
def test_torchtitan_refuses_plans_it_would_run_otherwise(build_plan: MakePlan, plan_kwargs: dict, needle: str) -> None:
    """DDP with pipeline parallelism does not run on torchtitan, TP runs with sequence parallelism always, and bf16
    with TP or PP on one data rank trains in fp32: the stack's rules refuse all three, so no TOML is written for a
    plan priced as something else."""
    with pytest.raises(PlanError, match=needle):
        render(build_plan(**{**TORCHTITAN, **plan_kwargs}), "torchtitan", OUT)


def test_torchtitan_selective_recompute_is_the_per_op_policy_its_stack_prices(build_plan: MakePlan) -> None:
    """torchtitan runs selective recompute per op, which the torchtitan stack prices
    (``costmodels.selective_ac``): the TOML asks for it and nothing is said to differ."""
    rendered = render(build_plan(pp=2, global_batch=2, recompute="selective", **TORCHTITAN), "torchtitan", OUT)
    doc = parse_torchtitan_toml(rendered.files["torchtitan.toml"])
    assert doc["activation_checkpoint"] == {"mode": "selective", "selective_ac_option": "op"}
    assert not any("recompute" in w for w in rendered.warnings), rendered.warnings


def test_torchtitan_names_a_shipped_flavor_for_llama3_70b(build_plan: MakePlan) -> None:
    plan = build_plan("llama3-70b", tp=8, pp=4, dp=2, global_batch=64, recompute="full", sequence_parallel=True, zero=3,
                      **TORCHTITAN)
    rendered = render(plan, "torchtitan", OUT)
    doc = parse_torchtitan_toml(rendered.files["torchtitan.toml"])
    assert doc["model"] == {"name": "llama3", "flavor": "70B"}
    assert (doc["training"]["local_batch_size"], doc["parallelism"]["pipeline_parallel_microbatch_size"]) == (32, 1)
    assert rendered.warnings == []


# --- torchrun and SLURM -----------------------------------------------------------------------


def test_torchrun_line_has_the_plans_process_counts(build_plan: MakePlan) -> None:
    plan = build_plan("tiny-gpt", "cpu-local", tp=2, pp=2, global_batch=4, precision="fp32")
    script = render(plan, "torchrun", OUT, EmitOptions(steps=3)).files["torchrun.sh"]
    flags = parse_torchrun_command(script)
    assert (flags["--nnodes"], flags["--nproc-per-node"], flags["--rdzv-backend"]) == ("1", "4", "c10d")
    assert "-m launch.runtime.train" in script and "--steps 3" in script
    # a CPU rank runs one thread, as priced and as `ppplan launch` runs it; a GPU plan's script leaves it alone
    assert 'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"' in script.splitlines()
    gpu = render(build_plan("gpt3-175b", tp=8, pp=4, dp=1, global_batch=8), "torchrun", OUT).files["torchrun.sh"]
    assert "OMP_NUM_THREADS" not in gpu


def test_torchrun_custom_schedule_passes_its_csv(build_plan: MakePlan, tmp_path: Path) -> None:
    actions = "0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n"
    out = tmp_path / "out"
    options = EmitOptions(metrics="m.jsonl")
    plan = build_plan(pp=2, global_batch=2, schedule="custom", schedule_csv=actions)
    paths = emit(plan, "torchrun", out, options=options)
    assert (out / "schedule.csv").read_text() == actions
    assert sorted(p.name for p in paths) == ["plan.json", "schedule.csv", "torchrun.sh"]
    script = (out / "torchrun.sh").read_text()
    assert '--schedule-csv "${SCHEDULE_CSV}"' in script and f"{(out / 'schedule.csv').resolve()}" in script
    assert 'METRICS="${METRICS:-m.jsonl}"' in script and '--metrics "${METRICS}"' in script


def test_torchrun_multi_node_and_nnodes_override(build_plan: MakePlan) -> None:
    plan = build_plan("gpt3-175b", tp=8, pp=4, dp=1, global_batch=8)  # 32 GPUs on 8-GPU nodes
    flags = parse_torchrun_command(render(plan, "torchrun", OUT).files["torchrun.sh"])
    assert (flags["--nnodes"], flags["--nproc-per-node"]) == ("4", "8")
    rendered = render(plan, "torchrun", OUT, EmitOptions(nnodes=8))
    assert parse_torchrun_command(rendered.files["torchrun.sh"])["--nproc-per-node"] == "4"
    assert any("TP groups of 8 now span nodes" in w for w in rendered.warnings)


def test_slurm_script_counts_and_syntax(build_plan: MakePlan, tmp_path: Path) -> None:
    plan = build_plan("gpt3-175b", tp=8, pp=2, dp=1, global_batch=4)  # 16 GPUs = 2 nodes x 8
    paths = emit(plan, "slurm", tmp_path, on_warning=lambda w: None)
    script = (tmp_path / "ppplan.sbatch").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8"):
        assert line in script
    assert "scontrol show hostnames" in script
    flags = parse_torchrun_command(script)
    assert (flags["--nnodes"], flags["--nproc-per-node"]) == ("2", "8")
    assert {p.name for p in paths} == {"ppplan.sbatch", "plan.json"}
    assert subprocess.run(["bash", "-n", str(tmp_path / "ppplan.sbatch")], capture_output=True).returncode == 0


@pytest.mark.parametrize("target", ["torchrun", "megatron"])
def test_shell_scripts_parse(build_plan: MakePlan, tmp_path: Path, target: str) -> None:
    stack = MEGATRON if target == "megatron" else {}
    paths = emit(build_plan(**PLANS["uneven-middle"], **stack), target, tmp_path, on_warning=lambda w: None)
    for path in paths:
        if path.suffix == ".sh":
            result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
            assert result.returncode == 0, result.stderr


def test_scripts_refuse_plans_the_runtime_cannot_run(build_plan: MakePlan) -> None:
    with pytest.raises(PlanError, match="simulated only"):
        render(build_plan(pp=2, global_batch=2, schedule="chimera"), "torchrun", OUT)


def test_node_layout() -> None:
    assert node_layout(12, 8) == node_layout(12, 8, nnodes=2)  # 2 nodes x 6 ranks
    assert node_layout(12, 8).nproc_per_node == 6
    with pytest.raises(PlanError, match="does not split 12 ranks evenly"):
        node_layout(12, 8, nnodes=5)
    with pytest.raises(PlanError, match="use --nnodes 2 or more"):
        node_layout(12, 8, nnodes=1)


# --- writing ----------------------------------------------------------------------------------


def test_emit_writes_atomically_into_a_fresh_out_dir(build_plan: MakePlan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh --out-dir appears in one rename of a staging folder holding every file."""
    renamed: list[tuple[Path, Path, list[str]]] = []
    real_rename = os.rename

    def recording_rename(src: str, dst: str) -> None:
        assert not Path(dst).exists()  # the final name appears only by the rename
        renamed.append((Path(src), Path(dst), sorted(os.listdir(src))))
        real_rename(src, dst)

    monkeypatch.setattr(files_module.os, "rename", recording_rename)
    out = tmp_path / "a" / "b"
    paths = emit(build_plan(**MEGATRON_PLANS["uniform"]), "megatron", out, on_warning=lambda w: None)
    assert sorted(os.listdir(out)) == ["megatron.sh", "megatron_args.txt"]
    assert len(renamed) == 1 and renamed[0][1] == out and renamed[0][2] == ["megatron.sh", "megatron_args.txt"]
    assert renamed[0][0].parent == out.parent and renamed[0][0].name.startswith(".")
    assert sorted(os.listdir(out.parent)) == ["b"]  # no staging folder left
    assert {str(p) for p in paths} == {str(out / "megatron.sh"), str(out / "megatron_args.txt")}
    assert os.access(out / "megatron.sh", os.X_OK) and not os.access(out / "megatron_args.txt", os.X_OK)


def test_unwritable_out_dir_is_a_plan_error(build_plan: MakePlan, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PlanError, match="--out-dir .* is not a writable directory; pick a writable directory"):
        emit(build_plan(), "torchrun", blocker / "out", on_warning=lambda w: None)
    with pytest.raises(PlanError, match="exists and is not a directory"):
        emit(build_plan(), "torchrun", blocker, on_warning=lambda w: None)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_read_only_out_dir_is_a_plan_error(build_plan: MakePlan, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PlanError, match="not writable"):
        emit(build_plan(), "torchrun", locked, on_warning=lambda w: None)


def test_warnings_go_to_logging_by_default(build_plan: MakePlan, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           caplog: pytest.LogCaptureFixture) -> None:
    """A library reports through ``logging`` (or the caller's callback), never through a console."""
    emit(build_plan(model="bloom-176b", pp=2, global_batch=2, **MEGATRON), "megatron", tmp_path)
    assert capsys.readouterr().out == ""
    assert any("no ALiBi" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_cli_prints_emit_warnings_as_one_line_each_on_stderr(build_plan: MakePlan, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(build_plan(model="bloom-176b", pp=2, global_batch=2, **MEGATRON).model_dump_json())
    assert run(["launch", str(plan_path), "--emit", "megatron", "--out-dir", str(tmp_path / "out")]) == 0
    assert "warning: Megatron-LM has no ALiBi" in capsys.readouterr().err


def test_cli_emit_for_another_stack_exits_2_and_writes_nothing(build_plan: MakePlan, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(build_plan(**PLANS["zbv"]).model_dump_json())
    out = tmp_path / "out"
    assert run(["launch", str(plan_path), "--emit", "megatron", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--stack megatron-core" in err[0]
    assert not out.exists()


def test_unknown_target_is_a_plan_error(build_plan: MakePlan) -> None:
    with pytest.raises(PlanError, match="unknown emit target 'deepspeed'"):
        render(build_plan(), "deepspeed", OUT)



def test_cli_refuses_a_plan_that_does_not_fit_unless_forced(build_plan: MakePlan, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    plan = build_plan(**PLANS["uniform"])
    over = plan.estimate.model_copy(update={"fits": False, "peak_memory_gib": [79.0, 113.0], "memory_limit_gib": 71.6})
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(plan.model_copy(update={"estimate": over}).model_dump_json())
    out = tmp_path / "out"
    assert run(["launch", str(plan_path), "--emit", "torchrun", "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: the plan does not fit: pipeline rank 1 needs 113 GiB of 71.6 GiB (over by 41.4 GiB); "
                   "re-plan, or add --force to emit it anyway"]
    assert not out.exists()
    assert run(["launch", str(plan_path), "--dry-run"]) == 1
    assert run(["launch", str(plan_path), "--emit", "torchrun", "--out-dir", str(out), "--force"]) == 0
    assert (out / "torchrun.sh").exists()


# --- mixture of experts, MLA, expert and context parallelism (issue 13) -----------------------


def _with(plan: Plan, **config: object) -> Plan:
    return plan.model_copy(update={"config": plan.config.model_copy(update=config)})


def _assert_in_megatron_allowlist(args: dict) -> None:
    allowed = load_allowlist("megatron_args.txt")
    for flag, value in args.items():
        assert flag in allowed, flag
        if allowed[flag] is not None:
            assert value in allowed[flag], (flag, value)


def test_megatron_mixtral_expert_parallel_flags(build_plan: MakePlan) -> None:
    plan = _with(build_plan("mixtral-8x7b", tp=2, pp=4, dp=8, global_batch=256), ep=8, sequence_parallel=True, stack="megatron-core")
    rendered = render(plan, "megatron", OUT)
    args = parse_megatron_args(rendered.files["megatron_args.txt"])
    _assert_in_megatron_allowlist(args)
    expected = {"--num-experts": "8", "--moe-router-topk": "2", "--moe-ffn-hidden-size": "14336", "--ffn-hidden-size": "14336",
                "--expert-model-parallel-size": "8", "--moe-token-dispatcher-type": "alltoall", "--sequence-parallel": True}  # fmt: skip
    assert {k: args[k] for k in expected} == expected
    assert not {"--moe-layer-freq", "--moe-shared-expert-intermediate-size", "--context-parallel-size"} & set(args)
    assert rendered.warnings == []


def test_megatron_deepseek_v3_dense_layers_shared_expert_mla_and_cp(build_plan: MakePlan) -> None:
    plan = _with(build_plan("deepseek-v3", tp=2, pp=8, dp=2, global_batch=64), ep=2, cp=2, sequence_parallel=True, stack="megatron-core")
    args = parse_megatron_args(render(plan, "megatron", OUT).files["megatron_args.txt"])
    _assert_in_megatron_allowlist(args)
    assert args["--moe-layer-freq"] == "([0]*3+[1]*58)"  # Megatron's pattern: 3 dense layers then 58 MoE
    assert args["--moe-shared-expert-intermediate-size"] == "2048"  # one shared expert of 2048
    assert args["--ffn-hidden-size"] == "18432"  # the dense layers' MLP
    assert (args["--multi-latent-attention"], args["--q-lora-rank"], args["--kv-lora-rank"]) == (True, "1536", "512")
    assert (args["--qk-head-dim"], args["--qk-pos-emb-head-dim"], args["--v-head-dim"]) == ("128", "64", "128")
    assert args["--context-parallel-size"] == "2"


def test_megatron_heads_sized_apart_get_kv_channels(build_plan: MakePlan) -> None:
    plan = build_plan("qwen3-30b-a3b", tp=4, pp=2, global_batch=8, stack="megatron-core")
    args = parse_megatron_args(render(plan, "megatron", OUT).files["megatron_args.txt"])
    assert args["--kv-channels"] == "128" and args["--num-experts"] == "128" and args["--moe-router-topk"] == "8"


def test_megatron_needs_sequence_parallel_with_expert_and_tensor_parallelism(build_plan: MakePlan) -> None:
    """The megatron-core stack's rules require it, so such a plan is never priced, nor emitted switched."""
    plan = _with(build_plan("tiny-moe", tp=2, dp=2, global_batch=4), ep=2, stack="megatron-core")
    with pytest.raises(PlanError, match="needs sequence parallelism with expert and tensor parallelism"):
        render(plan, "megatron", OUT)
    args = parse_megatron_args(megatron_text(_with(plan, sequence_parallel=True)))
    assert args["--sequence-parallel"] is True and args["--expert-model-parallel-size"] == "2"


def test_torchtitan_expert_and_context_degrees(build_plan: MakePlan) -> None:
    plan = _with(build_plan("deepseek-v3", tp=2, pp=8, dp=4, global_batch=64, sequence_parallel=True), ep=4, zero=1, stack="torchtitan")
    rendered = render(plan, "torchtitan", OUT)
    doc = parse_torchtitan_toml(rendered.files["torchtitan.toml"])
    allowed = load_allowlist("torchtitan_keys.txt")
    assert toml_keys(doc) <= set(allowed)
    assert doc["model"] == {"name": "deepseek_v3", "flavor": "671B"}
    par = doc["parallelism"]
    assert (par["expert_parallel_degree"], par["expert_tensor_parallel_degree"], par["context_parallel_degree"]) == (4, 2, 1)
    llama = _with(build_plan("tiny-llama", tp=2, global_batch=8, sequence_parallel=True), cp=2, zero=1, stack="torchtitan")
    par = torchtitan_doc(llama)["parallelism"]
    assert par["context_parallel_degree"] == 2 and "expert_parallel_degree" not in par


def test_torchtitan_mixtral_names_what_to_register(build_plan: MakePlan) -> None:
    rendered = render(build_plan("mixtral-8x7b", tp=2, pp=4, dp=2, global_batch=64, zero=1, sequence_parallel=True, stack="torchtitan"),
                      "torchtitan", OUT)
    assert parse_torchtitan_toml(rendered.files["torchtitan.toml"])["model"]["name"] == "qwen3"
    assert any("register flavor 'mixtral-8x7b'" in w for w in rendered.warnings)


def test_slurm_wraps_an_expert_and_context_parallel_plan(build_plan: MakePlan, tmp_path: Path) -> None:
    plan = _with(build_plan("tiny-moe", "cpu-local", dp=2, global_batch=8, precision="fp32"), ep=2, cp=2)
    emit(plan, "slurm", tmp_path, on_warning=lambda w: None)
    flags = parse_torchrun_command((tmp_path / "ppplan.sbatch").read_text())
    assert flags["--nproc-per-node"] == "4"  # tp * cp * pp * dp = 1 * 2 * 1 * 2


def test_megatron_combined_1f1b_writes_the_expert_all_to_all_overlap(build_plan: MakePlan) -> None:
    """Megatron-Core's combined 1F1B is its interleaved schedule run with --overlap-moe-expert-parallel-comm
    (core_v0.14, the flag the price's hidden all-to-alls assume) and virtual stages; interleaved 1F1B gets no
    such flag; the rules refuse it with full recompute."""
    base = _with(build_plan("mixtral-8x7b", tp=2, pp=4, dp=8, v=2, global_batch=256, schedule="interleaved-1f1b"),
                 ep=8, sequence_parallel=True, stack="megatron-core")
    combined = parse_megatron_args(render(_with(base, schedule="combined-1f1b"), "megatron", OUT).files["megatron_args.txt"])
    _assert_in_megatron_allowlist(combined)
    assert combined["--overlap-moe-expert-parallel-comm"] is True and combined["--expert-model-parallel-size"] == "8"
    assert "--overlap-moe-expert-parallel-comm" not in parse_megatron_args(megatron_text(base))
    with pytest.raises(PlanError, match="runs without full recompute"):
        render(_with(base, schedule="combined-1f1b", recompute="full"), "megatron", OUT)
