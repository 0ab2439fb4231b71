"""Output a user trusts: plan files and --json agree, alternatives are plan fields, figures are
rounded for people only, warnings for plans that waste the machine, tables that fit, --version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from planner.cli.main import run
from planner.cli.render import plans_table, seconds, sig3
from planner.search.branch_and_bound import search
from profiles.loader import load_cluster, load_model
from profiles.schema import TrainSpec

SMALL = ["search", "--model", "gpt3-1.7b", "--cluster", "dgx-a100-80g", "--gpus", "32", "--global-batch", "512"]


def test_sig3_and_error_band() -> None:
    assert [sig3(x) for x in (0.87094, 58.81, 72.0, 101827.0, 1936876.0, 0.000953, 0.0)] == \
        ["0.871", "58.8", "72.0", "102k", "1.94M", "0.000953", "0"]
    assert seconds(58.81, 12.0) == "58.8 s ± 12 %" and seconds(58.81) == "58.8 s"
    # beyond the largest suffix an exponent, not one suffix per factor of 1,000 ("534GTTTT")
    assert [sig3(x) for x in (5.34e26, 999.6e12, 999.4e12, -3e20)] == ["5.34e+26", "1.00e+15", "999T", "-3.00e+20"]


def test_a_nearly_empty_critical_rank_gets_no_mfu_ceiling_warning(capsys: pytest.CaptureFixture[str]) -> None:
    """With the first stage holding no layer (``--stage-layers 0,8``) the rank that ends last, whose breakdown the
    plan reports, computes almost nothing: its "MFU while computing" (over 100 %) is no ceiling to warn against."""
    assert run(["evaluate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8", "--tp", "1",
                "--pp", "2", "--mbs", "1", "--stage-layers", "0,8"]) == 0
    assert "under a third" not in capsys.readouterr().err


def test_each_json_item_is_what_out_writes_and_carries_its_alternatives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    assert run(SMALL + ["--json", "--out", str(out)]) == 0
    items = json.loads(capsys.readouterr().out)
    assert items[0] == json.loads(out.read_text())
    best = items[0]
    assert best["alternatives"] and {"config", "step_time_s", "delta_pct", "reason"} <= set(best["alternatives"][0])
    for alt in best["alternatives"]:
        if alt["step_time_s"] is not None and "does not fit" not in alt["reason"]:
            assert alt["delta_pct"] == pytest.approx(100 * (alt["step_time_s"] / best["estimate"]["step_time_s"] - 1))
            assert alt["delta_pct"] > -0.5  # nothing the search could pick beats it by more than its tolerance
    # full precision in JSON: not rounded to what people see
    assert len(repr(best["estimate"]["step_time_s"]).split(".")[1]) > 3


def test_waste_warnings_for_a_batch_too_small_for_the_machine(capsys: pytest.CaptureFixture[str]) -> None:
    # one 2048-token sequence on 64 A100s: even the best plan (tp 8, cp 2, pp 4) leaves the pipeline idle
    assert run(["search", "--model", "gpt3-175b", "--cluster", "dgx-a100-80g", "--gpus", "64", "--global-batch", "1",
                "--top-k", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 sequence per step" in err and "pipeline bubble is" in err and "under a third" in err


def test_hf_config_seq_len_defaults_to_at_most_4096(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model_type": "llama", "hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 4,
        "num_hidden_layers": 4, "intermediate_size": 1024, "vocab_size": 1000, "max_position_embeddings": 131072}))
    assert run(["search", "--model", str(config), "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "8",
                "--top-k", "1", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["train"]["seq_len"] == 4096
    assert "note: assuming --seq-len 4096 = min(4096, max_position_embeddings 131072)" in captured.err
    # a command that refuses its input prints its error line alone, without the assumptions it made on the way
    assert run(["search", "--model", str(config), "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "8",
                "--tp", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no legal configuration has tp in {3}")


@pytest.fixture(scope="module")
def gpt_1t_top5() -> list:
    """GPT-1T's top 5 on 3072 A100s (one search for both widths)."""
    result = search(load_model("gpt-1t"), load_cluster("dgx-a100-80g"), TrainSpec(global_batch=3072, seq_len=2048), 3072, top_k=5)
    return [(s.config, s.estimate.model_copy(update={"error_band_pct": 12.0})) for s in result.best]


@pytest.mark.parametrize("width", [100, 120])
def test_plans_table_fits_the_width_without_cutting_cells(width: int, gpt_1t_top5: list) -> None:
    rows = gpt_1t_top5
    console = Console(width=width, record=True)
    console.print(plans_table(rows, None, width))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text and "recompute" in text and "±12%" in text
    assert all(f" {cfg.schedule} " in text for cfg, _ in rows)


def test_explain_shows_the_exposed_parts_apart_from_overlapped_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    assert run(SMALL + ["--out", str(out)]) == 0
    capsys.readouterr()
    assert run(["explain", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Time breakdown, busiest pipeline rank:" in text and "= step" in text and "Nearest alternatives" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.startswith("ppplan ")


def test_help_lists_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["evaluate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for choice in ("interleaved-1f1b", "zb-h2", "dualpipev", "selective", "megatron-core", "torchtitan", "fp8"):
        assert choice in text, choice


def test_a_model_the_stack_cannot_run_names_the_stacks_that_can(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["search", "--model", "deepseek-v3", "--cluster", "dgx-h100", "--gpus", "2048", "--global-batch", "4096"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: stack 'ppplan-torch' has no multi-head latent attention (deepseek-v3 uses it): "
                           "re-plan with --stack megatron-core or --stack torchtitan")


def test_fixed_degrees_keep_only_those_plans(capsys: pytest.CaptureFixture[str]) -> None:
    """``--tp/--pp/--cp/--ep`` restrict the space: tiny-moe on 8 CPU ranks with ``--ep 2,4 --pp 2``
    returns only such plans; an expert degree no legal plan has (3 does not divide 8 experts) exits 2
    naming the legal ones and the rule, as does a context degree the sequence does not split into 2*cp
    chunks; a degree only the other degrees' combinations rule out names no rule; an entry that is
    not a degree exits 2."""
    base = ["search", "--model", "tiny-moe", "--cluster", "cpu-local", "--gpus", "8", "--global-batch", "16"]
    assert run(base + ["--ep", "2,4", "--pp", "2", "--top-k", "4", "--json"]) == 0
    plans = json.loads(capsys.readouterr().out)
    assert plans and all(p["config"]["ep"] in (2, 4) and p["config"]["pp"] == 2 for p in plans)
    assert run(base + ["--ep", "3"]) == 2
    assert capsys.readouterr().err.strip() == ("error: no legal configuration has ep in {3}: "
                                               "the legal degrees here are ep 1, 2, 4, 8 "
                                               "(ep=3 does not divide num_experts=8: pick ep from its divisors)")
    assert run(base + ["--cp", "4", "--seq-len", "4100"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: no legal configuration has cp in {4}: the legal degrees here are cp 1, 2 "
        "(cp=4 needs the sequence (4100) divisible by 2*cp = 8 (two chunks per rank for causal load balance))")
    assert run(base + ["--pp", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no legal configuration has pp in {16}: the legal degrees here are pp ") and "(" not in err
    assert run(base + ["--tp", "2,x"]) == 2
    assert capsys.readouterr().err.strip() == "error: --tp 'x' is not a degree: give integers from 1 to 1048576"


def test_megatron_core_searches_whole_experts_under_tp(capsys: pytest.CaptureFixture[str]) -> None:
    """``--etp 1 --tp 2`` on megatron-core keeps plans whose experts are whole on each rank (Megatron-Core's
    parallel folding): their ep divides tp*dp*cp (4 here, with dp*cp = 2 alone admitting at most 2), the
    plan says etp 1 and sequence parallelism, and the table shows E as ep/etp."""
    base = ["search", "--model", "tiny-moe", "--cluster", "cpu-local", "--gpus", "4", "--global-batch", "8", "--seq-len", "128",
            "--stack", "megatron-core", "--precision", "fp32", "--tp", "2", "--etp", "1", "--pp", "1"]
    assert run(base + ["--top-k", "8", "--json"]) == 0
    plans = json.loads(capsys.readouterr().out)
    assert plans and all(p["config"]["etp"] == 1 and p["config"]["sequence_parallel"] for p in plans)
    assert {p["config"]["ep"] for p in plans} <= {1, 2, 4} and any(p["config"]["ep"] == 4 for p in plans)
    assert run(base + ["--ep", "4"]) == 0
    assert " 4/1 " in capsys.readouterr().out


def test_search_table_says_which_schedules_run_overlapped_steps(capsys: pytest.CaptureFixture[str]) -> None:
    """zero-bubble-megatron post-validates ZB-H1/ZB-H2/ZB-V steps in fp16 alone: under the table in fp16, a line
    names them (their step is the period, the bubble column one step's); in bf16 no line."""
    base = ["search", "--model", "gpt3-7.5b", "--cluster", "dgx-a100-80g", "--gpus", "32", "--global-batch", "128",
            "--stack", "zero-bubble-megatron", "--precision"]
    assert run(base + ["fp16"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps at the terminal's width
    assert "on zero-bubble-megatron (fp16): consecutive steps overlap" in text
    assert run(base + ["bf16"]) == 0
    assert "consecutive steps overlap" not in " ".join(capsys.readouterr().out.split())


def test_a_head_dim_off_the_tensor_cores_warns_on_an_unfused_stack_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """h 13824 over 128 heads: head dim 108, 216 B in bf16. Megatron-LM 2021's unfused attention runs its
    batched GEMMs off the tensor cores (BigScience's tr11 ran 30-40 % slower than at 96 heads): search
    and explain warn; the default stack's flash attention, and 96 heads (head dim 144), do not."""
    model = tmp_path / "m.yaml"
    model.write_text("name: m\nnum_layers: 2\nhidden_size: 13824\nnum_attention_heads: 128\nvocab_size: 32000\nseq_len: 2048\n")
    args = ["search", "--model", str(model), "--cluster", "dgx-a100-80g", "--gpus", "8", "--global-batch", "8"]
    plan = tmp_path / "plan.json"
    assert run(args + ["--stack", "megatron-lm-2021", "--out", str(plan)]) == 0
    warning = "warning: head dim 108 x 2 B is not a multiple of 16 bytes: megatron-lm-2021's unfused attention"
    assert warning in capsys.readouterr().err
    assert run(["explain", str(plan)]) == 0
    assert warning in capsys.readouterr().err
    assert run(args) == 0
    assert "head dim" not in capsys.readouterr().err
    model.write_text(model.read_text().replace("num_attention_heads: 128", "num_attention_heads: 96"))
    assert run(args + ["--stack", "megatron-lm-2021"]) == 0
    assert "head dim" not in capsys.readouterr().err


def test_no_legal_configuration_prints_an_empty_list_under_json(capsys: pytest.CaptureFixture[str]) -> None:
    """1,000 GPUs for a global batch of 8 on tiny-gpt: no layout exists, so no closest plan either; ``--json`` keeps
    stdout one JSON document (an empty list of plans) and the reason goes to stderr, exit 1."""
    assert run(["search", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "1000", "--global-batch", "8", "--json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == []
    assert captured.err.startswith("error: no legal configuration of tiny-gpt on 1000 GPUs with global batch 8: ")
