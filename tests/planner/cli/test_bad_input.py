"""Bad input: exit 2 and exactly one ``error:`` line on stderr, no traceback."""

import json
from pathlib import Path

import pytest

import profiles
from planner.cli.main import run

BASE = ["--cluster", "dgx-a100-80g", "--global-batch", "64"]
EVAL = ["evaluate", "--model", "gpt3-1.7b", "--cluster", "dgx-a100-80g", "--gpus", "16", "--global-batch", "64"]


def _files(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\nnum_layers: [1, 2\n")
    (tmp_path / "extra.yaml").write_text(
        "name: x\nnum_layers: 2\nhidden_size: 64\nnum_attention_heads: 4\nvocab_size: 100\nseq_len: 32\nnum_layerz: 3\n")
    (tmp_path / "neg.yaml").write_text(
        "name: x\nnum_layers: -2\nhidden_size: 64\nnum_attention_heads: 4\nvocab_size: 100\nseq_len: 32\n")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                                                      "vocab_size": 100, "intermediate_size": 128,
                                                      "max_position_embeddings": 64}))
    (tmp_path / "plan.json").write_text("{not json")
    model = "num_layers: 2\nhidden_size: 64\nnum_attention_heads: 4\nvocab_size: 100\nseq_len: 32\n"
    (tmp_path / "huge.yaml").write_text("name: x\n" + model.replace("num_layers: 2", "num_layers: " + "9" * 5000))
    (tmp_path / "ansi.yaml").write_text('name: "x\\e[31mred"\n' + model)
    stack = (Path(profiles.__file__).parent / "stacks" / "megatron-core.yaml").read_text()
    (tmp_path / "stack-extra.yaml").write_text(stack + "bogus_key: 1\n")
    (tmp_path / "stack-schedule.yaml").write_text(stack.replace("schedules: [1f1b, interleaved-1f1b, combined-1f1b]", "schedules: [1f1b, zb-h9]"))
    deepspeed = (Path(profiles.__file__).parent / "stacks" / "megatron-deepspeed.yaml").read_text()
    (tmp_path / "stack-share.yaml").write_text(deepspeed.replace("allocator_fragmentation: 0.1655", "allocator_fragmentation: 1.5"))
    titan = (Path(profiles.__file__).parent / "stacks" / "torchtitan.yaml").read_text()
    (tmp_path / "stack-titan-offload.yaml").write_text(titan + "activation_offload: true\n")
    (tmp_path / "stack-titan-compiled.yaml").write_text(titan.replace("kernels:\n", "kernels:\n  compiled_blocks: true\n", 1))
    (tmp_path / "stack-backward-post.yaml").write_text(titan.replace("overlap:\n", "overlap:\n  backward_gather: after_gradients\n", 1))
    (tmp_path / "stack-cuda-graphs.yaml").write_text(stack.replace("  cuda_graphs: none", "  cuda_graphs: full_iteration"))
    (tmp_path / "stack-twice.yaml").write_text(stack.replace("  p2p: exposed\n", "  p2p: exposed\n  p2p: overlapped\n", 1))
    zero_bubble = (Path(profiles.__file__).parent / "stacks" / "zero-bubble-megatron.yaml").read_text()
    (tmp_path / "stack-post-validation.yaml").write_text(zero_bubble.replace("  schedules: [zb-h1, zb-h2, zbv]", "  schedules: [zb-h1, dualpipev]"))


CASES = {
    "gpus not divisible by tp*pp": EVAL[:6] + ["--gpus", "12", "--global-batch", "64", "--tp", "8", "--pp", "1", "--mbs", "1"],
    "tp not dividing heads": ["evaluate", "--model", "gpt3-1.7b", "--cluster", "dgx-a100-80g", "--gpus", "16",
                              "--global-batch", "64", "--tp", "16", "--pp", "1", "--mbs", "1"],
    "unknown model preset": ["search", "--model", "gpt3-175", "--gpus", "8"] + BASE,
    "unknown cluster preset": ["search", "--model", "gpt3-1.7b", "--cluster", "dgx-a100", "--gpus", "8", "--global-batch", "64"],
    "malformed yaml": ["search", "--model", "{tmp}/bad.yaml", "--gpus", "8"] + BASE,
    "unknown yaml key": ["search", "--model", "{tmp}/extra.yaml", "--gpus", "8"] + BASE,
    "negative number in yaml": ["search", "--model", "{tmp}/neg.yaml", "--gpus", "8"] + BASE,
    "zero gpus": ["search", "--model", "gpt3-1.7b", "--gpus", "0"] + BASE,
    "negative global batch": ["search", "--model", "gpt3-1.7b", "--cluster", "dgx-a100-80g", "--gpus", "8", "--global-batch", "-4"],
    "hf config missing key": ["search", "--model", "{tmp}/config.json", "--gpus", "8"] + BASE,
    "global batch not divisible": EVAL[:8] + ["--global-batch", "10", "--tp", "1", "--pp", "1", "--mbs", "4"],
    "pp larger than layers": ["evaluate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "16",
                              "--global-batch", "64", "--tp", "1", "--pp", "16", "--mbs", "1"],
    "missing model file": ["search", "--model", "{tmp}/nope.yaml", "--gpus", "8"] + BASE,
    "unknown schedule": EVAL + ["--tp", "1", "--pp", "2", "--mbs", "1", "--schedule", "pipedream"],
    "unknown schedule in search": ["search", "--model", "gpt3-1.7b", "--gpus", "8", "--schedules", "1f1b,foo"] + BASE,
    "precision the gpu lacks": ["search", "--model", "gpt3-1.7b", "--gpus", "8", "--precision", "fp8"] + BASE,
    "interleaved with v=1": EVAL + ["--tp", "1", "--pp", "2", "--mbs", "1", "--schedule", "interleaved-1f1b"],
    "1f1b with fewer microbatches than stages": EVAL[:8] + ["--global-batch", "16", "--tp", "1", "--pp", "8", "--mbs", "8"],
    "stage layers not summing": EVAL + ["--tp", "1", "--pp", "2", "--mbs", "1", "--stage-layers", "10,10"],
    "stage layers not integers": EVAL + ["--tp", "1", "--pp", "2", "--mbs", "1", "--stage-layers", "a,b"],
    "stage without a layer between others": EVAL + ["--tp", "1", "--pp", "2", "--v", "2", "--mbs", "1", "--schedule",
                                                    "interleaved-1f1b", "--stage-layers", "6,0,6,0"],
    "unknown recompute": EVAL + ["--tp", "1", "--pp", "2", "--mbs", "1", "--recompute", "some"],
    "sequence parallel without tp": EVAL + ["--tp", "1", "--pp", "2", "--mbs", "1", "--sequence-parallel"],
    "malformed plan file": ["explain", "{tmp}/plan.json"],
    "missing plan file": ["explain", "{tmp}/missing.json"],
    "unknown option": ["search", "--model", "gpt3-1.7b", "--gpus", "8", "--frobnicate"] + BASE,
    "unknown stack": ["search", "--model", "gpt3-1.7b", "--gpus", "8", "--stack", "deepspeed"] + BASE,
    "stack file with an unknown key": ["search", "--model", "gpt3-1.7b", "--gpus", "8", "--stack", "{tmp}/stack-extra.yaml"] + BASE,
    "stack file with an unknown schedule": ["search", "--model", "gpt3-1.7b", "--gpus", "8", "--stack",
                                            "{tmp}/stack-schedule.yaml"] + BASE,
    "stack file with an allocator share of 1 or more": ["search", "--model", "gpt3-1.7b", "--gpus", "8", "--stack",
                                                        "{tmp}/stack-share.yaml"] + BASE,
    "stack file offloading activations in a job that does not": ["search", "--model", "gpt3-1.7b", "--gpus", "8", "--stack",
                                                                  "{tmp}/stack-titan-offload.yaml"] + BASE,
    "stack file emitting FSDP2 with FSDP1's backward gathers": ["search", "--model", "gpt3-1.7b", "--gpus", "8", "--stack",
                                                                 "{tmp}/stack-backward-post.yaml"] + BASE,
    "stack file pricing compiled blocks in a job that runs eager": ["search", "--model", "gpt3-1.7b", "--gpus", "8",
                                                                   "--stack", "{tmp}/stack-titan-compiled.yaml"] + BASE,
    "stack file pricing CUDA graphs in a job that captures none": ["search", "--model", "gpt3-1.7b", "--gpus", "8",
                                                                   "--stack", "{tmp}/stack-cuda-graphs.yaml"] + BASE,
    "stack file stating a key twice": ["search", "--model", "gpt3-1.7b", "--gpus", "8", "--stack",
                                       "{tmp}/stack-twice.yaml"] + BASE,
    "stack file post-validating a schedule it does not run": ["search", "--model", "gpt3-1.7b", "--gpus", "8", "--stack",
                                                               "{tmp}/stack-post-validation.yaml"] + BASE,
    "activation offload with a pipeline": EVAL + ["--tp", "1", "--pp", "2", "--mbs", "1", "--stack", "megatron-core",
                                                  "--offload-layers", "4"],
    "activation offload on a cluster without a host link": EVAL + ["--tp", "1", "--pp", "1", "--mbs", "1", "--stack",
                                                                   "megatron-core", "--zero", "1", "--offload-layers", "4"],
    "evaluate a schedule the stack does not run": EVAL + ["--tp", "1", "--pp", "2", "--mbs", "1", "--v", "2",
                                                          "--schedule", "zbv", "--stack", "megatron-core"],
    "ep not dividing the experts": ["evaluate", "--model", "tiny-moe", "--cluster", "cpu-local", "--gpus", "6", "--global-batch", "6",
                                    "--tp", "1", "--pp", "1", "--mbs", "1", "--ep", "3"],
    "ep on a dense model": EVAL + ["--tp", "1", "--pp", "2", "--mbs", "1", "--ep", "2"],
    "expert TP 1 on a stack that splits experts over tp": ["evaluate", "--model", "tiny-moe", "--cluster", "cpu-local", "--gpus",
                                                           "4", "--global-batch", "8", "--tp", "2", "--pp", "1", "--mbs", "1",
                                                           "--ep", "2", "--etp", "1", "--sequence-parallel"],
    "expert TP neither tp nor 1": ["evaluate", "--model", "tiny-moe", "--cluster", "cpu-local", "--gpus", "8", "--global-batch", "8",
                                   "--tp", "4", "--pp", "1", "--mbs", "1", "--etp", "2", "--sequence-parallel",
                                   "--stack", "megatron-core"],
    "etp filter on a dense model": ["search", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "4",
                                    "--etp", "1"],
    "cp not splitting the sequence": ["evaluate", "--model", "tiny-llama", "--cluster", "cpu-local", "--gpus", "6",
                                      "--global-batch", "6", "--tp", "1", "--pp", "1", "--mbs", "1", "--cp", "3"],
    "gpus not divisible by tp*cp*pp": EVAL + ["--tp", "2", "--pp", "2", "--cp", "3", "--mbs", "1"],
    "MLA model on a stack without it": ["search", "--model", "deepseek-v3", "--cluster", "dgx-h100", "--gpus", "64",
                                        "--global-batch", "64", "--seq-len", "4096"],
    "out dir missing": ["search", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "4", "--out", "{tmp}/no/such/dir/p.json"],
    # found by a fuzzing pass (session 50): each was a traceback, or an exit 0 that wrote the wrong thing
    "an output name ending in a folder separator": ["search", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2",
                                                    "--global-batch", "4", "--out", "{tmp}/newdir/"],
    "an output that is the model file": ["search", "--model", "{tmp}/neg.yaml", "--cluster", "cpu-local", "--gpus", "2",
                                         "--global-batch", "4", "--out", "{tmp}/neg.yaml"],
    "an empty schedule list": ["search", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "4",
                               "--schedules", ""],
    "a degree of 5,000 digits": ["search", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "4",
                                 "--tp", "9" * 5000],
    "a number of 5,000 digits in a model file": ["search", "--model", "{tmp}/huge.yaml", "--gpus", "8"] + BASE,
    "a model name holding an escape sequence": ["search", "--model", "{tmp}/ansi.yaml", "--gpus", "8"] + BASE,
    "a byte size that is not a number": ["profile-comm", "--max-bytes", "nan", "--out", "{tmp}/comm.json"],
    "an infinite byte size": ["profile-comm", "--max-bytes", "inf", "--out", "{tmp}/comm.json"],
    "--out-dir without --emit": ["launch", "{tmp}/plan.json", "--dry-run", "--out-dir", "{tmp}/jobs"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_exits_2_with_one_error_line(name, tmp_path, capsys):
    _files(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in CASES[name]]
    code = run(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, (name, captured.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err


def test_a_stack_file_asking_for_cuda_graphs_names_the_field(tmp_path, capsys):
    """The jobs ppplan writes capture no CUDA graphs: a stack file that prices them under an emit target is refused
    for that reason (StackSpec's check), not for another."""
    _files(tmp_path)
    assert run(["search", "--model", "gpt3-1.7b", "--gpus", "8", "--stack", str(tmp_path / "stack-cuda-graphs.yaml")] + BASE) == 2
    err = capsys.readouterr().err
    assert "overlap.cuda_graphs" in err and "emit megatron" in err


def test_unknown_stack_lists_the_stacks(capsys):
    assert run(["search", "--model", "gpt3-1.7b", "--gpus", "8", "--stack", "deepspeed"] + BASE) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in ("ppplan-torch", "megatron-core", "megatron-lm-2021", "torchtitan"))


def test_unknown_preset_suggests_close_names(capsys):
    assert run(["search", "--model", "gpt3-175", "--gpus", "8"] + BASE) == 2
    assert "gpt3-175b" in capsys.readouterr().err


def test_hf_missing_key_is_named(tmp_path, capsys):
    _files(tmp_path)
    assert run(["search", "--model", str(tmp_path / "config.json"), "--gpus", "8"] + BASE) == 2
    assert "num_hidden_layers" in capsys.readouterr().err


def test_no_partial_plan_file_left_on_failure(tmp_path):
    out = tmp_path / "plan.json"
    assert run(["search", "--model", "llama3-405b", "--cluster", "dgx-a100-80g", "--gpus", "8", "--global-batch", "16",
                "--out", str(out)]) == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def _plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "plan.json"
    assert run(["evaluate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8",
                "--tp", "1", "--pp", "2", "--mbs", "1", "--out", str(path)]) == 0
    return path


@pytest.mark.parametrize("change, message", [
    ({"step_time_s": 0.0}, "estimate: step_time_s must be positive, got 0.0"),
    ({"mfu": -0.5}, "estimate: mfu must not be negative"),
    ({"memory_breakdown_gib": [{"weights": 1.0}]}, "estimate: memory_breakdown_gib lists 1 ranks, peak_memory_gib 2"),
])
def test_a_plan_whose_estimate_cannot_be_explained_is_bad_input(tmp_path, capsys, change, message):
    """``explain`` divides by the step time and indexes the memory breakdown per rank: a plan file that breaks
    either is refused when read, not met with a ZeroDivisionError or an IndexError."""
    path = _plan_file(tmp_path)
    plan = json.loads(path.read_text())
    plan["estimate"].update(change)
    path.write_text(json.dumps(plan))
    capsys.readouterr()
    assert run(["explain", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_a_plan_giving_only_the_peaks_is_explained(tmp_path, capsys):
    """No memory breakdown (a hand-written plan): ``explain`` shows each rank's total, no category (was an IndexError)."""
    path = _plan_file(tmp_path)
    plan = json.loads(path.read_text())
    plan["estimate"]["memory_breakdown_gib"] = []
    path.write_text(json.dumps(plan))
    capsys.readouterr()
    assert run(["explain", str(path)]) == 0
    table = capsys.readouterr().out
    assert "Peak memory per pipeline rank (GiB)" in table and "activ." not in table  # totals, no category column


def test_a_node_rank_beyond_the_nodes_is_refused_in_a_dry_run(tmp_path, capsys):
    path = _plan_file(tmp_path)
    capsys.readouterr()
    assert run(["launch", str(path), "--dry-run", "--nnodes", "1", "--node-rank", "3"]) == 2
    assert capsys.readouterr().err.strip() == "error: --node-rank 3 outside 0..0"
