"""Every bad input gets its answer (issue 14): for each class, exit 2, exactly one ``error:`` line
on stderr, no traceback, nothing written, and no hang (each case returns in well under a second:
the caps stop it before any work grows with the number).

Classes: files that are not text; non-finite numbers; numbers above their caps
(``profiles/limits.py``); bools and floats where counts go; plans of another
``schema_version`` or that break the runtime rules, in ``explain`` and ``simulate`` as in
``launch``; output paths checked before any work; a key stated twice; empty entries in comma lists.
``bench/bad_input.py`` runs the wider list (124 cases) in separate processes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner.cli.main import run
from tests.launch.runtime.runtime_plans import make_plan

BINARY = b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary"
MODEL_YAML = "name: m\nnum_layers: {layers}\nhidden_size: 64\nnum_attention_heads: 4\nvocab_size: 100\nseq_len: 32\n"
HF = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 100,
      "intermediate_size": 128, "max_position_embeddings": 64}  # fmt: skip
METRICS_LINE = {"step": 0, "rank": 0, "stage": 0, "loss": 6.0, "step_time_s": 1.0, "tokens_per_s": 1.0,
                "peak_memory_gib": 0.1, "predicted_step_time_s": 1.0, "predicted_peak_memory_gib": 0.1}  # fmt: skip
SEARCH = ["search", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"]
EVALUATE = ["evaluate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8",
            "--tp", "1", "--pp", "2", "--mbs", "1"]  # fmt: skip
SYNTHETIC = ["simulate", "--schedule", "1f1b", "--pp", "2", "--num-microbatches", "4", "--f-time", "1", "--b-time", "2"]


def _plan_doc(**changes: object) -> dict:
    doc = json.loads(make_plan(pp=2, global_batch=4).model_dump_json())
    for dotted, value in changes.items():
        *path, key = dotted.split(".")
        node = doc
        for part in path:
            node = node[part]
        node[key] = value
    return doc


def _write(folder: Path, name: str, content: str | bytes | dict) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        path.write_text(json.dumps(content))
    else:
        path.write_text(content)


def _files(folder: Path) -> None:
    for name in ("bin.json", "bin.yaml", "bin.csv", "bin.jsonl"):
        _write(folder, name, BINARY)
    _write(folder, "plan.json", _plan_doc())
    _write(folder, "nan_plan.json", _plan_doc(**{"estimate.step_time_s": float("nan")}))
    _write(folder, "inf_plan.json", _plan_doc(**{"cluster.gpu.memory_gib": float("inf")}))
    _write(folder, "v99_plan.json", _plan_doc(schema_version=99))
    _write(folder, "bool_plan.json", _plan_doc(**{"config.tp": True}))
    _write(folder, "tp3_plan.json", _plan_doc(**{"config.tp": 3}))
    _write(folder, "cut_plan.json", _plan_doc(**{"config.stage_layers": [3, 3]}))
    for name, layers in (("float", "8.7"), ("float0", "8.0"), ("bool", "true"), ("huge", str(10**12)), ("inf", ".inf")):
        _write(folder, f"{name}_layers.yaml", MODEL_YAML.format(layers=layers))
    for name, key, value in (("nan", "hidden_size", float("nan")), ("float", "num_hidden_layers", 8.7),
                             ("bool", "num_hidden_layers", True), ("huge", "num_hidden_layers", 10**12)):  # fmt: skip
        _write(folder, f"hf_{name}/config.json", {**HF, key: value})
    cluster = (Path(__file__).resolve().parents[3] / "profiles" / "clusters" / "cpu-local.yaml").read_text()
    _write(folder, "cl_inf.yaml", cluster.replace("bandwidth_gbs: 1.4", "bandwidth_gbs: .inf"))
    _write(folder, "cl_bool.yaml", cluster.replace("gpus_per_node: 8", "gpus_per_node: true"))
    _write(folder, "cl_twice.yaml", cluster + "gpus_per_node: 4\n")
    _write(folder, "twice_plan.json", json.dumps(_plan_doc()).replace('{"schema_version": ', '{"schema_version": 0, "schema_version": ', 1))
    _write(folder, "twice_layers.yaml", MODEL_YAML.format(layers="8") + "num_layers: 4\n")
    for name, key, value in (("nan", "step_time_s", float("nan")), ("bool", "step", True)):
        _write(folder, f"m_{name}.jsonl", json.dumps({**METRICS_LINE, key: value}) + "\n")
    header = "run,model,global_batch,seq_len,tp,pp,dp,mbs,step_time_s\n"
    _write(folder, "inf.csv", header + "a,tiny-gpt,8,128,1,2,1,1,inf\n")
    _write(folder, "a_file", "x")
    (folder / "a_dir").mkdir()


CLASSES: dict[str, dict[str, list[str]]] = {
    "not text (binary)": {
        "plan": ["explain", "bin.json"],
        "model YAML": ["search", "--model", "bin.yaml", *SEARCH[3:]],
        "cluster": ["search", "--model", "tiny-gpt", "--cluster", "bin.yaml", *SEARCH[5:]],
        "metrics": ["compare", "bin.jsonl", "plan.json"],
        "runs CSV": ["calibrate", "bin.csv", "--cluster", "cpu-local"],
        "profile": [*EVALUATE, "--profile", "bin.json"],
    },
    "non-finite number": {
        "plan estimate": ["explain", "nan_plan.json"],
        "plan cluster": ["simulate", "inf_plan.json"],
        "HF config": ["search", "--model", "hf_nan/config.json", *SEARCH[3:]],
        "model YAML": ["search", "--model", "inf_layers.yaml", *SEARCH[3:]],
        "cluster YAML": ["search", "--model", "tiny-gpt", "--cluster", "cl_inf.yaml", *SEARCH[5:]],
        "metrics": ["compare", "m_nan.jsonl", "plan.json"],
        "runs CSV": ["calibrate", "inf.csv", "--cluster", "cpu-local"],
        "simulate time": [*SYNTHETIC, "--f-time", "nan"],
    },
    "above its cap": {
        "profile --crowded below two ranks per core": ["profile", "--model", "tiny-gpt", "--crowded", "1,2", "--out", "p.json"],
        "gpus 2^40": ["search", *SEARCH[1:5], "--gpus", str(2**40), "--global-batch", "8"],
        "global batch 10^18": [*SEARCH[:7], "--global-batch", str(10**18)],
        "layers 10^12 (YAML)": ["search", "--model", "huge_layers.yaml", *SEARCH[3:]],
        "layers 10^12 (HF)": ["search", "--model", "hf_huge/config.json", *SEARCH[3:]],
        "microbatches 10^9": [*EVALUATE[:7], "--global-batch", str(10**9), *EVALUATE[9:]],
        "pp x M = 10^10": [*SYNTHETIC[:3], "--pp", "100000", "--num-microbatches", "100000", *SYNTHETIC[7:]],
        "top-k": [*SEARCH, "--top-k", str(10**9)],
        "launch steps": ["launch", "plan.json", "--steps", str(10**12), "--dry-run"],
        "profile repeats": ["profile", "--model", "tiny-gpt", "--repeats", str(10**9), "--out", "p.json"],
    },
    "bool or float where a count goes": {
        "layers 8.7": ["search", "--model", "float_layers.yaml", *SEARCH[3:]],
        "layers 8.0": ["search", "--model", "float0_layers.yaml", *SEARCH[3:]],
        "layers true": ["search", "--model", "bool_layers.yaml", *SEARCH[3:]],
        "HF layers 8.7": ["search", "--model", "hf_float/config.json", *SEARCH[3:]],
        "HF layers true": ["search", "--model", "hf_bool/config.json", *SEARCH[3:]],
        "cluster gpus_per_node true": ["search", "--model", "tiny-gpt", "--cluster", "cl_bool.yaml", *SEARCH[5:]],
        "plan tp true": ["explain", "bool_plan.json"],
        "metrics step true": ["compare", "m_bool.jsonl", "plan.json"],
    },
    "plan version and runtime rules": {
        "schema_version 99 (explain)": ["explain", "v99_plan.json"],
        "schema_version 99 (launch)": ["launch", "v99_plan.json", "--dry-run"],
        "tp 3 of 8 heads (explain)": ["explain", "tp3_plan.json"],
        "tp 3 of 8 heads (simulate)": ["simulate", "tp3_plan.json"],
        "cuts not summing (explain)": ["explain", "cut_plan.json"],
        "cuts not summing (simulate)": ["simulate", "cut_plan.json"],
    },
    "output path checked before work": {
        "simulate: good trace, bad svg": ["simulate", "plan.json", "--trace", "t.json", "--svg", "nodir/t.svg"],
        "synthetic: good trace, svg is a folder": [*SYNTHETIC, "--trace", "t.json", "--svg", "a_dir"],
        "search --out under a file": [*SEARCH, "--out", "a_file/p.json"],
        "--trace and --svg on one file": ["simulate", "plan.json", "--trace", "same.json", "--svg", "same.json"],
        "emit into a file": ["launch", "plan.json", "--emit", "torchrun", "--out-dir", "a_file"],
        "calibrate --out": ["calibrate", "inf.csv", "--cluster", "cpu-local", "--out", "nodir/c.yaml"],
        "launch --metrics under a file": ["launch", "plan.json", "--metrics", "a_file/m.jsonl"],
    },
    "a key stated twice": {
        "cluster YAML": ["search", "--model", "tiny-gpt", "--cluster", "cl_twice.yaml", *SEARCH[5:]],
        "model YAML": ["search", "--model", "twice_layers.yaml", *SEARCH[3:]],
        "plan JSON": ["explain", "twice_plan.json"],
    },
    "empty entry in a comma list": {
        "--schedules": [*SEARCH, "--schedules", "1f1b,,gpipe"],
        "--stage-layers": [*EVALUATE, "--stage-layers", "4,,4"],
        "profile --tp": ["profile", "--model", "tiny-gpt", "--tp", "1,,2", "--out", "p.json"],
        "profile --crowded": ["profile", "--model", "tiny-gpt", "--crowded", "2,,4", "--out", "p.json"],
        "calibrate --terms": ["calibrate", "inf.csv", "--cluster", "cpu-local", "--terms", "gemm_max,"],
    },
}
CASES = [(cls, name) for cls, cases in CLASSES.items() for name in cases]


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize(("cls", "name"), CASES, ids=[f"{c}: {n}" for c, n in CASES])
def test_bad_input_class(cls: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    code = run(CLASSES[cls][name])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    assert _snapshot(tmp_path) == before, "bad input must write nothing"


def test_messages_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    expected = {
        ("not text (binary)", "plan"): "not UTF-8 text",
        ("non-finite number", "metrics"): "'step_time_s' must be a finite non-negative number",
        ("above its cap", "layers 10^12 (YAML)"): "less than or equal to 10000",
        ("above its cap", "gpus 2^40"): "less than or equal to 1048576",
        ("above its cap", "microbatches 10^9"): "less than or equal to 1000000",
        ("above its cap", "pp x M = 10^10"): "above the cap of 1,000,000",
        ("bool or float where a count goes", "HF layers true"): "'num_hidden_layers' must be an integer, got True",
        ("plan version and runtime rules", "schema_version 99 (explain)"): "schema_version 99: this ppplan reads plan files of version 1",
        ("plan version and runtime rules", "tp 3 of 8 heads (simulate)"): "tp=3 does not divide num_attention_heads=8",
        ("output path checked before work", "--trace and --svg on one file"): "given for two outputs",
        ("a key stated twice", "cluster YAML"): "key 'gpus_per_node' is stated twice",
        ("a key stated twice", "plan JSON"): "key 'schema_version' is stated twice",
        ("empty entry in a comma list", "--schedules"): "has an empty entry",
    }
    for (cls, name), needle in expected.items():
        assert run(CLASSES[cls][name]) == 2
        assert needle in capsys.readouterr().err, (cls, name)


def test_ctrl_c_while_the_commands_import_is_one_line_and_130() -> None:
    """SIGINT at several moments of start-up (while typer, rich, pydantic and the commands import)."""
    for delay_s in (0.15, 0.3, 0.6):
        proc = subprocess.Popen([sys.executable, "-c", "from planner.cli.main import main; main()", *SEARCH],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(delay_s)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            continue  # finished before the signal: nothing to check at this delay
        if proc.returncode == -signal.SIGINT:  # before the interpreter installed its handler: silent
            assert err == "", err
            continue
        assert proc.returncode == 130, err
        assert "Traceback" not in err and err.strip().splitlines() == ["error: interrupted"], err


def test_ctrl_c_wrapped_by_class_construction_is_one_line_and_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C inside a descriptor's ``__set_name__`` (pydantic builds its models so) reaches the CLI as
    ``RuntimeError("Error calling __set_name__ ...")`` caused by the interrupt: still 130, one line."""
    from planner.cli import main as cli_main

    class _Interrupting:
        def __set_name__(self, owner: type, name: str) -> None:
            raise KeyboardInterrupt

    def _import_interrupted():
        return type("Model", (), {"field": _Interrupting()})

    monkeypatch.setattr(cli_main, "_command", _import_interrupted)
    assert cli_main.run(["search"]) == 130
    assert capsys.readouterr().err.splitlines() == ["error: interrupted"]

    def _import_broken():
        raise RuntimeError("a real bug while importing")

    monkeypatch.setattr(cli_main, "_command", _import_broken)
    with pytest.raises(RuntimeError, match="a real bug"):
        cli_main.run(["search"])


def test_no_command_prints_the_commands_and_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([]) == 2
    captured = capsys.readouterr()
    assert "search" in captured.out and "launch" in captured.out
    assert captured.err.splitlines() == ["error: no command given: pick one of the commands listed above"]


def test_a_commands_own_exit_code_after_it_handled_an_interrupt_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """``launch`` stops the job on SIGTERM and exits 143 (``raise typer.Exit(143) from None`` inside
    its handler of the KeyboardInterrupt subclass): that code, not 130."""
    import typer

    from planner.cli import main as cli_main

    def _stopped_by_sigterm(command, args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise typer.Exit(143) from None

    monkeypatch.setattr(cli_main, "_invoke", _stopped_by_sigterm)
    assert cli_main.run(["launch"]) == 143


# a command whose write finds the reader gone (what click's echo raises when ``| head`` exits first:
# a pipe buffer's worth of output is needed to see it for real, so the write is made to fail)
_WRITE_FAILS = ("import sys\nfrom planner.cli import main as cli\n"
                "def run(argv):\n    raise BrokenPipeError(32, 'Broken pipe')\n"
                "cli.run = run\ncli.main()\n")


@pytest.mark.parametrize("code", [
    ["-c", "from planner.cli.main import main; main()", "profile-comm", "--help"],  # rich sees it
    ["-c", _WRITE_FAILS],
], ids=["rich", "echo"])
def test_a_reader_that_closes_the_pipe_stops_the_command_quietly(code: list[str]) -> None:
    """``ppplan profile-comm --help | head -1``: the command ends with 1, as click and rich end it,
    and nothing on stderr (it printed a BrokenPipeError traceback)."""
    proc = subprocess.Popen([sys.executable, *code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err == ""
