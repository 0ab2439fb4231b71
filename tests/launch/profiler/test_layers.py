"""``ppplan profile``: the runtime's layers timed and sized on CPU.

Activation bytes are checked against the cost model's runtime variant (what the
planner prices) and parameter bytes against the analytic counts; times are checked
for structure (B = 0 for the embedding, recompute adds to B), never for speed.
"""

import json
import re
import tempfile
import time

import pytest
import torch

from costmodels.flops import parameter_counts
from costmodels.memory import ActivationVariant, head_activation_bytes, layer_activation_bytes
from launch.profiler.cases import GridPoint, make_case, saved_activation_bytes
from launch.profiler.layers import ProfileSettings, grid, interleaves, num_steps, profile_model
from planner.cli.main import run
from profiles.loader import load_model, read_profile
from profiles.profile_schema import ProfileFile, model_shape_hash

CPU = ActivationVariant.runtime("fp32", device="cpu")
FAST = dict(warmup=1, repeats=2, timeshare_s=0.3, crowded=(2,))
LAYERS_ONLY = dict(FAST, runtime_costs=False)  # the runtime's own costs are small_profile's to check


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = ProfileSettings(tps=(1, 2), mbss=(1, 2), recomputes=("none", "full"), **FAST)
STEPS: list[str] = []


@pytest.fixture(scope="module")
def small_profile() -> ProfileFile:
    return profile_model(load_model("tiny-gpt"), SMALL, STEPS.append)


def test_progress_is_called_once_per_counted_step(small_profile):
    assert interleaves(load_model("tiny-gpt"), SMALL)  # small CPU grids are timed round-robin
    # 16 grid points, warmup + repeats rounds, and the runtime's pipeline action overhead
    assert len(STEPS) == num_steps(load_model("tiny-gpt"), SMALL) == 16 + 3 + 1
    assert STEPS[-1] == "runtime: pipeline action (one rank, two-rank and crowded pipelines) and FSDP overheads"
    runtime = small_profile.runtime
    assert runtime is not None and 0.0 <= runtime.pipeline_action_overhead_s < 0.05  # well under a layer's F+B
    # timed in a real two-rank pipeline (launch/profiler/pipelined.py): host time between actions and the
    # actions' slowdown, both measured (the profile would hold None without the measurement)
    assert runtime.pipelined_action_overhead_s is not None and 0.0 <= runtime.pipelined_action_overhead_s < 0.05
    assert runtime.pipelined_compute_factor is not None and 1.0 <= runtime.pipelined_compute_factor < 5.0
    # a pipeline of two ranks per core (launch/profiler/pipelined.py, crowded_factors) at the grid's smallest and
    # largest mbs, its actions by the wall clock: never faster than the calls made alone
    assert [(p.ranks_per_core, p.mbs) for p in runtime.crowded_pipeline] == [(2.0, 1), (2.0, 2)]
    assert all(1.0 <= p.compute_factor < 5.0 for p in runtime.crowded_pipeline)
    assert 0.0 <= runtime.fsdp_overhead_per_layer_step_s < 0.5
    # AdamW reads and writes at least 28 B per fp32 parameter: no CPU core steps it in under 0.1 ns, none in 1 us
    assert runtime.optimizer_s_per_param is not None and 1e-10 < runtime.optimizer_s_per_param < 1e-6
    assert not interleaves(load_model("gpt3-1.7b"), ProfileSettings())  # too big to hold every case at once


def test_cpu_points_are_timed_round_robin_whatever_the_timer():
    """A wall-clock profile (a TP group or a ring makes the timer wall) drifts with the machine as much as
    a thread-CPU one: its one-process points are timed round-robin too; on a GPU they are timed in turn."""
    grouped = ProfileSettings(tps=(1, 2), mbss=(1, 2), tp_group=True)
    assert grouped.timer == "wall" and interleaves(load_model("tiny-gpt"), grouped)
    assert not interleaves(load_model("tiny-gpt"), ProfileSettings(device="cuda"))


def test_a_coarse_thread_clock_times_wall_and_a_zero_median_is_refused_by_name(monkeypatch):
    """Windows' thread clock ticks every 15.6 ms and would time a small layer at 0 s, which the profile's
    validation refuses with a traceback: there the profile times wall clock, and a median of 0 s from any
    clock is refused naming the point and the fix."""
    from types import SimpleNamespace

    from launch.profiler import layers
    from profiles.errors import PlanError

    assert ProfileSettings().timer == "thread_cpu"  # this Linux machine's thread clock resolves 1 ns
    coarse = SimpleNamespace(resolution=0.015625, implementation="GetThreadTimes", monotonic=True, adjustable=False)
    real = time.get_clock_info
    monkeypatch.setattr(layers.time, "get_clock_info", lambda name: coarse if name == "thread_time" else real(name))
    assert ProfileSettings().timer == "wall"
    point = grid(load_model("tiny-gpt"), ProfileSettings(tps=(1,), mbss=(1,)))[0]
    stats = {k: (0.0 if k == "forward" else 1e-3, 0.0) for k in ("forward", "backward_input", "backward_weight", "backward")}
    with pytest.raises(PlanError, match=rf"^{re.escape(point.label)}: its forward timed 0 s \(median of 5\): the clock is coarser"):
        layers._entry(point, "fp32", stats, (1, 1, 1), 5, False)


def test_the_fsdp_overhead_is_timed_over_whole_training_steps_with_the_optimizer():
    """FSDP2's parameters are DTensors and AdamW's foreach kernels dispatch through DTensor for each:
    the measured step is what ``train.py`` runs, schedule then AdamW then ``zero_grad``, so one call
    moves every weight and leaves no gradient."""
    import torch.distributed as dist

    from launch.profiler.runtime import _inputs, _training_step
    from launch.runtime.model import build_stage_module

    model = load_model("tiny-gpt")
    module = build_stage_module(model, 0, 1, False, False, 0)
    before = [p.detach().clone() for p in module.parameters()]
    inputs, targets = _inputs(model, 2, 128)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", store=dist.FileStore(f"{tmp}/store", 1), rank=0, world_size=1)
        try:
            _training_step(module, 2, inputs, targets)()
        finally:
            dist.destroy_process_group()
    assert all(not torch.equal(b, p) for b, p in zip(before, module.parameters()))
    assert all(p.grad is None for p in module.parameters())


def test_speed_probe_is_tiny_gpts_layer_timed_with_the_profile(small_profile):
    """The probe's reference layer has tiny-gpt's shape (hidden 256, 8 heads, FFN 1024, seq 128):
    its F + unsplit B is the workload of the profile's own transformer tp=1 mbs=1 entry (no
    assertion on the times themselves: tests never assert on speed)."""
    from launch.profiler.speed_probe import PROBE_MODEL, probe_samples_s

    tiny = load_model("tiny-gpt")
    shape = ("hidden_size", "num_attention_heads", "ffn_hidden_size", "seq_len", "activation", "norm")
    assert all(getattr(PROBE_MODEL, k) == getattr(tiny, k) for k in shape)
    assert small_profile.runtime.speed_probe_s is not None and small_profile.runtime.speed_probe_s > 0
    # the time-sharing loss at 2x and 4x as many processes as cores (launch/profiler/timeshare.py)
    assert [p.processes_per_core for p in small_profile.runtime.timeshare_efficiency] == [2.0, 4.0]
    assert all(p.efficiency > 0 for p in small_profile.runtime.timeshare_efficiency)
    torch.set_num_threads(2)
    assert len(probe_samples_s(time.thread_time, warmup=1, repeats=3)) == 3
    assert torch.get_num_threads() == 2  # the probe runs on one thread and gives the caller's setting back


def _saved(name: str, tp: int, mbs: int, recompute: str, precision: str = "fp32", kind: str = "transformer") -> int:
    case = make_case(load_model(name), GridPoint(kind, tp, mbs, 128, recompute), precision, "cpu")
    return saved_activation_bytes(case)


@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-llama"])
@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_saved_activations_match_the_runtime_formula_within_1_pct(name, tp, recompute, precision):
    """The layer as the runtime runs it, in fp32 or in bf16 weights (FSDP2's mixed precision computes on
    them): only the norms' per-token statistics are left out. In bf16, torch's composite RMSNorm on the
    CPU keeps the fp32 upcast of its input and its fp32 normalised values (``composite_rmsnorm_extra_bytes``;
    before that was priced, tiny-llama's bf16 layer was 17 % above the formula)."""
    model = load_model(name)
    measured = _saved(name, tp, 2, recompute, precision)
    formula = layer_activation_bytes(model, 128, 2, tp, False, recompute, ActivationVariant.runtime(precision, device="cpu"))
    assert measured == pytest.approx(formula, rel=0.01)


@pytest.mark.parametrize("name", ["tiny-gpt", "tiny-llama"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_head_saves_the_formula_within_1_pct(name, precision):
    """The final norm, the logits' input and the fp32 log-softmax over the gathered vocabulary; the composite
    RMSNorm's fp32 normalised values (and in bf16 its fp32 input) included: tiny-llama's head was 14 % (fp32)
    and 23 % (bf16) above the formula without them."""
    measured = _saved(name, 1, 2, "none", precision, kind="head")
    formula = head_activation_bytes(load_model(name), 128, 2, 1, False, ActivationVariant.runtime(precision, device="cpu"))
    assert measured == pytest.approx(formula, rel=0.01)


@pytest.mark.parametrize("tp", [1, 2])
def test_moe_layer_saves_the_formula_within_1_pct(tp):
    """tiny-moe's layer (8 experts, top-2, all on this rank) keeps what ``moe_activation_bytes`` counts: the
    rows the experts receive, their FFN tensors, the k weighted copies, the routing's indices and scores.
    Its combine used to put the expert outputs back in token order with index_copy, whose backward kept
    them (T·k rows of h more: +7.4 % at tp 1, +11 % at tp 2); a gather keeps only its indices. Left: the
    norms' statistics and the combine's own index array (T·k int64), +0.5 and +0.8 %."""
    model = load_model("tiny-moe")
    measured = _saved("tiny-moe", tp, 1, "none", kind="moe_transformer")
    formula = layer_activation_bytes(model, 128, 1, tp, False, "none", CPU, moe=True)
    assert measured == pytest.approx(formula, rel=0.01)


def test_gpt_layer_saves_exactly_the_formula_plus_norm_statistics():
    # the formula leaves out LayerNorm's fp32 mean and 1/std per token (2 norms x 2 x 4 B x s x b)
    s, b = 128, 2
    assert _saved("tiny-gpt", 1, b, "none") - layer_activation_bytes(load_model("tiny-gpt"), s, b, 1, False, "none", CPU) == 2 * 2 * 4 * s * b


def test_full_recompute_keeps_only_the_layer_input():
    assert _saved("tiny-llama", 1, 2, "full") == 4 * 128 * 2 * 256


def test_grid_covers_every_kind_tp_mbs_and_recompute(small_profile):
    keys = {(e.kind, e.tp, e.mbs, e.recompute) for e in small_profile.layers}
    assert len(small_profile.layers) == len(keys) == 2 * 2 * (1 + 2 + 1)
    assert {e.kind for e in small_profile.layers} == {"embedding", "transformer", "head"}
    assert small_profile.model_shape_hash == model_shape_hash(load_model("tiny-gpt"))
    assert small_profile.hardware.device_kind == "cpu" and small_profile.hardware.num_threads == 1
    assert small_profile.timer == "thread_cpu"
    assert any("sharded" in note for note in small_profile.approximation)


def test_pass_times_have_the_zero_bubble_structure(small_profile):
    for e in small_profile.layers:
        assert e.forward_s > 0 and e.backward_weight_s > 0 and e.backward_s > 0
        assert (e.backward_input_s == 0) == (e.kind == "embedding")  # no input gradient for token ids
    by_key = {(e.kind, e.tp, e.mbs, e.recompute): e for e in small_profile.layers}
    for tp in (1, 2):
        for mbs in (1, 2):
            none, full = by_key["transformer", tp, mbs, "none"], by_key["transformer", tp, mbs, "full"]
            assert full.activation_bytes < none.activation_bytes / 10
            # torch's split W re-runs the checkpointed forward once per parameter group
            assert full.backward_weight_s > full.backward_s


def test_parameter_bytes_are_the_analytic_counts(small_profile):
    model = load_model("tiny-gpt")
    layer = next(e for e in small_profile.layers if e.kind == "transformer" and e.tp == 1)
    assert layer.parameter_bytes == 4 * parameter_counts(model).per_layer
    h, f = model.hidden_size, model.ffn_size
    # tp=2: column-parallel weights and biases halve; row-parallel weights halve, their biases and the norms stay
    sharded = (4 * h * h + 2 * h * f) // 2 + 3 * h // 2 + f // 2 + 2 * h + 2 * 2 * h
    layer2 = next(e for e in small_profile.layers if e.kind == "transformer" and e.tp == 2)
    assert layer2.parameter_bytes == 4 * sharded


def test_profile_file_round_trip(small_profile, tmp_path):
    path = tmp_path / "p.json"
    path.write_text(small_profile.model_dump_json(indent=2))
    assert read_profile(path) == small_profile


def test_cli_writes_the_profile_and_a_table(tmp_path, capsys):
    out = tmp_path / "p.json"
    argv = ["profile", "--model", "tiny-llama", "--tp", "1,2", "--mbs", "1", "--recompute", "none", "--repeats", "2", "--warmup", "0",
            "--layers-only", "--out", str(out)]  # fmt: skip
    assert run(argv) == 0
    data = json.loads(out.read_text())
    assert data["runtime"] is None  # --layers-only: the runtime's own costs are left to the stack's figures
    assert [(e["kind"], e["tp"]) for e in data["layers"]] == [(k, tp) for tp in (1, 2) for k in ("embedding", "transformer", "head")]
    assert data["precision"] == "fp32" and data["model"]["name"] == "tiny-llama"
    assert "wrote" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name != "p.json"]  # no temporary file left


BAD = {
    "unknown device": ["--device", "tpu"],
    "tp not dividing heads": ["--tp", "3"],
    "unknown recompute": ["--recompute", "some"],
    "fp8": ["--precision", "fp8"],
    "bad mbs list": ["--mbs", "1,x"],
    "unknown model": ["--model", "tiny-gtp"],
    "multi-head latent attention (the runtime has none)": ["--model", "deepseek-v3"],
}


@pytest.mark.parametrize("name", sorted(BAD) + ["cuda without cuda", "missing out dir", "out is a directory"])
def test_bad_input_exits_2_with_one_error_line(name, tmp_path, capsys):
    argv = ["profile", "--model", "tiny-gpt", "--out", str(tmp_path / "p.json")]
    if name in BAD:
        argv += BAD[name]
    elif name == "cuda without cuda":
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        argv += ["--device", "cuda"]
    elif name == "missing out dir":
        argv[-1] = str(tmp_path / "no" / "such" / "p.json")
    else:
        argv[-1] = str(tmp_path)
    code = run(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err


@pytest.mark.dist
def test_tp_group_times_the_runtime_dtensor_layers(tmp_path):
    settings = ProfileSettings(tps=(1, 2), mbss=(1,), recomputes=("none", "full"), tp_group=True, **LAYERS_ONLY)
    steps: list[str] = []
    model = load_model("tiny-gpt")
    profile = profile_model(model, settings, steps.append)
    assert profile.timer == "wall"
    # the tp-1 points round-robin in this process, the tp-2 points in their group, with and without sequence
    # parallelism: 8 points sized here, 3 rounds, 8 group steps (the 4 sequence-parallel points sized there)
    assert interleaves(model, settings)
    assert len(steps) == num_steps(model, settings) == 8 + 3 + 8
    pieces = (("embedding", "none"), ("transformer", "none"), ("transformer", "full"), ("head", "none"))
    assert [(e.kind, e.recompute, e.tp, e.sequence_parallel) for e in profile.layers] == [
        (kind, rc, tp, sp) for tp, sp in ((1, False), (2, False), (2, True)) for kind, rc in pieces]
    for e in profile.layers:
        assert e.tp_comm_included == (e.tp == 2)
        assert e.forward_s > 0 and e.backward_s > 0
    layer = {e.sequence_parallel: e for e in profile.layers if e.kind == "transformer" and e.tp == 2 and e.recompute == "none"}
    full = next(e for e in profile.layers if e.recompute == "full" and e.sequence_parallel)
    assert full.activation_bytes == 4 * 64 * 256  # the layer's input only: its 64 of 128 positions, fp32
    assert layer[False].activation_bytes == _saved("tiny-gpt", 2, 1, "none")  # memory from the sharded shapes
    # with sequence parallelism, measured in the group: the norms' tensors on 64 of 128 positions, the attention's
    # and MLP's gathered inputs on all of them (DTensor's plan keeps them), and LayerNorm's statistics on 64
    formula = layer_activation_bytes(model, 128, 1, 2, True, "none", CPU)
    assert layer[True].activation_bytes - formula == 2 * 2 * 4 * 64
    assert layer[True].parameter_bytes == layer[False].parameter_bytes


@pytest.fixture(scope="module")
def moe_profile() -> ProfileFile:
    settings = ProfileSettings(tps=(1, 2), mbss=(1,), recomputes=("none",), **LAYERS_ONLY)
    return profile_model(load_model("tiny-moe"), settings)


def test_an_moe_model_is_profiled_as_its_moe_layer_and_its_routed_experts(moe_profile):
    """tiny-moe (every layer MoE: 8 SwiGLU experts of 512 on h 256, router h -> 8): per tp the embedding,
    the MoE layer with all 8 experts (no dense layer to time), the router and experts alone, the head;
    parameter bytes are the analytic counts, the experts' FFN rows split over tp (expert TP = tp)."""
    model = load_model("tiny-moe")
    assert [(e.kind, e.tp) for e in moe_profile.layers] == [
        (k, tp) for tp in (1, 2) for k in ("embedding", "moe_transformer", "experts", "head")]
    h, experts, ffn = 256, 8, 512
    router, routed = h * experts, experts * 3 * h * ffn
    by = {(e.kind, e.tp): e for e in moe_profile.layers}
    assert by["experts", 1].parameter_bytes == 4 * (router + routed)
    assert by["experts", 2].parameter_bytes == 4 * (router + routed // 2)
    attention = h * h + 2 * h * 128 + h * h  # q, k and v of 4 of 8 heads (head dim 32), output
    assert by["moe_transformer", 1].parameter_bytes == 4 * (router + routed + attention + 2 * h)
    for e in moe_profile.layers:
        assert e.forward_s > 0 and e.backward_s > 0
    # the routed experts are most of an MoE layer's forward (the attention of 128 tokens is small)
    assert by["experts", 1].forward_s < by["moe_transformer", 1].forward_s
    assert moe_profile.model_shape_hash == model_shape_hash(model) != model_shape_hash(load_model("tiny-llama"))


def test_search_prices_an_moe_model_from_its_profile(moe_profile, tmp_path, capsys):
    """A tiny-moe profile prices search (cp stays 1: a profile has no ring)."""
    path = tmp_path / "p.json"
    path.write_text(moe_profile.model_dump_json())
    out = tmp_path / "plan.json"
    assert run(["search", "--model", "tiny-moe", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8",
                "--profile", str(path), "--tp", "1", "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["config"]["cp"] == 1 and plan["estimate"]["step_time_s"] > 0
    # A winner at mbs 1 (dp 2 over a batch of 2) has a cp-2 neighbour among the explained alternatives:
    # it stays out (the profile timed no ring), as it stays out of the search (stop 23's CI: exit 2 on it).
    assert run(["search", "--model", "tiny-moe", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "2",
                "--profile", str(path), "--tp", "1", "--pp", "1", "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert plan["config"]["mbs"] == 1 and plan["alternatives"]
    assert all(alt["config"]["cp"] == 1 for alt in plan["alternatives"])


@pytest.mark.dist
def test_a_ring_is_timed_and_sized_on_a_rank_of_real_ring(tmp_path):
    """``--cp 1,2``: the transformer layer also on one rank of a ring of 2 gloo processes (the runtime's ring
    attention), holding 64 of tiny-llama's 128 positions: its saved activations are half the whole layer's
    within the ring's extra (the key/value blocks received from the other rank), times are wall clock."""
    settings = ProfileSettings(tps=(1,), mbss=(1,), recomputes=("none",), cps=(1, 2), **LAYERS_ONLY)
    profile = profile_model(load_model("tiny-llama"), settings)
    assert profile.timer == "wall"
    assert [(e.kind, e.cp, e.seq_len) for e in profile.layers] == [
        ("embedding", 1, 128), ("transformer", 1, 128), ("head", 1, 128), ("transformer", 2, 128),
        ("embedding", 1, 64), ("transformer", 1, 64), ("head", 1, 64)]
    whole, ring = profile.layers[1], profile.layers[3]
    assert ring.seq_len == whole.seq_len == 128 and not ring.tp_comm_included
    assert ring.forward_s > 0 and ring.backward_s > 0 and ring.parameter_bytes == whole.parameter_bytes
    assert whole.activation_bytes / 2 < ring.activation_bytes < whole.activation_bytes


def test_a_ring_adds_every_piece_alone_at_the_ranks_positions_for_every_tp_once():
    """``--cp 1,2`` with tp 1, 2 over seq 64 and 128: the rings (tp 1, each recompute) and, at each tp, the
    rank's seq / 2 positions alone (5 pieces: embedding, the layer with each recompute, experts, head); seq 64
    was measured already, so each point is in the grid once: 2 tp x 2 seq x 5 + 2 seq x 2 rings + 2 tp x 5 at
    seq 32."""
    settings = ProfileSettings(tps=(1, 2), mbss=(1,), recomputes=("none", "full"), cps=(1, 2), seq_lens=(64, 128), **FAST)
    points = grid(load_model("tiny-moe"), settings)
    assert len(points) == len(set(points)) == 20 + 4 + 10
    assert {(p.tp, p.seq_len, p.recompute) for p in points if p.cp == 2} == {
        (1, seq, rc) for seq in (64, 128) for rc in ("none", "full")}
    assert {(p.kind, p.tp, p.recompute) for p in points if p.seq_len == 64 and p.cp == 1} == {
        (kind, tp, rc) for tp in (1, 2) for kind, rc in [("embedding", "none"), ("moe_transformer", "none"),
                                                          ("moe_transformer", "full"), ("experts", "none"), ("head", "none")]}
    # without seq 64 in the grid, the ring still brings the rank's positions alone at every tp
    only = grid(load_model("tiny-moe"), ProfileSettings(tps=(1, 2), mbss=(1,), recomputes=("none",), cps=(1, 2), **FAST))
    assert {(p.kind, p.tp) for p in only if p.seq_len == 64} == {
        (kind, tp) for tp in (1, 2) for kind in ("embedding", "moe_transformer", "experts", "head")}


def test_a_tp_group_times_sequence_parallelism_too_unless_told_not_and_the_notes_say_which():
    """``--tp-group``: every tp > 1 piece but the routed experts alone again with sequence parallelism (tp 2 and 4 of
    tiny-moe: 5 pieces, the layer with 2 recompute kinds, + 4 with sequence parallelism, per tp > 1); a sequence
    that tp does not split has none. ``--no-sequence-parallel`` and no ``--tp-group``: none, and the notes say that
    sequence parallelism is not profiled; only a TP group says its collectives are inside the times."""
    from launch.profiler.layers import approximation_notes

    model = load_model("tiny-moe")
    base = dict(tps=(1, 2, 4), mbss=(1,), recomputes=("none", "full"), **FAST)
    with_sp = grid(model, ProfileSettings(tp_group=True, **base))
    assert [(p.kind, p.tp, p.recompute) for p in with_sp if p.sequence_parallel] == [
        (kind, tp, rc) for tp in (2, 4) for kind, rc in (("embedding", "none"), ("moe_transformer", "none"),
                                                          ("moe_transformer", "full"), ("head", "none"))]
    assert len(with_sp) == 3 * 5 + 2 * 4
    for settings in (ProfileSettings(tp_group=True, sequence_parallel=False, **base), ProfileSettings(**base)):
        assert not any(p.sequence_parallel for p in grid(model, settings))
        notes = approximation_notes(settings, 1)
        assert any("sequence parallelism is not profiled" in n for n in notes)
        assert any("real TP group" in n for n in notes) == settings.tp_group
        assert any("no TP communication" in n for n in notes) != settings.tp_group
    notes = approximation_notes(ProfileSettings(tp_group=True, **base), 1)
    assert not any("not profiled" in n or "no TP communication" in n for n in notes)
    assert any("also timed with sequence parallelism" in n for n in notes)
    odd = ProfileSettings(tp_group=True, tps=(2,), mbss=(1,), recomputes=("none",), seq_lens=(127,), **FAST)
    assert not any(p.sequence_parallel for p in grid(load_model("tiny-gpt"), odd))


def test_a_ring_that_does_not_split_the_sequence_exits_2(tmp_path, capsys):
    argv = ["profile", "--model", "tiny-gpt", "--cp", "3", "--out", str(tmp_path / "p.json")]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --cp=3 needs the sequence (128) divisible by 2*cp = 6 (two chunks per rank for causal load balance)"
    assert not (tmp_path / "p.json").exists()
