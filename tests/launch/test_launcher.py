"""``ppplan launch`` / ``compare`` without starting processes: command building,
dry runs, plans the runtime refuses (exit 2), and the comparison numbers."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from launch.compare import compare, measured_step_time_s, read_metrics
from launch.launcher import TORCHRUN_MODULE, LaunchOptions, cpu_thread_env, torchrun_command
from planner.cli.main import run
from tests.launch.runtime.runtime_plans import make_plan, write_plan


def _argv_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_single_node_command_is_standalone(tmp_path: Path) -> None:
    plan = make_plan(tp=2, pp=2, dp=1)
    argv = torchrun_command(plan, tmp_path / "plan.json", LaunchOptions(steps=3, metrics=tmp_path / "m.jsonl"))
    assert argv[:3] == [sys.executable, "-m", TORCHRUN_MODULE]
    assert "--standalone" in argv
    assert _argv_value(argv, "--nproc-per-node") == "4"
    assert _argv_value(argv, "--nnodes") == "1"
    assert _argv_value(argv, "--max-restarts") == "0"
    assert argv[argv.index("-m", 3) + 1] == "launch.runtime.train"
    assert _argv_value(argv, "--plan") == str((tmp_path / "plan.json").resolve())
    assert _argv_value(argv, "--steps") == "3"


def test_multi_node_command_uses_static_rendezvous(tmp_path: Path) -> None:
    plan = make_plan(tp=2, pp=2, dp=2)  # 8 ranks
    opts = LaunchOptions(nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29600, metrics=tmp_path / "m")
    argv = torchrun_command(plan, tmp_path / "plan.json", opts)
    assert "--standalone" not in argv
    assert [_argv_value(argv, f) for f in ("--nnodes", "--nproc-per-node", "--node-rank", "--master-addr", "--master-port")] == [
        "2", "4", "1", "10.0.0.1", "29600",
    ]  # fmt: skip


def test_dry_run_prints_the_command_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = write_plan(make_plan(pp=2), tmp_path / "plan.json")
    metrics = tmp_path / "m.jsonl"
    assert run(["launch", str(plan_path), "--steps", "3", "--metrics", str(metrics), "--dry-run"]) == 0
    printed = capsys.readouterr().out.strip()
    argv = shlex.split(printed)
    assert argv == torchrun_command(make_plan(pp=2), plan_path, LaunchOptions(steps=3, metrics=metrics))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


BAD_PLANS = {
    "zero 3 with a split-backward schedule": (dict(pp=2, dp=2, v=2, schedule="zbv", zero=3, global_batch=8), "zero=3"),
    "fp16 has no runtime": (dict(pp=2, precision="fp16"), "precision 'fp16'"),
    "too few microbatches for 1f1b": (dict(pp=4, global_batch=2), "at least pp=4 microbatches"),
    "custom schedule without its CSV": (dict(pp=2, schedule="custom", schedule_csv=None), "schedule_csv"),
    "ep not dividing the experts": (dict(model="tiny-moe", dp=3, ep=3, global_batch=3), "ep=3 does not divide num_experts=8"),
    "ep on a dense model": (dict(dp=2, ep=2), "ep=2 needs a mixture-of-experts model"),
    "cp not splitting the sequence in 2cp chunks": (dict(model="tiny-llama", cp=3, global_batch=2), "divisible by 2*cp = 6"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_plan_the_runtime_refuses_exits_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kwargs, needle = BAD_PLANS[case]
    plan_path = write_plan(make_plan(**kwargs), tmp_path / "plan.json")
    assert run(["launch", str(plan_path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]


def test_multi_node_plan_needs_node_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = write_plan(make_plan(tp=2, pp=2, dp=2), tmp_path / "plan.json")
    assert run(["launch", str(plan_path), "--nnodes", "2", "--dry-run"]) == 2
    assert "--node-rank" in capsys.readouterr().err


def test_unreadable_plan_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plan.json").write_text("{not json")
    assert run(["launch", str(tmp_path / "plan.json"), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error:")


def _metrics_lines(path: Path) -> Path:
    rows = []
    for stage, times in ((0, [0.9, 0.2, 0.4, 0.3]), (1, [1.0, 0.25, 0.5, 0.25])):
        for step, t in enumerate(times):
            rows.append({"step": step, "rank": stage, "stage": stage, "loss": 7.0 - step if stage == 1 else None,
                         "step_time_s": t, "tokens_per_s": 1.0, "peak_memory_gib": 0.1 * (stage + 1) + 0.01 * step,
                         "predicted_step_time_s": 0.3, "predicted_peak_memory_gib": 0.25})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_compare_numbers(tmp_path: Path) -> None:
    plan = make_plan(pp=2)  # fake estimate: step 1.0 s, 0.5 GiB per rank
    rows = compare(read_metrics(_metrics_lines(tmp_path / "m.jsonl")), plan)
    # stage 0: median of [0.2, 0.4, 0.3] (step 0 left out) = 0.3 s; peak 0.1 + 0.03 GiB
    assert rows[0].measured_step_time_s == pytest.approx(0.3)
    assert rows[0].step_time_error_pct == pytest.approx(100 * (1.0 - 0.3) / 0.3)
    assert rows[0].measured_peak_memory_gib == pytest.approx(0.13)
    assert rows[0].last_loss is None
    assert rows[1].measured_step_time_s == pytest.approx(0.25)
    # the prediction set against the measurement leaves out what is resident before the plan starts
    measurable = 0.5 - plan.cluster.runtime_reserved_gib
    assert rows[1].predicted_peak_memory_gib == pytest.approx(measurable)
    assert rows[1].memory_error_pct == pytest.approx(100 * (measurable - 0.23) / 0.23)
    assert rows[1].last_loss == 4.0
    assert measured_step_time_s([2.0]) == 2.0


def test_compare_cli_json_and_bad_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = write_plan(make_plan(pp=2), tmp_path / "plan.json")
    metrics = _metrics_lines(tmp_path / "m.jsonl")
    assert run(["compare", str(metrics), str(plan_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [row["stage"] for row in doc["per_stage"]] == [0, 1]
    assert run(["compare", str(metrics), str(write_plan(make_plan(pp=1), tmp_path / "p1.json"))]) == 2
    assert "pp=1" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"step": 0}\n')
    assert run(["compare", str(tmp_path / "bad.jsonl"), str(plan_path)]) == 2


def test_emit_goes_through_the_emitters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = write_plan(make_plan(pp=2), tmp_path / "plan.json")
    out_dir = tmp_path / "out"
    assert run(["launch", str(plan_path), "--emit", "torchrun", "--out-dir", str(out_dir)]) == 0
    written = {Path(line).name for line in capsys.readouterr().out.split()}
    assert written and written == {p.name for p in out_dir.iterdir()}
    assert run(["launch", str(plan_path), "--emit", "slurm"]) == 2
    assert "--out-dir" in capsys.readouterr().err


def test_existing_metrics_file_is_kept_without_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_path = write_plan(make_plan(pp=2), tmp_path / "plan.json")
    metrics = tmp_path / "m.jsonl"
    metrics.write_text("earlier results\n")
    assert run(["launch", str(plan_path), "--metrics", str(metrics)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --metrics") and "--overwrite" in err[0]
    assert metrics.read_text() == "earlier results\n"
    assert run(["launch", str(plan_path), "--metrics", str(tmp_path)]) == 2  # a directory
    assert "is a directory" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run(["launch", str(plan_path), "--metrics", str(blocker / "m.jsonl")]) == 2  # under a file
    assert "not a writable directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "m.jsonl", "plan.json"]


def test_cpu_ranks_run_one_thread_as_priced_unless_the_user_says_otherwise() -> None:
    """torchrun sets OMP_NUM_THREADS=1 only for several processes per node; a one-rank CPU plan would
    otherwise run torch's intra-op pool over every core while the cost model priced one thread."""
    plan = make_plan(tp=1, pp=1, dp=1)
    assert plan.cluster.gpu.name == "cpu"
    assert cpu_thread_env(plan, {}) == {"OMP_NUM_THREADS": "1"}
    assert cpu_thread_env(plan, {"OMP_NUM_THREADS": "2"}) == {}  # the user's choice is kept
    gpu = plan.model_copy(update={"cluster": plan.cluster.model_copy(update={"gpu": plan.cluster.gpu.model_copy(update={"name": "H100"})})})
    assert cpu_thread_env(gpu, {}) == {}
