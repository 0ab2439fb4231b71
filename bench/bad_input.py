"""Bad input, the wide net (issue 14): each case runs ``ppplan ...`` in a fresh process and a
fresh folder, with a 60 s limit, and checks the CLI contract (DESIGN.md): exit 2, exactly one
stderr line starting ``error:``, no traceback, nothing written. Prints one line per case and
the count; never asserts (``tests/planner/cli/test_bad_input_classes.py`` holds one test per
class).

Run: python bench/bad_input.py [substring ...]   (only the cases whose name contains one)
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.launch.runtime.runtime_plans import make_plan  # noqa: E402  (after the path above)

PY = sys.executable
BIN = b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00binary\xff"


def plan_json(**kw):
    return json.loads(make_plan(**kw).model_dump_json())


def files(d: Path):
    (d / "bin.json").write_bytes(BIN)
    (d / "bin.yaml").write_bytes(BIN)
    (d / "bin.csv").write_bytes(BIN)
    (d / "bin.jsonl").write_bytes(BIN)
    good = plan_json(pp=2, global_batch=4)
    (d / "good.json").write_text(json.dumps(good))

    def plan_with(path, fn):
        p = json.loads(json.dumps(good))
        fn(p)
        (d / path).write_text(json.dumps(p))

    plan_with("nan_plan.json", lambda p: p["estimate"].__setitem__("step_time_s", float("nan")))
    plan_with("inf_plan.json", lambda p: p["cluster"]["gpu"].__setitem__("memory_gib", float("inf")))
    plan_with("huge_plan.json", lambda p: p["config"].update(pp=100000, num_microbatches=100000, stage_layers=[1] * 100000))
    plan_with("m1e9_plan.json", lambda p: (p["config"].update(num_microbatches=10**9), p["train"].update(global_batch=10**9)))
    plan_with("bool_plan.json", lambda p: p["config"].__setitem__("tp", True))
    plan_with("float_plan.json", lambda p: p["config"].__setitem__("mbs", 1.0))
    plan_with("v99_plan.json", lambda p: p.__setitem__("schema_version", 99))
    plan_with("rule_plan.json", lambda p: p["config"].update(tp=3))  # tp 3 does not divide 8 heads
    plan_with("m_lt_pp_plan.json", lambda p: (p["config"].update(num_microbatches=1), p["train"].update(global_batch=1)))
    plan_with("layers_plan.json", lambda p: p["config"].update(stage_layers=[3, 3]))
    plan_with("mem_len_plan.json", lambda p: p["estimate"].__setitem__("peak_memory_gib", []))
    plan_with("zero_step_plan.json", lambda p: p["estimate"].__setitem__("step_time_s", 0.0))
    plan_with("short_breakdown_plan.json", lambda p: p["estimate"].__setitem__("memory_breakdown_gib", [{"weights": 1.0}]))
    base_model = "name: m\nnum_layers: {L}\nhidden_size: {H}\nnum_attention_heads: 4\nvocab_size: 100\nseq_len: 32\n"
    for name, L, H in [
        ("float_layers", "8.7", "64"),
        ("float_layers_int", "8.0", "64"),
        ("bool_layers", "true", "64"),
        ("huge_layers", str(10**12), "64"),
        ("inf_layers", ".inf", "64"),
        ("nan_hidden", ".nan", "64"),
        ("huge_hidden", str(10**30), "64"),
        ("big_hidden", str(2**40), str(2**40)),
    ]:
        (d / f"{name}.yaml").write_text(base_model.replace("{L}", L).replace("{H}", H))
    (d / "digits_layers.yaml").write_text(base_model.replace("{L}", "9" * 5000).replace("{H}", "64"))
    (d / "ansi_name.yaml").write_text(base_model.replace("name: m", 'name: "m\\e[31mred"').replace("{L}", "2").replace("{H}", "64"))
    hf = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 100,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
    }
    for name, key, val in [
        ("hf_nan", "hidden_size", float("nan")),
        ("hf_float", "num_hidden_layers", 8.7),
        ("hf_bool", "num_hidden_layers", True),
        ("hf_huge", "num_hidden_layers", 10**12),
        ("hf_inf", "intermediate_size", float("inf")),
        ("hf_str", "hidden_size", "64"),
        ("hf_neg", "vocab_size", -5),
    ]:
        h = dict(hf)
        h[key] = val
        (d / f"{name}").mkdir()
        (d / name / "config.json").write_text(json.dumps(h))
    cl = (ROOT / "profiles" / "clusters" / "cpu-local.yaml").read_text()
    (d / "cl_nan.yaml").write_text(cl.replace("memory_gib: 5", "memory_gib: .nan"))
    (d / "cl_inf.yaml").write_text(cl.replace("bandwidth_gbs: 1.4", "bandwidth_gbs: .inf"))
    (d / "cl_float_gpn.yaml").write_text(cl.replace("gpus_per_node: 8", "gpus_per_node: 8.5"))
    (d / "cl_bool_gpn.yaml").write_text(cl.replace("gpus_per_node: 8", "gpus_per_node: true"))
    (d / "cl_huge_gpn.yaml").write_text(cl.replace("gpus_per_node: 8", f"gpus_per_node: {10**12}"))
    (d / "cl_huge_mem.yaml").write_text(cl.replace("memory_gib: 5", "memory_gib: 1e308"))
    (d / "cl_zero_peak.yaml").write_text(cl.replace("fp32: 0.104", "fp32: 1e-300"))
    (d / "cl_twice.yaml").write_text(cl + "gpus_per_node: 4\n")
    good_text = (d / "good.json").read_text()
    (d / "twice_plan.json").write_text(good_text.replace('{"schema_version": ', '{"schema_version": 0, "schema_version": ', 1))
    stack = (ROOT / "profiles" / "stacks" / "ppplan-torch.yaml").read_text()
    (d / "stack_twice.yaml").write_text(stack + "emit: ppplan\n")
    a100 = (ROOT / "profiles" / "clusters" / "dgx-a100-80g.yaml").read_text()
    (d / "cl_no_fp32.yaml").write_text(a100.replace("{fp32: 19.5, tf32: 156, bf16: 312, fp16: 312}", "{bf16: 312, fp16: 312}"))
    (d / "head108.yaml").write_text("name: head108\nnum_layers: 4\nhidden_size: 13824\nnum_attention_heads: 128\n"
                                    "vocab_size: 32000\nseq_len: 2048\n")
    line = {
        "step": 0,
        "rank": 0,
        "stage": 0,
        "loss": 6.0,
        "step_time_s": 1.0,
        "tokens_per_s": 1.0,
        "peak_memory_gib": 0.1,
        "predicted_step_time_s": 1.0,
        "predicted_peak_memory_gib": 0.1,
    }
    for name, key, val in [
        ("m_nan", "step_time_s", float("nan")),
        ("m_inf", "peak_memory_gib", float("inf")),
        ("m_str", "step_time_s", "fast"),
        ("m_bool", "step", True),
        ("m_neg", "step_time_s", -1.0),
        ("m_huge_stage", "stage", 10**12),
    ]:
        r = dict(line)
        r[key] = val
        (d / f"{name}.jsonl").write_text(json.dumps(r) + "\n" + json.dumps({**r, "stage": 1 if key != "stage" else r["stage"]}) + "\n")
    (d / "m_list.jsonl").write_text("[1, 2]\n")
    hdr = "run,model,global_batch,seq_len,tp,pp,dp,mbs,step_time_s\n"
    (d / "c_nan.csv").write_text(hdr + "a,tiny-gpt,8,128,1,2,1,1,nan\n")
    (d / "c_inf.csv").write_text(hdr + "a,tiny-gpt,8,128,1,2,1,1,inf\n")
    (d / "c_float.csv").write_text(hdr + "a,tiny-gpt,8.5,128,1,2,1,1,1.0\n")
    (d / "c_huge.csv").write_text(hdr + f"a,tiny-gpt,{10**15},128,1,2,1,1,1.0\n")
    (d / "c_bool.csv").write_text(hdr + "a,tiny-gpt,true,128,1,2,1,1,1.0\n")
    (d / "dir_as_file").mkdir()
    (d / "a_file").write_text("x")


MODEL = ["--model", "tiny-gpt", "--cluster", "cpu-local"]
S = ["search", *MODEL, "--gpus", "2", "--global-batch", "8"]
E = ["evaluate", *MODEL, "--gpus", "2", "--global-batch", "8", "--tp", "1", "--pp", "2", "--mbs", "1"]
SYN = ["simulate", "--schedule", "1f1b", "--f-time", "1", "--b-time", "2"]
CLASSES = {
    "decode errors / binary": {
        "binary plan explain": ["explain", "bin.json"],
        "binary plan simulate": ["simulate", "bin.json"],
        "binary plan launch": ["launch", "bin.json", "--dry-run"],
        "binary plan compare": ["compare", "m_nan.jsonl", "bin.json"],
        "binary model yaml": ["search", "--model", "bin.yaml", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "binary model json": ["search", "--model", "bin.json", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "binary cluster": ["search", "--model", "tiny-gpt", "--cluster", "bin.yaml", "--gpus", "2", "--global-batch", "8"],
        "binary metrics compare": ["compare", "bin.jsonl", "good.json"],
        "binary metrics calibrate": ["calibrate", "bin.jsonl", "--cluster", "cpu-local", "--plan", "good.json"],
        "binary csv validate": ["validate", "--runs", "bin.csv"],
        "binary csv calibrate": ["calibrate", "bin.csv", "--cluster", "cpu-local"],
        "binary profile": [*E, "--profile", "bin.json"],
        "binary comm profile": [*E, "--comm-profile", "bin.json"],
        "binary schedule csv": ["launch", "good.json", "--schedule-csv", "bin.csv", "--dry-run"],
        "binary stack": [*S, "--stack", "bin.yaml"],
    },
    "non-finite": {
        "nan in plan": ["explain", "nan_plan.json"],
        "inf in plan cluster": ["simulate", "inf_plan.json"],
        "nan hf config": ["search", "--model", "hf_nan/config.json", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "inf hf config": ["search", "--model", "hf_inf/config.json", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "nan model yaml": ["search", "--model", "nan_hidden.yaml", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "inf model yaml": ["search", "--model", "inf_layers.yaml", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "nan cluster": ["search", "--model", "tiny-gpt", "--cluster", "cl_nan.yaml", "--gpus", "2", "--global-batch", "8"],
        "inf cluster": ["search", "--model", "tiny-gpt", "--cluster", "cl_inf.yaml", "--gpus", "2", "--global-batch", "8"],
        "nan metrics": ["compare", "m_nan.jsonl", "good.json"],
        "inf metrics": ["compare", "m_inf.jsonl", "good.json"],
        "string metrics": ["compare", "m_str.jsonl", "good.json"],
        "negative metrics": ["compare", "m_neg.jsonl", "good.json"],
        "list metrics": ["compare", "m_list.jsonl", "good.json"],
        "nan metrics calibrate": ["calibrate", "m_nan.jsonl", "--cluster", "cpu-local", "--plan", "good.json"],
        "nan csv validate": ["validate", "--runs", "c_nan.csv"],
        "nan csv calibrate": ["calibrate", "c_nan.csv", "--cluster", "cpu-local"],
        "inf csv calibrate": ["calibrate", "c_inf.csv", "--cluster", "cpu-local"],
        "nan simulate f-time": [*SYN, "--pp", "2", "--num-microbatches", "4", "--f-time", "nan"],
        "inf simulate b-time": [*SYN, "--pp", "2", "--num-microbatches", "4", "--b-time", "inf"],
        "negative simulate time": [*SYN, "--pp", "2", "--num-microbatches", "4", "--f-time", "-1"],
        "huge simulate time": [*SYN, "--pp", "2", "--num-microbatches", "4", "--f-time", "1e308", "--b-time", "1e308"],
    },
    "out of range / caps": {
        "gpus 2^40 search": ["search", *MODEL, "--gpus", str(2**40), "--global-batch", "8"],
        "gpus 2^40 evaluate": ["evaluate", *MODEL, "--gpus", str(2**40), "--global-batch", str(2**40), "--tp", "1", "--pp", "1", "--mbs", "1"],
        "global batch 1e18": ["search", *MODEL, "--gpus", "2", "--global-batch", str(10**18)],
        "M 1e9 evaluate": ["evaluate", *MODEL, "--gpus", "2", "--global-batch", str(10**9), "--tp", "1", "--pp", "2", "--mbs", "1"],
        "seq-len 1e12": [*S, "--seq-len", str(10**12)],
        "top-k 1e9": [*S, "--top-k", str(10**9)],
        "mbs 1e12": ["evaluate", *MODEL, "--gpus", "2", "--global-batch", "8", "--tp", "1", "--pp", "2", "--mbs", str(10**12)],
        "tp 2^40": ["evaluate", *MODEL, "--gpus", "2", "--global-batch", "8", "--tp", str(2**40), "--pp", "2", "--mbs", "1"],
        "v 1e6": [
            "evaluate",
            *MODEL,
            "--gpus",
            "2",
            "--global-batch",
            "8",
            "--tp",
            "1",
            "--pp",
            "2",
            "--mbs",
            "1",
            "--v",
            str(10**6),
            "--schedule",
            "interleaved-1f1b",
        ],
        "layers 1e12 yaml": ["search", "--model", "huge_layers.yaml", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "hidden 1e30 yaml": ["search", "--model", "huge_hidden.yaml", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "hidden 2^40 yaml": ["search", "--model", "big_hidden.yaml", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "hf layers 1e12": ["search", "--model", "hf_huge/config.json", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "hf negative vocab": ["search", "--model", "hf_neg/config.json", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "cluster gpus_per_node 1e12": ["search", "--model", "tiny-gpt", "--cluster", "cl_huge_gpn.yaml", "--gpus", "2", "--global-batch", "8"],
        "cluster memory 1e308": ["search", "--model", "tiny-gpt", "--cluster", "cl_huge_mem.yaml", "--gpus", "2", "--global-batch", "8"],
        "cluster peak 1e-300": ["search", "--model", "tiny-gpt", "--cluster", "cl_zero_peak.yaml", "--gpus", "2", "--global-batch", "8"],
        "no fp32 peak, head dim 108 unfused": ["search", "--model", "head108.yaml", "--cluster", "cl_no_fp32.yaml", "--gpus", "8",
                                               "--global-batch", "8", "--stack", "megatron-lm-2021"],
        "plan pp=M=1e5 simulate": ["simulate", "huge_plan.json"],
        "plan pp=M=1e5 explain": ["explain", "huge_plan.json"],
        "plan M=1e9 simulate": ["simulate", "m1e9_plan.json"],
        "plan M=1e9 launch": ["launch", "m1e9_plan.json", "--dry-run"],
        "simulate pp=M=1e5": ["simulate", "--schedule", "1f1b", "--pp", "100000", "--num-microbatches", "100000", "--f-time", "1", "--b-time", "2"],
        "simulate M=1e9": ["simulate", "--schedule", "1f1b", "--pp", "2", "--num-microbatches", str(10**9), "--f-time", "1", "--b-time", "2"],
        "simulate pp=0": ["simulate", "--schedule", "1f1b", "--pp", "0", "--num-microbatches", "4", "--f-time", "1", "--b-time", "2"],
        "csv huge batch": ["calibrate", "c_huge.csv", "--cluster", "cpu-local"],
        "metrics huge stage": ["compare", "m_huge_stage.jsonl", "good.json"],
        "launch steps 1e12": ["launch", "good.json", "--steps", str(10**12), "--dry-run"],
        "profile repeats 1e9": ["profile", "--model", "tiny-gpt", "--repeats", str(10**9), "--out", "p.json"],
        "profile-comm nproc 1e6": ["profile-comm", "--nproc", str(10**6), "--out", "c.json"],
        "profile-comm max-bytes 1e30": ["profile-comm", "--max-bytes", str(10**30), "--out", "c.json"],
        "calibrate folds 1e9": ["calibrate", "c_nan.csv", "--cluster", "cpu-local", "--folds", str(10**9)],
    },
    "bools and floats where ints go": {
        "float layers yaml": ["search", "--model", "float_layers.yaml", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "float .0 layers yaml": ["search", "--model", "float_layers_int.yaml", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "bool layers yaml": ["search", "--model", "bool_layers.yaml", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "hf float layers": ["search", "--model", "hf_float/config.json", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "hf bool layers": ["search", "--model", "hf_bool/config.json", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "hf string hidden": ["search", "--model", "hf_str/config.json", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8"],
        "cluster float gpus_per_node": ["search", "--model", "tiny-gpt", "--cluster", "cl_float_gpn.yaml", "--gpus", "2", "--global-batch", "8"],
        "cluster bool gpus_per_node": ["search", "--model", "tiny-gpt", "--cluster", "cl_bool_gpn.yaml", "--gpus", "2", "--global-batch", "8"],
        "plan bool tp": ["explain", "bool_plan.json"],
        "plan float mbs": ["launch", "float_plan.json", "--dry-run"],
        "metrics bool step": ["compare", "m_bool.jsonl", "good.json"],
        "csv float batch": ["calibrate", "c_float.csv", "--cluster", "cpu-local"],
        "csv bool batch": ["calibrate", "c_bool.csv", "--cluster", "cpu-local"],
        "cli float gpus": [*S[:-4], "--gpus", "2.5", "--global-batch", "8"],
        "stage-layers float": [*E, "--stage-layers", "4.5,3.5"],
    },
    "schema version and rules": {
        "plan schema_version 99 explain": ["explain", "v99_plan.json"],
        "plan schema_version 99 launch": ["launch", "v99_plan.json", "--dry-run"],
        "plan against rules explain": ["explain", "rule_plan.json"],
        "plan against rules simulate": ["simulate", "rule_plan.json"],
        "plan M<pp explain": ["explain", "m_lt_pp_plan.json"],
        "plan M<pp simulate": ["simulate", "m_lt_pp_plan.json"],
        "plan layers sum simulate": ["simulate", "layers_plan.json"],
        "plan layers sum explain": ["explain", "layers_plan.json"],
        "plan empty memory list compare": ["compare", "m_nan.jsonl", "mem_len_plan.json"],
        "plan empty memory list explain": ["explain", "mem_len_plan.json"],
    },
    "output paths checked before work / multi-file outputs": {
        "search out dir is a dir": [*S, "--out", "dir_as_file"],
        "evaluate out under a file": [*E, "--out", "a_file/p.json"],
        "simulate trace ok svg bad": ["simulate", "good.json", "--trace", "t.json", "--svg", "nodir/t.svg"],
        "simulate svg ok trace bad": ["simulate", "good.json", "--svg", "t.svg", "--trace", "a_file/t.json"],
        "synthetic simulate trace bad": [*SYN, "--pp", "2", "--num-microbatches", "4", "--trace", "t.json", "--svg", "dir_as_file"],
        "emit out-dir is a file": ["launch", "good.json", "--emit", "torchrun", "--out-dir", "a_file"],
        "emit bad nnodes after check": ["launch", "good.json", "--emit", "slurm", "--out-dir", "emitted", "--nnodes", "3"],
        "emit unknown target": ["launch", "good.json", "--emit", "docker", "--out-dir", "emitted"],
        "profile out bad dir": ["profile", "--model", "tiny-gpt", "--out", "nodir/p.json"],
        "profile-comm out bad dir": ["profile-comm", "--out", "nodir/c.json"],
        "calibrate out bad dir": ["calibrate", "c_nan.csv", "--cluster", "cpu-local", "--out", "nodir/c.yaml"],
        "launch metrics bad dir": ["launch", "good.json", "--metrics", "a_file/m.jsonl"],
    },
    "sequence-parallel inputs kept as shards": {
        "sp-regather without sequence parallelism": [*E, "--sp-regather"],
        "sp-regather on a stack that keeps the inputs": ["evaluate", *MODEL, "--gpus", "2", "--global-batch", "8", "--tp", "2",
                                                         "--pp", "1", "--mbs", "1", "--sequence-parallel", "--sp-regather",
                                                         "--stack", "torchtitan"],
    },
    "a key stated twice": {
        "cluster key twice": ["search", "--model", "tiny-gpt", "--cluster", "cl_twice.yaml", "--gpus", "2", "--global-batch", "8"],
        "stack key twice": [*S, "--stack", "stack_twice.yaml"],
        "plan key twice": ["explain", "twice_plan.json"],
    },
    "found by fuzzing the CLI (session 50)": {
        "a number of 5,000 digits in a model": ["search", "--model", "digits_layers.yaml", "--cluster", "cpu-local", "--gpus", "2",
                                                "--global-batch", "8"],
        "a degree of 5,000 digits": [*S, "--tp", "9" * 5000],
        "a model name holding an escape sequence": ["search", "--model", "ansi_name.yaml", "--cluster", "cpu-local", "--gpus", "2",
                                                    "--global-batch", "8"],
        "plan with a zero step time explain": ["explain", "zero_step_plan.json"],
        "plan with a memory breakdown of one rank in two explain": ["explain", "short_breakdown_plan.json"],
        "an output name ending in a folder separator": [*S, "--out", "newdir/"],
        "an output that is the model file": ["search", "--model", "float_layers.yaml", "--cluster", "cpu-local", "--gpus", "2",
                                             "--global-batch", "8", "--out", "float_layers.yaml"],
        "--out-dir without --emit": ["launch", "good.json", "--dry-run", "--out-dir", "emitted"],
        "a node rank beyond the nodes": ["launch", "good.json", "--dry-run", "--nnodes", "1", "--node-rank", "3"],
        "a byte size that is not a number": ["profile-comm", "--max-bytes", "nan", "--out", "c.json"],
    },
    "empty entries in comma lists": {
        "schedules empty entry": [*S, "--schedules", "1f1b,,gpipe"],
        "stage-layers empty entry": [*E, "--stage-layers", "4,,4"],
        "profile tp empty entry": ["profile", "--model", "tiny-gpt", "--tp", "1,,2", "--out", "p.json"],
        "recompute list empty": [*E, "--recompute", "none,,full"],
    },
}
CASES = {name: argv for cases in CLASSES.values() for name, argv in cases.items()}
CLASS_OF = {name: cls for cls, cases in CLASSES.items() for name in cases}


def snapshot(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


def run_case(name, argv, base: Path):
    d = Path(tempfile.mkdtemp(dir=base))
    files(d)
    before = snapshot(d)
    t = time.monotonic()
    try:
        done = subprocess.run(
            [PY, "-c", "from planner.cli.main import main; main()", *argv],
            cwd=d,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        code, err = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, err = "timeout", (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    el = time.monotonic() - t
    lines = [line for line in err.splitlines() if line.strip()]
    written = sorted(snapshot(d) - before)
    ok = code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err and not written
    shutil.rmtree(d, ignore_errors=True)
    return ok, code, el, (lines[-1] if lines else "")[:160], written


if __name__ == "__main__":
    base = Path(tempfile.mkdtemp(prefix="fuzz-"))
    only = sys.argv[1:]
    passed: dict[str, list[bool]] = {}
    for name, argv in CASES.items():
        if only and not any(o in name for o in only):
            continue
        ok, code, el, last, written = run_case(name, argv, base)
        passed.setdefault(CLASS_OF[name], []).append(ok)
        print(f"{'ok  ' if ok else 'FAIL'} {name:<36} code={code} {el:5.1f}s {last} {'WROTE ' + str(written) if written else ''}", flush=True)
    print()
    for cls, oks in passed.items():
        print(f"{sum(oks):>3}/{len(oks):<3} {cls}")
    total = [ok for oks in passed.values() for ok in oks]
    print(f"{sum(total):>3}/{len(total):<3} all")
    shutil.rmtree(base, ignore_errors=True)
