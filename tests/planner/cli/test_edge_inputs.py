"""Inputs at the edges, found by a second fuzzing pass of the CLI (session 50): each was a traceback, a hang,
or a file written before the command refused its own result. The pass's leftovers (non-standard JSON, metrics from
another plan or logged twice, misleading messages) follow at the end (session 51)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from costmodels.rules import tp_violations
from costmodels.schedules.torch_csv import parse_torch_csv
from planner.cli.main import run
from planner.cli.render import finite_json
from planner.trust.error_bands import write_tables
from planner.trust.published_runs import expert_imbalance_of
from planner.trust.regress import DEFAULT_SUITE, regress
from planner.trust.validation import DEFAULT_RUNS_CSV
from profiles.errors import InfeasibleError, PlanError
from profiles.files import metrics_value_problem
from profiles.loader import PRESET_DIR, load_model
from profiles.profile_schema import AlphaBetaFit, CommProfile, TierFit, TimeSharePoint
from tests.costmodels.test_profile_times import CPU, ONE_READING, _profile

TINY = ["--model", "tiny-gpt", "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "16"]


def test_custom_out_writes_nothing_when_the_stack_refuses_the_custom_order(tmp_path: Path, capsys) -> None:
    """megatron-core runs no 'custom' schedule: the plan rewritten in place stays byte for byte what it was."""
    plan = tmp_path / "plan.json"
    assert run(["evaluate", *TINY, "--tp", "1", "--pp", "4", "--mbs", "1", "--stack", "megatron-core", "--out", str(plan)]) == 0
    before = plan.read_bytes()
    capsys.readouterr()
    assert run(["simulate", str(plan), "--custom-out", str(plan)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "schedule 'custom' is not run by stack 'megatron-core'" in err[0]
    assert plan.read_bytes() == before


def test_regress_update_writes_no_case_when_one_case_fails(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    source = sorted(DEFAULT_SUITE.glob("*.yaml"))[0]
    good = yaml.safe_load(source.read_text())
    good["golden"]["step_time_s"] *= 1.5  # moved: --update would rewrite it
    (suite / "a_good.yaml").write_text(yaml.safe_dump(good))
    bad = yaml.safe_load(source.read_text())
    bad["case"]["degrees"] = {"tp": [3]}
    (suite / "b_bad.yaml").write_text(yaml.safe_dump(bad))
    before = (suite / "a_good.yaml").read_text()
    with pytest.raises(PlanError, match=r"b_bad.yaml: no legal configuration has tp"):
        regress(suite, update=True)
    assert (suite / "a_good.yaml").read_text() == before


def test_validate_update_writes_both_tables_or_neither(tmp_path: Path) -> None:
    (tmp_path / "gpu_families.yaml").mkdir()  # in the way of the second file
    with pytest.raises(PlanError, match="gpu_families.yaml: it is a directory"):
        write_tables(None, tmp_path / "runs.csv", tmp_path)  # type: ignore[arg-type]  # fails before the report is read
    assert not (tmp_path / "error_bands.yaml").exists()


@pytest.mark.parametrize("seconds", ["1e-19", "1e-310", "5e-324"])
def test_a_timeline_of_subnormal_seconds_is_drawn_at_once(tmp_path: Path, seconds: str) -> None:
    """The SVG axis drew one tick per step up to an absolute 1e-12 s tolerance (1e7 ticks at 1e-19 s, a hang); the
    ASCII timeline scaled to infinity (an OverflowError)."""
    svg = tmp_path / "t.svg"
    argv = ["simulate", "--schedule", "1f1b", "--pp", "2", "--num-microbatches", "4", "--f-time", seconds, "--b-time", seconds]
    assert run([*argv, "--svg", str(svg)]) == 0
    assert svg.stat().st_size < 100_000


def test_a_pipeline_csv_reads_any_line_ending_and_only_ascii_digits() -> None:
    lf = parse_torch_csv("0F0,0B0\n")
    assert parse_torch_csv("0F0,0B0\r\n") == lf == parse_torch_csv("0F0,0B0\r")
    with pytest.raises(PlanError, match="is not a compute action"):
        parse_torch_csv("\u0660F\u0660,0B0\n")  # Arabic-Indic digits


def test_a_metrics_number_beyond_the_float_range_is_a_problem_not_a_crash() -> None:
    record = {"step": 0, "rank": 0, "stage": 0, "loss": 1.0, "step_time_s": 10**400}
    assert "'step_time_s' must be a finite non-negative number" in metrics_value_problem(record)


def test_calibrate_refuses_a_zero_degree_an_unset_term_and_a_fit_out_of_range(tmp_path: Path, capsys) -> None:
    header = "run,model,global_batch,seq_len,tp,pp,dp,mbs,step_time_s\n"
    (tmp_path / "dp0.csv").write_text(header + "r1,tiny-gpt,16,128,2,4,0,1,0.0101\n")
    assert run(["calibrate", str(tmp_path / "dp0.csv"), "--cluster", "dgx-h100"]) == 2
    assert "dp0.csv:2: dp must be a positive integer, got 0" in capsys.readouterr().err
    rows = "".join(f"r{i},tiny-gpt,16,128,1,{pp},{8 // pp},1,{t}\n" for i, (pp, t) in enumerate([(1, 1e300), (2, 2e300), (4, 3e300)]))
    (tmp_path / "huge.csv").write_text(header + rows)
    assert run(["calibrate", str(tmp_path / "huge.csv"), "--cluster", "dgx-h100", "--out", str(tmp_path / "c.yaml")]) == 2
    assert "are the measured step times right?" in capsys.readouterr().err and not (tmp_path / "c.yaml").exists()
    assert run(["calibrate", str(tmp_path / "huge.csv"), "--cluster", "dgx-h100", "--terms", "attention_max"]) == 2
    assert "states no attention_max" in capsys.readouterr().err


def test_a_schedule_named_twice_is_searched_once(capsys) -> None:
    assert run(["search", *TINY, "--schedules", "1f1b,1f1b", "--json"]) == 0
    plans = json.loads(capsys.readouterr().out)
    assert plans and all(p["config"]["schedule"] == "1f1b" for p in plans)


def test_a_capacity_factor_of_zero_is_no_routing_statement() -> None:
    assert expert_imbalance_of("moe capacity factor 0 with padding to capacity") is None
    assert expert_imbalance_of("moe capacity factor 0.0 with padding to capacity") is None
    assert expert_imbalance_of("moe capacity factor 1.25 with padding to capacity")[0] == 1.25
    assert expert_imbalance_of("moe capacity factor 0.5 with padding to capacity")[0] == 0.5


@pytest.mark.parametrize("csv_text, message", [
    ("0F0,0B0,0F1,0B1\n1F0,1F1,1B0,1B1\n", "schedule 'custom' deadlocks"),
    ("0F0,0F1,0B0,0B1,0B1\n1F0,1B0,1F1,1B1\n", "appears twice"),
])
def test_a_custom_plan_that_cannot_run_is_refused_by_every_command(tmp_path: Path, capsys, csv_text: str, message: str) -> None:
    """``explain``, ``launch --dry-run`` and ``launch --emit`` checked the plan's rules but not its action list:
    they accepted (and ``--emit`` wrote) a custom order ``simulate`` refuses. ``check_plan`` now walks it."""
    plan_path = tmp_path / "plan.json"
    assert run(["evaluate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "2", "--tp", "1",
                "--pp", "2", "--mbs", "1", "--out", str(plan_path)]) == 0
    plan = json.loads(plan_path.read_text())
    plan["config"].update(schedule="custom", schedule_csv=csv_text)
    plan_path.write_text(json.dumps(plan))
    capsys.readouterr()
    for argv in (["explain", str(plan_path)], ["simulate", str(plan_path)], ["launch", str(plan_path), "--dry-run"],
                 ["launch", str(plan_path), "--emit", "csv", "--out-dir", str(tmp_path / "job")]):
        assert run(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "job").exists()


# --- left by the second pass, fixed in session 51 -------------------------------------------------------------------


def _strict_json(text: str) -> object:
    """RFC 8259 JSON: a NaN or Infinity token is an error here, as in most parsers other than Python's."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_json_output_holds_no_nan_or_infinity_tokens(tmp_path: Path, capsys) -> None:
    """``validate --json`` on a runs CSV with no dense row printed ``"overall": NaN`` (a MAPE over no rows)."""
    assert finite_json({"a": [1.0, float("nan")], "b": {"c": float("inf"), "d": -float("inf")}, "e": (2, "x")}) == \
        {"a": [1.0, None], "b": {"c": None, "d": None}, "e": [2, "x"]}
    header, *rows = DEFAULT_RUNS_CSV.read_text().splitlines()
    moe_only = tmp_path / "moe.csv"
    moe_only.write_text("\n".join([header, *[r for r in rows if "Qwen3_30B" in r][:2]]) + "\n")
    capsys.readouterr()
    assert run(["validate", "--runs", str(moe_only), "--json"]) == 0
    document = _strict_json(capsys.readouterr().out)
    assert document["mape_pct"]["overall"] is None and len(document["rows"]) == 2


def _metrics(path: Path, lines: list[dict]) -> Path:
    base = {"loss": 6.0, "step_time_s": 1.0, "tokens_per_s": 1.0, "peak_memory_gib": 0.1}
    path.write_text("".join(json.dumps({**base, **line}) + "\n" for line in lines))
    return path


def test_metrics_from_another_plan_or_logged_twice_are_refused(tmp_path: Path, capsys) -> None:
    """``calibrate`` took stage 9's metrics against a pp = 4 plan (``compare`` refused it), and both counted a
    step logged twice (a log appended to itself) as two readings."""
    plan = tmp_path / "plan.json"
    assert run(["evaluate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "4", "--global-batch", "8", "--tp", "1",
                "--pp", "4", "--mbs", "1", "--out", str(plan)]) == 0
    stage9 = _metrics(tmp_path / "stage9.jsonl", [{"step": s, "rank": 9, "stage": 9} for s in range(3)])
    twice = _metrics(tmp_path / "twice.jsonl", [{"step": s, "rank": 0, "stage": 0} for s in (0, 1, 2, 1)])
    capsys.readouterr()
    for argv, message in (
        (["calibrate", str(stage9), "--plan", str(plan), "--cluster", "cpu-local"], "metrics hold pipeline stage 9 but the plan has pp=4"),
        (["compare", str(stage9), str(plan)], "metrics hold pipeline stage 9 but the plan has pp=4"),
        (["calibrate", str(twice), "--plan", str(plan), "--cluster", "cpu-local"], "twice.jsonl:4: step 1 of rank 0 again (first at line 2)"),
        (["compare", str(twice), str(plan)], "twice.jsonl:4: step 1 of rank 0 again (first at line 2)"),
    ):
        assert run(argv) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and message in err[0], (argv, err)


def test_a_regress_case_with_a_misspelt_schedule_names_it(tmp_path: Path) -> None:
    """It read "no feasible plan": the search had no schedule to run."""
    case = yaml.safe_load(sorted(DEFAULT_SUITE.glob("*.yaml"))[0].read_text())
    case["case"]["schedules"] = ["1f1b", "bogus"]
    (tmp_path / "bogus.yaml").write_text(yaml.safe_dump(case))
    with pytest.raises(PlanError, match=r"bogus.yaml: case.schedules: unknown schedule 'bogus': choose from 1f1b, "):
        regress(tmp_path)


def test_an_expert_tp_degree_that_does_not_divide_the_experts_is_named_etp() -> None:
    """``--etp 3`` read "tp=3 does not divide moe_ffn_hidden_size"."""
    model = load_model("mixtral-8x7b")
    assert tp_violations(model, 2, expert_tp=3) == [
        "etp=3 does not divide moe_ffn_hidden_size=14336 (experts are TP-sharded over etp ranks like the dense MLP)"]
    assert tp_violations(model, 3)[-1].startswith("tp=3 does not divide moe_ffn_hidden_size=14336")


def test_a_runs_csv_of_a_header_only_says_it_holds_no_rows(tmp_path: Path, capsys) -> None:
    """It read "missing columns source_id, run, ..." (validate) and "no runs to calibrate from" (calibrate)."""
    (tmp_path / "published.csv").write_text(DEFAULT_RUNS_CSV.read_text().splitlines()[0] + "\n")
    (tmp_path / "runs.csv").write_text("run,model,global_batch,seq_len,tp,pp,dp,mbs,step_time_s\n")
    capsys.readouterr()
    assert run(["validate", "--runs", str(tmp_path / "published.csv")]) == 2
    assert "published.csv: the header and no rows" in capsys.readouterr().err
    assert run(["calibrate", str(tmp_path / "runs.csv"), "--cluster", "cpu-local"]) == 2
    assert "runs.csv: no runs in it" in capsys.readouterr().err


# --- a third fuzzing pass (session 51, about 1,800 runs) --------------------------------------------------------------

EVALUATE_TINY = ["--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "4", "--global-batch", "8", "--tp", "1",
                 "--pp", "2", "--mbs", "1"]


def _one_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_profile_that_contradicts_itself_is_refused(tmp_path: Path, capsys) -> None:
    """A hand-edited shape hash priced another model's layers as this one's; a layer of another precision was taken as
    the profile's; a time-share efficiency of 5e-324 divided times into infinity (a ZeroDivisionError)."""
    with pytest.raises(ValidationError, match="greater than or equal to 0.001"):
        TimeSharePoint(processes_per_core=2.0, efficiency=5e-324)
    good = json.loads(_profile().model_dump_json())
    for change, message in (({"model_shape_hash": "0" * 16}, "is not the hash of the profile's model block"),
                            ({"precision": "bf16"}, "layer was timed in fp32 in a bf16 profile")):
        path = tmp_path / "profile.json"
        path.write_text(json.dumps({**good, **change}))
        capsys.readouterr()
        assert run(["evaluate", *EVALUATE_TINY, "--profile", str(path)]) == 2
        assert message in _one_error(capsys)


def test_a_stack_file_number_beyond_its_cap_is_refused(tmp_path: Path, capsys) -> None:
    """1e308 s of host time per action made the step time infinite, and a 401-digit bucket overflowed a float."""
    preset = yaml.safe_load((PRESET_DIR / "stacks" / "ppplan-torch.yaml").read_text())
    for key, value, message in (("host_overhead_per_action_s", 1e308, "less than or equal to 86400"),
                                ("dp_bucket_params", 10**400, "less than or equal to 10000000000000")):
        path = tmp_path / "stack.yaml"
        path.write_text(yaml.safe_dump({**preset, "overlap": {**preset["overlap"], key: value}}))
        capsys.readouterr()
        assert run(["evaluate", *EVALUATE_TINY, "--zero", "1", "--stack", str(path)]) == 2
        assert message in _one_error(capsys)


def test_calibrate_checks_a_metrics_run_as_compare_does(tmp_path: Path, capsys) -> None:
    """calibrate --plan took a plan that breaks the rules (an IndexError on a recompute list of 1 for 2 stages), a
    median step of 0 s (a ZeroDivisionError) and ranks the plan does not have."""
    plan = tmp_path / "plan.json"
    assert run(["evaluate", *EVALUATE_TINY, "--out", str(plan)]) == 0
    broken = json.loads(plan.read_text())
    broken["config"]["recompute"] = ["none"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    good = _metrics(tmp_path / "m.jsonl", [{"step": s, "rank": 0, "stage": 0} for s in range(3)])
    zero = _metrics(tmp_path / "zero.jsonl", [{"step": s, "rank": 0, "stage": 0, "step_time_s": 0.0} for s in range(3)])
    tiny = _metrics(tmp_path / "tiny.jsonl", [{"step": s, "rank": 0, "stage": 0, "step_time_s": 5e-324} for s in range(3)])
    rank10 = _metrics(tmp_path / "rank10.jsonl", [{"step": s, "rank": 10, "stage": 1} for s in range(3)])
    for metrics, plan_path, message in ((good, tmp_path / "broken.json", "recompute lists 1 stages but pp*v = 2"),
                                        (zero, plan, "the median step time is 0 s, under 1e-06 s"),
                                        (tiny, plan, "the median step time is 4.94066e-324 s, under 1e-06 s"),
                                        (rank10, plan, "metrics hold rank 10 but the plan has 4 ranks")):
        capsys.readouterr()
        assert run(["calibrate", str(metrics), "--plan", str(plan_path), "--cluster", "cpu-local"]) == 2
        assert message in _one_error(capsys)


def test_a_plan_estimate_that_contradicts_itself_is_refused(tmp_path: Path, capsys) -> None:
    """A memory limit of 0 was a ZeroDivisionError in explain; fits false with every peak under the limit made launch
    say "over by -4.01 GiB"."""
    plan = tmp_path / "plan.json"
    assert run(["evaluate", *EVALUATE_TINY, "--out", str(plan)]) == 0
    doc = json.loads(plan.read_text())
    for change, message in (({"memory_limit_gib": 0.0}, "memory_limit_gib must be positive"),
                            ({"fits": False}, "fits is false but the largest peak")):
        path = tmp_path / "edited.json"
        path.write_text(json.dumps({**doc, "estimate": {**doc["estimate"], **change}}))
        capsys.readouterr()
        assert run(["explain", str(path)]) == 2
        assert message in _one_error(capsys)


def test_tune_checks_every_trial_before_it_writes_or_starts_one(tmp_path: Path, capsys) -> None:
    """tune wrote trial0.json, replacing the user's file, and then found it could not launch."""
    folder = tmp_path / "trials"
    folder.mkdir()
    (folder / "trial0.json").write_text("MY OWN FILE")
    assert run(["tune", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8", "--steps", "2",
                "--top-k", "1", "--metrics-dir", str(folder), "--out", str(tmp_path / "t.json"),
                "--cluster-out", str(tmp_path / "c.yaml")]) == 2
    assert "trial0.json exists: pass --overwrite" in _one_error(capsys)
    assert (folder / "trial0.json").read_text() == "MY OWN FILE" and not (folder / "trial0.jsonl").exists()
    assert run(["tune", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8",
                "--schedules", "zigzag"]) == 2
    assert "unknown schedule 'zigzag'" in _one_error(capsys)


def test_a_sequence_beyond_learned_positions_is_refused_where_a_plan_is_made(capsys) -> None:
    """evaluate and search made (and launch --emit wrote) plans that every other command refused."""
    for argv in (["evaluate", *EVALUATE_TINY, "--seq-len", "256"],
                 ["search", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "4", "--global-batch", "8",
                  "--seq-len", "256"]):
        capsys.readouterr()
        assert run(argv) == 2
        assert "seq_len 256 exceeds the model's 128 learned positions" in _one_error(capsys)


def test_launch_refuses_options_its_mode_would_ignore(tmp_path: Path, capsys) -> None:
    plan = tmp_path / "plan.json"
    assert run(["evaluate", *EVALUATE_TINY, "--out", str(plan)]) == 0
    (tmp_path / "old.jsonl").write_text("")
    (tmp_path / "order.csv").write_text("0F0\n")
    job = str(tmp_path / "job")
    for extra, message in ((["--emit", "torchrun", "--out-dir", job, "--dry-run"], "--dry-run prints the command of a run"),
                           (["--emit", "torchrun", "--out-dir", job, "--node-rank", "5"], "--node-rank is for a run"),
                           (["--emit", "torchrun", "--out-dir", job, "--overwrite"], "--overwrite is for a run"),
                           (["--emit", "torchrun", "--out-dir", job, "--schedule-csv", str(tmp_path / "order.csv")],
                            "--schedule-csv is for a 'custom' plan"),
                           (["--dry-run", "--metrics", str(tmp_path / "old.jsonl")], "old.jsonl exists: pass --overwrite"),
                           (["--dry-run", "--metrics", str(tmp_path)], "is a directory")):
        capsys.readouterr()
        assert run(["launch", str(plan), *extra]) == 2, extra
        assert message in _one_error(capsys), extra
    assert not (tmp_path / "job").exists()


def test_an_empty_list_option_is_not_the_default(tmp_path: Path, capsys) -> None:
    for argv, message in ((["profile", "--model", "tiny-gpt", "--tp", "", "--out", str(tmp_path / "p.json")],
                           "--tp takes comma-separated integers"),
                          (["evaluate", *EVALUATE_TINY, "--stage-layers", ""], "--stage-layers '' is empty")):
        assert run(argv) == 2
        assert message in _one_error(capsys)


def test_regress_reads_the_golden_configuration_and_reports_an_infeasible_case(tmp_path: Path) -> None:
    case = yaml.safe_load(sorted(DEFAULT_SUITE.glob("*.yaml"))[0].read_text())
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({**case, "golden": {**case["golden"], "config": {
        **case["golden"]["config"], "tpp": 4}}}))
    with pytest.raises(PlanError, match=r"a.yaml: unknown key 'golden.config.tpp'"):
        regress(tmp_path)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"case": {**case["case"], "cluster": "cpu-local", "precision": "fp32"}}))
    with pytest.raises(InfeasibleError, match=r"a.yaml: case .*: no plan fits in .* GiB per GPU; closest: tp="):
        regress(tmp_path, update=True)


def test_a_missing_peak_names_only_precisions_ppplan_runs(capsys) -> None:
    assert run(["search", "--model", "tiny-gpt", "--cluster", "dgx-a100-80g", "--gpus", "8", "--global-batch", "16",
                "--precision", "fp8"]) == 2
    assert _one_error(capsys).endswith("has no fp8 peak; use --precision fp32|bf16|fp16")  # the A100's tf32 is not one


def test_a_stack_file_may_not_take_a_presets_name(tmp_path: Path, capsys) -> None:
    """A plan names its stack and later commands check it against that preset: a changed copy named megatron-core
    made plans the real megatron-core would judge. The preset's own file still loads."""
    preset = PRESET_DIR / "stacks" / "megatron-core.yaml"
    (tmp_path / "mine.yaml").write_text(preset.read_text().replace("  p2p: exposed", "  p2p: overlapped"))
    assert run(["evaluate", *EVALUATE_TINY, "--stack", str(tmp_path / "mine.yaml")]) == 2
    assert "name 'megatron-core' is a shipped stack preset, and this file differs from it" in _one_error(capsys)
    assert run(["evaluate", *EVALUATE_TINY, "--stack", str(preset)]) == 0


def test_calibrate_names_a_folder_given_as_runs(tmp_path: Path, capsys) -> None:
    assert run(["calibrate", str(tmp_path), "--cluster", "cpu-local"]) == 2
    assert f"{tmp_path} is a directory" in _one_error(capsys)


def test_launch_names_no_emit_target_a_stack_lacks(tmp_path: Path, capsys) -> None:
    """megatron-deepspeed plans read "emit it with --emit none"."""
    plan = tmp_path / "plan.json"
    assert run(["evaluate", "--model", "tiny-gpt", "--cluster", "dgx-a100-80g", "--gpus", "8", "--global-batch", "16",
                "--tp", "1", "--pp", "2", "--mbs", "1", "--stack", "megatron-deepspeed", "--out", str(plan)]) == 0
    capsys.readouterr()
    assert run(["launch", str(plan), "--dry-run"]) == 2
    message = _one_error(capsys)
    assert "--emit" not in message and message.endswith("re-plan with --stack ppplan-torch")


def test_messages_name_the_knob_the_command_has(capsys) -> None:
    """search --cp 2 said only that cp 1 was legal (evaluate prices cp 2); a synthetic simulate said to raise the global
    batch, which it does not take; validate --tables-dir without --update was ignored."""
    for argv, message in (
        (["search", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "4", "--global-batch", "8", "--cp", "2"],
         "the search splits no sequence into chunks under 128 positions (seq_len 128 / 2cp = 32): price cp 2 with "
         "ppplan evaluate"),
        (["simulate", "--schedule", "1f1b", "--pp", "2", "--num-microbatches", "1", "--f-time", "1", "--b-time", "2"],
         "needs at least pp=2 microbatches (got 1): raise --num-microbatches"),
        (["validate", "--tables-dir", "."], "--tables-dir is where --update writes its tables"),
    ):
        assert run(argv) == 2, argv
        assert message in _one_error(capsys), argv


def test_a_comm_profile_with_nothing_measured_or_a_tier_twice_is_refused() -> None:
    """A second fit of a tier was silently ignored; a fit of a collective ppplan never measures, or no reading at all,
    was taken as a profile."""
    fit = AlphaBetaFit(latency_us=10.0, bandwidth_gbs=1.0, rms_relative_error=0.0, num_points=4)
    tier = TierFit(tier="intra_node", group_size=2, overall=fit, per_collective={})
    base = {"backend": "gloo", "nproc": 2, "hardware": CPU, "measurements": ONE_READING, "tiers": [tier]}
    assert CommProfile(**base).tier("intra_node") == tier
    for change, message in (({"tiers": [tier, tier]}, "tier 'intra_node' is fitted twice"),
                            ({"measurements": []}, "at least 1 item"),
                            ({"tiers": [tier.model_copy(update={"per_collective": {"broadcast": fit}})]}, None)):
        with pytest.raises(ValidationError, match=message or "broadcast"):
            CommProfile.model_validate({**base, **change, "tiers": [t.model_dump() for t in change.get("tiers", [tier])]})


def test_a_schedule_csv_file_is_walked_as_a_plans_own_list(tmp_path: Path, capsys) -> None:
    """--schedule-csv replaces a custom plan's action list in the run and in an emitted job: it was checked for pp, v
    and M only, so a deadlocking file passed launch --dry-run and --emit."""
    plan_path = tmp_path / "plan.json"
    assert run(["evaluate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "2", "--tp", "1",
                "--pp", "2", "--mbs", "1", "--out", str(plan_path)]) == 0
    plan = json.loads(plan_path.read_text())
    plan["config"].update(schedule="custom", schedule_csv="0F0,0F1,0B0,0B1\n1F0,1B0,1F1,1B1\n")
    plan_path.write_text(json.dumps(plan))
    (tmp_path / "order.csv").write_text("0F0,0B0,0F1,0B1\n1F0,1F1,1B0,1B1\n")
    capsys.readouterr()
    assert run(["launch", str(plan_path), "--dry-run"]) == 0
    capsys.readouterr()
    for argv in (["launch", str(plan_path), "--dry-run", "--schedule-csv", str(tmp_path / "order.csv")],
                 ["launch", str(plan_path), "--emit", "csv", "--out-dir", str(tmp_path / "job"), "--schedule-csv",
                  str(tmp_path / "order.csv")]):
        assert run(argv) == 2, argv
        assert "schedule 'custom' deadlocks" in _one_error(capsys), argv
    assert not (tmp_path / "job").exists()


def test_a_plan_priced_on_a_stack_file_carries_it(tmp_path: Path, capsys) -> None:
    """A plan names its stack; one priced on a stack file of its own name was written, and then every reader said
    "unknown stack 'mycore'". The plan now carries the file's stack (Plan.stack_spec); a preset's plan carries none."""
    stack = tmp_path / "mycore.yaml"
    stack.write_text((PRESET_DIR / "stacks" / "megatron-core.yaml").read_text().replace("name: megatron-core", "name: mycore", 1))
    plan = tmp_path / "plan.json"
    tiny_h100 = ["--model", "tiny-gpt", "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "16", "--tp", "1",
                 "--pp", "2", "--mbs", "1"]
    assert run(["evaluate", *tiny_h100, "--stack", str(stack), "--out", str(plan)]) == 0
    doc = json.loads(plan.read_text())
    assert doc["config"]["stack"] == "mycore" and doc["stack_spec"]["name"] == "mycore"
    metrics = _metrics(tmp_path / "m.jsonl", [{"step": s, "rank": r, "stage": st} for s in range(3) for r, st in ((0, 0), (4, 1))])
    for argv in (["explain", str(plan)], ["simulate", str(plan)], ["compare", str(metrics), str(plan)],
                 ["calibrate", str(metrics), "--plan", str(plan), "--cluster", "dgx-h100"],
                 ["launch", str(plan), "--emit", "megatron", "--out-dir", str(tmp_path / "job")]):
        assert run(argv) == 0, argv
    assert (tmp_path / "job" / "megatron_args.txt").is_file()
    assert run(["evaluate", *tiny_h100, "--out", str(tmp_path / "preset.json")]) == 0
    assert "stack_spec" not in json.loads((tmp_path / "preset.json").read_text())
    capsys.readouterr()
    for change, message in (({"name": "other"}, "stack_spec is stack 'other' but config.stack is 'mycore'"),
                            ({"pipeline_runtime": "bogus"}, "stack_spec: pipeline_runtime: Input should be")):
        edited = tmp_path / "edited.json"
        edited.write_text(json.dumps({**doc, "stack_spec": {**doc["stack_spec"], **change}}))
        assert run(["explain", str(edited)]) == 2
        assert message in _one_error(capsys)


# --- the third pass's leftovers (session 52) --------------------------------------------------------------------------


def test_a_profile_of_zero_second_layers_or_one_repeat_is_refused(tmp_path: Path, capsys) -> None:
    """A profile whose layers all read 0 s priced a step of 266 % MFU; one timed once has no spread (the profiler
    takes at least 2 repeats). Forward and unsplit backward must be positive; an embedding's B may be 0 s."""
    good = json.loads(_profile().model_dump_json())
    for change, message in (({"forward_s": 0.0, "backward_s": 0.0}, "forward_s: Input should be greater than 0"),
                            ({"repeats": 1}, "repeats: Input should be greater than or equal to 2")):
        path = tmp_path / "profile.json"
        path.write_text(json.dumps({**good, "layers": [{**layer, **change} for layer in good["layers"]]}))
        capsys.readouterr()
        assert run(["evaluate", *EVALUATE_TINY, "--profile", str(path)]) == 2
        assert message in _one_error(capsys)


def test_a_runs_csv_row_is_told_which_column_to_change(tmp_path: Path, capsys) -> None:
    """calibrate's CSV rows got the rules' hints in another command's options ("drop --sequence-parallel"), and a
    precision the cluster has no peak for was refused without the row's line."""
    header = "run,model,global_batch,seq_len,tp,pp,dp,mbs,step_time_s,precision,sequence_parallel\n"
    for row, cluster, message in (
        ("r,tiny-gpt,8,128,1,2,2,1,0.5,fp32,true", "cpu-local",
         "runs.csv:2: sequence parallel needs tp > 1: drop sequence_parallel or raise tp (columns of the row)"),
        ("r,tiny-gpt,8,128,1,2,2,1,0.5,fp8,false", "dgx-a100-80g",
         "runs.csv:2: precision 'fp8' is not run by stack 'ppplan-torch' (runs fp32, bf16): plan with another "
         "precision or stack (columns of the row)"),
    ):
        (tmp_path / "runs.csv").write_text(header + row + "\n")
        capsys.readouterr()
        assert run(["calibrate", str(tmp_path / "runs.csv"), "--cluster", cluster]) == 2
        assert message in _one_error(capsys)
    (tmp_path / "runs.csv").write_text(header.replace("sequence_parallel", "stack") + "r,tiny-gpt,8,128,1,2,2,1,0.5,fp8,megatron-core\n")
    assert run(["calibrate", str(tmp_path / "runs.csv"), "--cluster", "dgx-a100-80g"]) == 2
    assert ("runs.csv:2: cluster 'dgx-a100-80g' has no fp8 peak; use precision fp32|bf16|fp16 (columns of the row)"
            in _one_error(capsys))


def test_tune_refuses_another_stack_before_it_searches(tmp_path: Path, capsys) -> None:
    """tune --stack megatron-core searched first and then said "ppplan launch runs 'ppplan-torch' plans: emit it with
    --emit megatron", an option tune does not have. Its trials run on ppplan's runtime: it refuses another stack first."""
    capsys.readouterr()
    argv = ["tune", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8",
            "--stack", "megatron-core", "--metrics-dir", str(tmp_path / "trials"), "--out", str(tmp_path / "t.json")]
    assert run(argv) == 2
    assert ("tune runs its trials with ppplan launch, which runs 'ppplan-torch' plans only: drop --stack megatron-core"
            in _one_error(capsys))
    assert not list(tmp_path.iterdir())


def test_a_profile_faster_than_the_gpus_peak_is_flagged(tmp_path: Path, capsys) -> None:
    """A profile whose layers read a thousandth of their time priced MFU far above 100 % without a word (cpu-local's
    peak is 0.104 TFLOP/s): the price is kept (the profile is the user's measurement) and a warning says no GPU
    reaches it."""
    good = json.loads(_profile().model_dump_json())
    times = ("forward_s", "backward_input_s", "backward_weight_s", "backward_s")
    fast = [{**layer, **{k: layer[k] * 1e-3 for k in times}} for layer in good["layers"]]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({**good, "layers": fast, "runtime": None}))
    capsys.readouterr()
    argv = ["evaluate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8", "--tp", "1",
            "--pp", "1", "--mbs", "1", "--profile", str(path)]
    assert run([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["estimate"]["mfu"] > 1
    assert run(argv) == 0
    assert re.search(r"warning: MFU \d+% is above the GPUs' peak: the layer times run faster than the cluster's peak "
                     r"FLOP/s allow", capsys.readouterr().err)
