"""``ProfiledTimes``: measured layer times for the planner (no torch needed).

Profiles here are written by hand so every expected number can be derived on paper.
"""

import math

import pytest
from pydantic import ValidationError

from costmodels.comm import Link, link_for, network_for, tp_layer_comm_s
from costmodels.compute import operators_time_s
from costmodels.estimate import estimate, stage_times
from costmodels.experts import dispatch_ops
from costmodels.layer_costs import RooflineTimes, price_operators
from costmodels.layer_ops import transformer_layer_ops
from costmodels.operators import LayerShape, MemoryBound
from costmodels.profile_times import ProfiledTimes, interpolate_loglog, layer_times_for
from planner.cli.main import run
from profiles.errors import PlanError
from profiles.loader import load_cluster, load_model, load_stack, read_comm_profile, read_profile
from profiles.profile_schema import (
    AlphaBetaFit,
    CollectiveMeasurement,
    CommProfile,
    HardwareFingerprint,
    LayerProfile,
    ProfileFile,
    RuntimeMeasurement,
    TierFit,
    model_shape_hash,
)
from profiles.schema import ParallelConfig, TrainSpec
from profiles.stack_schema import StackKernels
from tests.costmodels.neutral_stack import neutral_stack


def load_layer_times(profile_path, comm_path, model, cluster, train, allow_mismatch, warn=None):
    """What ``--profile`` / ``--comm-profile`` do: read the files (profiles.loader), build the times."""
    profile = read_profile(profile_path) if profile_path else None
    comm = read_comm_profile(comm_path) if comm_path else None
    return layer_times_for(profile, comm, model, cluster, train, allow_mismatch, warn, stack=neutral_stack())


CPU = HardwareFingerprint(device_kind="cpu", device_name="cpu", torch_version="2.13.0", cpu_model="test", num_threads=1)
MS = 1e-3
# a comm profile holds what it measured (at least one reading) and one fit per tier
ONE_READING = [CollectiveMeasurement(collective="all_reduce", group_size=2, size_bytes=1024, median_s=1e-4, iqr_s=0.0, repeats=3)]


def _entry(kind, tp, mbs, recompute="none", seq_len=128, f=1.0, b=2.0, w=1.5, bw=None, act=1000, precision="fp32"):
    """Times in ms that scale linearly with tokens and as 1/tp (a perfectly efficient layer)."""
    scale = mbs * seq_len / 128 / tp
    return LayerProfile(
        kind=kind, tp=tp, mbs=mbs, seq_len=seq_len, recompute=recompute, precision=precision,
        forward_s=f * scale * MS, forward_iqr_s=0.0, backward_input_s=b * scale * MS, backward_input_iqr_s=0.0,
        backward_weight_s=w * scale * MS, backward_weight_iqr_s=0.0,
        backward_s=(bw if bw is not None else b + w) * scale * MS, backward_iqr_s=0.0,
        repeats=5, activation_bytes=int(act * scale), parameter_bytes=4, transient_peak_bytes=0,
    )


def _profile(model_name="tiny-gpt", tps=(1, 2), mbss=(1, 4), hardware=CPU, precision="fp32"):
    model = load_model(model_name)
    layers = []
    for tp in tps:
        for mbs in mbss:
            layers.append(_entry("embedding", tp, mbs, b=0.0, w=0.2, f=0.1, precision=precision))
            layers.append(_entry("transformer", tp, mbs, precision=precision))
            layers.append(_entry("transformer", tp, mbs, "selective", b=2.5, precision=precision))
            # split W re-runs the forward per parameter group; unsplit backward = recompute + B + W
            layers.append(_entry("transformer", tp, mbs, "full", b=3.0, w=9.0, bw=4.5, precision=precision))
            layers.append(_entry("head", tp, mbs, f=0.5, b=0.6, w=0.4, precision=precision))
    return ProfileFile(
        model=model, model_shape_hash=model_shape_hash(model), precision=precision, hardware=hardware,
        warmup_iterations=1, layers=layers,
    )


@pytest.fixture
def env():
    return load_model("tiny-gpt"), load_cluster("cpu-local"), TrainSpec(global_batch=8, seq_len=128, precision="fp32")


def _times(env, warnings=None, **kw):
    model, cluster, train = env
    return ProfiledTimes(kw.pop("profile", _profile()), model, cluster, train, warn=(warnings.append if warnings is not None else None), **kw)


# -- interpolation ---------------------------------------------------------------------------


def test_loglog_interpolation_is_exact_for_power_laws():
    assert interpolate_loglog([(1, 2.0), (4, 8.0)], 2, "mbs").value == pytest.approx(4.0)  # y = 2x
    assert interpolate_loglog([(1, 1.0), (4, 16.0)], 2, "seq_len").value == pytest.approx(4.0)  # y = x^2
    got = interpolate_loglog([(1, 2.0), (4, 8.0)], 4, "mbs")
    assert got.value == 8.0 and not got.extrapolated


def test_interpolation_is_linear_when_a_bracketing_value_is_zero():
    assert interpolate_loglog([(1, 0.0), (3, 2.0)], 2, "mbs").value == pytest.approx(1.0)


def test_extrapolation_uses_the_nearest_slope_clamped_per_axis():
    up = interpolate_loglog([(1, 1.0), (2, 2.0)], 8, "mbs")
    assert up.extrapolated and up.value == pytest.approx(8.0)
    # a superlinear measured slope (2) is clamped to linear in mbs
    assert interpolate_loglog([(1, 1.0), (2, 4.0)], 4, "mbs").value == pytest.approx(8.0)
    # above the measured range a sublinear slope (log2(1.5)) is raised to linear: 3 x 4 = 12, not 3 x 1.5^2;
    # below it the measured slope stands: 2 / 2^0.585 at mbs 1 from mbs 2, 4
    assert interpolate_loglog([(2, 2.0), (4, 3.0)], 16, "mbs").value == pytest.approx(12.0)
    assert interpolate_loglog([(2, 2.0), (4, 3.0)], 1, "mbs").value == pytest.approx(2.0 / 1.5)
    # the same for the sequence: attention only adds to the linear parts
    assert interpolate_loglog([(64, 2.0), (128, 3.0)], 512, "seq_len").value == pytest.approx(12.0)
    # tp: slope log(6/10)/log 2 from the two nearest points
    slope = math.log(0.6) / math.log(2)
    assert interpolate_loglog([(1, 10.0), (2, 6.0)], 4, "tp").value == pytest.approx(6.0 * 2**slope)
    # one point: the ideal slope (1/tp)
    assert interpolate_loglog([(1, 10.0)], 4, "tp").value == pytest.approx(2.5)
    # more TP never makes a layer slower
    assert interpolate_loglog([(1, 10.0), (2, 12.0)], 4, "tp").value == pytest.approx(12.0)


# -- ProfiledTimes -----------------------------------------------------------------------------


def test_measured_shapes_return_the_medians(env):
    t = _times(env).transformer(1, 4, 128, False, "none")
    assert (t.forward_s, t.backward_input_s, t.backward_weight_s) == pytest.approx((4 * MS, 8 * MS, 6 * MS))
    assert t.tp_comm_s == 0.0 and t.recompute_s == 0.0


def test_a_profile_without_rings_prices_cp_1_only_and_a_dense_profile_no_experts(env):
    """A profile without ``--cp`` times whole-sequence layers: a search with it keeps cp = 1, and asking
    for a ring is bad input; a dense model's profile has no MoE layer to give; the embedding and the
    head of a cp rank are its s/cp positions."""
    times = _times(env)
    assert times.context_parallel_degrees == frozenset({1})
    with pytest.raises(PlanError, match="the profile timed no ring of cp=2 .it has cp 1.: re-run `ppplan profile --cp 2`"):
        times.transformer(1, 4, 256, False, "none", cp=2)
    with pytest.raises(PlanError, match="no moe_transformer measurements"):
        times.transformer(1, 4, 128, False, "none", moe=True)
    assert times.head(1, 2, 256, False, cp=2) == times.head(1, 2, 128, False)


def _moe_profile():
    """tiny-moe (8 experts, top-2, h 256): the MoE layer F 3, B 4, W 5 ms, unsplit backward 7 ms (B + W
    split take 2 ms more); its router and experts alone F 2, B 2.5, W 3.5, unsplit 5 ms; per 128 tokens."""
    model = load_model("tiny-moe")
    layers = []
    for mbs in (1, 4):
        layers.append(_entry("embedding", 1, mbs, b=0.0, w=0.2, f=0.1))
        layers.append(_entry("moe_transformer", 1, mbs, f=3.0, b=4.0, w=5.0, bw=7.0))
        layers.append(_entry("experts", 1, mbs, f=2.0, b=2.5, w=3.5, bw=5.0))
        layers.append(_entry("head", 1, mbs, f=0.5, b=0.6, w=0.4))
    return ProfileFile(model=model, model_shape_hash=model_shape_hash(model), precision="fp32", hardware=CPU,
                       warmup_iterations=1, layers=layers)


def test_an_moe_layer_is_the_measured_layer_plus_the_busiest_ranks_excess_and_the_all_to_alls():
    """ep = 1: the measured MoE layer. ep = 2 (4 experts per rank): the busiest rank carries
    1 + σ·sqrt(2/8)·z(2) of the mean, σ = 0.25 / z(8) (z(2) = 0.5642, z(8) = 1.4236: 1.04954), so the
    measured experts block is added 0.04954 times; the dispatch and combine all-to-alls (and the counts)
    over the link, and the reorder of received rows, priced as in the roofline."""
    model, cluster = load_model("tiny-moe"), load_cluster("cpu-local")
    train = TrainSpec(global_batch=8, seq_len=128, precision="fp32")
    kernels = load_stack("ppplan-torch").kernels
    times = ProfiledTimes(_moe_profile(), model, cluster, train, kernels=kernels)
    one = times.transformer(1, 1, 128, False, "none", ep=1, moe=True)
    assert (one.forward_s, one.backward_input_s, one.backward_weight_s) == pytest.approx((3 * MS, 4 * MS, 5 * MS))
    assert one.split_backward_extra_s == pytest.approx(2 * MS) and one.ep_comm_s == 0.0
    excess = 0.25 / 1.4236 * math.sqrt(2 / 8) * 0.5642
    assert excess == pytest.approx(0.04954, abs=1e-4)
    two = times.transformer(1, 1, 128, False, "none", ep=2, moe=True)
    ops = dispatch_ops(model, LayerShape(1, 1, 128, False, "none", 4, ep=2, moe=True), kernels)
    network = network_for(cluster)
    forward_a2a = price_operators(cluster, "fp32", ops.forward, network, 1, 1, 2).ep_comm_s
    backward_a2a = price_operators(cluster, "fp32", ops.backward_input, network, 1, 1, 2).ep_comm_s
    assert forward_a2a > 0 and backward_a2a > 0
    rows = 128 * 2 * (1 + excess)  # the busiest rank's routed rows, reordered with 4 more accesses of 256 fp32 values
    reorder = operators_time_s(cluster, "fp32", (MemoryBound("reorder", 4 * rows * 256 * 4),))
    assert two.forward_s == pytest.approx(3 * MS + excess * 2 * MS + forward_a2a + reorder, rel=1e-3)
    assert two.backward_input_s == pytest.approx(4 * MS + excess * 2.5 * MS + backward_a2a + reorder, rel=1e-3)
    assert two.backward_weight_s == pytest.approx(5 * MS + excess * 3.5 * MS, rel=1e-3)
    assert two.ep_comm_s == pytest.approx(forward_a2a + backward_a2a)
    assert two.split_backward_extra_s == pytest.approx(2 * MS + excess * 1.0 * MS, rel=1e-3)
    # the roofline prices the same all-to-alls for this layer
    roof = RooflineTimes(model, cluster, "fp32", stack=load_stack("ppplan-torch"))
    assert roof.transformer(1, 1, 128, False, "none", ep=2, moe=True).ep_comm_s == pytest.approx(two.ep_comm_s)


@pytest.mark.parametrize("schedule, drops", [("1f1b", True), ("zb-h1", False)])
def test_a_schedule_without_the_split_backward_is_priced_at_the_measured_unsplit_backward(env, schedule, drops):
    """B 2 + W 1.5 ms split, 2.5 ms as one autograd call (per 128 tokens): 1F1B runs the one call, so it
    is priced as a profile whose W is 0.5 ms; ZB-H1 runs the split pair, priced as a profile without
    the difference, but on its first stage, whose whole backward torch's pipeline runs as W, one call."""
    model, cluster, train = env

    def profile(w, bw):
        layers = [_entry("embedding", 1, 1, b=0.0, w=0.2, f=0.1, bw=0.2), _entry("head", 1, 1, f=0.5, b=0.6, w=0.4, bw=1.0),
                  _entry("transformer", 1, 1, w=w, bw=bw)]
        return ProfileFile(model=model, model_shape_hash=model_shape_hash(model), precision="fp32", hardware=CPU,
                           warmup_iterations=1, layers=layers)

    cfg = ParallelConfig(tp=1, pp=2, dp=1, mbs=1, num_microbatches=4, schedule=schedule, stage_layers=[4, 4])

    def step(prof):
        return estimate(model, cluster, train, cfg, layers=ProfiledTimes(prof, model, cluster, train), stack=neutral_stack()).step_time_s

    measured = step(profile(1.5, 2.5))
    if drops:
        assert measured == pytest.approx(step(profile(0.5, 2.5)), rel=1e-9)
        assert measured < step(profile(1.5, 3.5))
        return

    def stages(prof):
        return stage_times(model, cluster, train, cfg, ProfiledTimes(prof, model, cluster, train), stack=neutral_stack())

    got, joined, split = stages(profile(1.5, 2.5)), stages(profile(0.5, 2.5)), stages(profile(1.5, 3.5))
    assert got.backward_weight_s[0] == pytest.approx(joined.backward_weight_s[0], rel=1e-12)
    assert got.backward_weight_s[1] == pytest.approx(split.backward_weight_s[1], rel=1e-12)
    assert joined.backward_weight_s[1] < got.backward_weight_s[1] and got.backward_weight_s[0] < split.backward_weight_s[0]


def test_mbs_seq_and_tp_between_measured_points_are_interpolated(env):
    warnings = []
    times = _times(env, warnings)
    assert times.transformer(1, 2, 128, False, "none").forward_s == pytest.approx(2 * MS)
    assert times.head(2, 2, 128, False).backward_input_s == pytest.approx(0.6 * MS)
    assert warnings == []


def test_extrapolation_is_priced_and_said_once(env):
    warnings = []
    times = _times(env, warnings)
    assert times.transformer(1, 8, 128, False, "none").forward_s == pytest.approx(8 * MS)
    times.transformer(1, 8, 128, False, "selective")
    assert times.transformer(1, 1, 256, False, "none").forward_s == pytest.approx(2 * MS)  # linear in tokens
    # tp=4 from tp 1,2 (slope -1), compute only; comm added on top
    model, cluster, train = env
    t4 = times.transformer(4, 1, 128, False, "none")
    comm = tp_layer_comm_s(128, model.hidden_size, 4, 4, network_for(cluster))
    assert t4.forward_s == pytest.approx(0.25 * MS + comm)
    assert len([w for w in warnings if "mbs=8" in w]) == 1
    assert any("seq_len=256" in w for w in warnings) and any("tp=4" in w for w in warnings)


def test_tp_comm_is_added_where_the_roofline_puts_it(env):
    model, cluster, train = env
    comm = tp_layer_comm_s(2 * 128, model.hidden_size, 4, 2, network_for(cluster))
    t = _times(env).transformer(2, 2, 128, False, "full")
    roof = RooflineTimes(model, cluster, "fp32", stack=neutral_stack()).transformer(2, 2, 128, False, "full")
    assert t.tp_comm_s == pytest.approx(3 * comm) == pytest.approx(roof.tp_comm_s)
    assert t.forward_s == pytest.approx(1 * MS + comm)


def test_recompute_prices_the_unsplit_backward_and_the_extra_b(env):
    warnings = []
    t = _times(env, warnings, kernels=load_stack("ppplan-torch").kernels).transformer(1, 1, 128, False, "full")
    # B(full) - B(none) = 1 ms recompute; W = unsplit backward 4.5 - B 3.0
    assert t.recompute_s == pytest.approx(1 * MS)
    assert t.backward_weight_s == pytest.approx(1.5 * MS)
    assert any("split backward-weight" in w for w in warnings)
    sel = _times(env).transformer(1, 1, 128, False, "selective")
    assert sel.recompute_s == pytest.approx(0.5 * MS) and sel.backward_weight_s == pytest.approx(1.5 * MS)


def _tail_share(env, kernels: StackKernels) -> float:
    """1 - (fc2 + residual add) / forward of a tiny-gpt layer at tp 1, mbs 1, seq 128 in fp32 with ``kernels``, by the
    roofline's prices: what torch's early-stopped recompute re-runs of the forward."""
    model, cluster, train = env
    forward = transformer_layer_ops(model, LayerShape(1, 1, 128, False, "full", 4), kernels).forward
    price = lambda part: price_operators(cluster, train.precision, part, network_for(cluster), 1, 1, 1).total_s  # noqa: E731
    return 1.0 - price(tuple(op for op in forward if op.name in ("mlp.fc2", "mlp.residual"))) / price(forward)


def test_full_recompute_follows_the_stack_not_the_profiled_runtime(env):
    """The profile timed ppplan's runtime, whose recompute stops before fc2. A profile without full-recompute
    measurements adds the measured forward (1 ms) to B for a stack that re-runs the whole block, the early-stopped
    share of it for ppplan-torch; measured full recompute (1 ms re-run) is scaled up to the whole block for a stack
    without early stop. tiny-gpt's fc2 is a third of its GEMM FLOPs, so the share lies between 2/3 and 1."""
    ppplan = load_stack("ppplan-torch").kernels
    share, runtime_share = _tail_share(env, ppplan), _tail_share(env, StackKernels(full_recompute_early_stop=True))
    assert 2 / 3 < share < 1 and 2 / 3 < runtime_share < 1
    profile = _profile()
    profile = profile.model_copy(update={"layers": [e for e in profile.layers if e.recompute != "full"]})
    warnings: list[str] = []
    whole = _times(env, warnings, profile=profile).transformer(1, 1, 128, False, "full")
    assert whole.recompute_s == pytest.approx(1 * MS) and any("adding the measured forward to B" in w for w in warnings)
    early = _times(env, profile=profile, kernels=ppplan).transformer(1, 1, 128, False, "full")
    assert early.recompute_s == pytest.approx(share * MS, rel=1e-9)
    measured_whole = _times(env).transformer(1, 1, 128, False, "full")
    assert measured_whole.recompute_s == pytest.approx(MS / runtime_share, rel=1e-9)
    assert measured_whole.backward_weight_s == pytest.approx(1.5 * MS)  # W from the measured unsplit backward


def test_comm_profile_link_replaces_the_cluster_link(env):
    model, cluster, train = env
    fit = AlphaBetaFit(latency_us=100.0, bandwidth_gbs=0.5, rms_relative_error=0.0, num_points=4)
    comm = CommProfile(backend="gloo", nproc=2, hardware=CPU, measurements=ONE_READING,
                       tiers=[TierFit(tier="intra_node", group_size=2, overall=fit, per_collective={})])
    t = _times(env, comm=comm).transformer(2, 1, 128, False, "none")
    expected = tp_layer_comm_s(128, model.hidden_size, 4, 2, network_for(cluster, (Link(0.5e9, 100e-6), link_for(cluster, True))))
    assert t.tp_comm_s == pytest.approx(2 * expected)
    roof = layer_times_for(None, comm, model, cluster, train, stack=neutral_stack())
    assert isinstance(roof, RooflineTimes)
    base = RooflineTimes(model, cluster, "fp32", stack=neutral_stack()).transformer(2, 1, 128, False, "none")
    assert roof.transformer(2, 1, 128, False, "none").tp_comm_s == pytest.approx(2 * expected)
    assert roof.transformer(2, 1, 128, False, "none").total_s - base.total_s == pytest.approx(2 * expected - base.tp_comm_s)


def test_estimate_with_a_profile_is_the_sum_of_measured_passes_on_one_stage(env):
    model, cluster, train = env
    times = _times(env)
    cfg = ParallelConfig(tp=1, pp=1, dp=1, mbs=4, num_microbatches=2, stage_layers=[8])
    est = estimate(model, cluster, train, cfg, layers=times, stack=neutral_stack())
    per_microbatch = 8 * times.transformer(1, 4, 128, False, "none").total_s + times.embedding(1, 4, 128, False).total_s + times.head(1, 4, 128, False).total_s
    assert est.step_time_s - est.breakdown.optimizer_s - est.breakdown.overhead_s == pytest.approx(2 * per_microbatch)


# -- loading and mismatches ----------------------------------------------------------------------


def _write(tmp_path, profile, name="p.json"):
    path = tmp_path / name
    path.write_text(profile.model_dump_json())
    return path


def test_load_layer_times_reads_a_matching_profile(env, tmp_path):
    model, cluster, train = env
    times = load_layer_times(_write(tmp_path, _profile()), None, model, cluster, train, False)
    assert isinstance(times, ProfiledTimes)
    assert isinstance(load_layer_times(None, None, model, cluster, train, False), RooflineTimes)


@pytest.mark.parametrize("case", ["model shape", "device", "precision"])
def test_mismatched_profile_is_an_error_unless_allowed(env, tmp_path, case):
    model, cluster, train = env
    if case == "model shape":
        path = _write(tmp_path, _profile("tiny-llama"))
    elif case == "device":
        cluster = load_cluster("dgx-h100")
        path = _write(tmp_path, _profile())
    else:
        path = _write(tmp_path, _profile(precision="bf16"))
    with pytest.raises(PlanError, match="--allow-mismatch"):
        load_layer_times(path, None, model, cluster, train, False)
    warnings = []
    load_layer_times(path, None, model, cluster, train, True, warn=warnings.append)
    assert len(warnings) == 1 and "--allow-mismatch" in warnings[0]


def test_a_cuda_profile_matches_its_gpu_family(env, tmp_path):
    model, _, _ = env
    h100 = HardwareFingerprint(device_kind="cuda", device_name="NVIDIA H100 80GB HBM3", torch_version="2.13.0",
                               cuda_version="12.8", cpu_model="x", num_threads=8)
    path = _write(tmp_path, _profile(hardware=h100, precision="bf16"))
    train = TrainSpec(global_batch=8, seq_len=128, precision="bf16")
    assert isinstance(load_layer_times(path, None, model, load_cluster("dgx-h100"), train, False), ProfiledTimes)
    with pytest.raises(PlanError, match="dgx-a100-80g"):
        load_layer_times(path, None, model, load_cluster("dgx-a100-80g"), train, False)


def test_files_of_the_wrong_kind_are_named(env, tmp_path):
    model, cluster, train = env
    fit = AlphaBetaFit(latency_us=100.0, bandwidth_gbs=0.5, rms_relative_error=0.0, num_points=4)
    comm = CommProfile(backend="gloo", nproc=2, hardware=CPU, measurements=ONE_READING,
                       tiers=[TierFit(tier="intra_node", group_size=2, overall=fit, per_collective={})])
    comm_path = _write(tmp_path, comm, "comm.json")
    with pytest.raises(PlanError, match="--comm-profile"):
        load_layer_times(comm_path, None, model, cluster, train, False)
    with pytest.raises(PlanError, match="--profile"):
        load_layer_times(None, _write(tmp_path, _profile()), model, cluster, train, False)
    (tmp_path / "bad.json").write_text('{"schema_version": 1, "layers": [], "extra": 1}')
    with pytest.raises(PlanError):
        load_layer_times(tmp_path / "bad.json", None, model, cluster, train, False)


EVALUATE = ["evaluate", "--model", "tiny-llama", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8",
            "--tp", "1", "--pp", "2", "--mbs", "1"]


def test_cli_mismatched_profile_exits_2_with_one_error_line(tmp_path, capsys):
    argv = EVALUATE + ["--profile", str(_write(tmp_path, _profile("tiny-gpt")))]
    code = run(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "tiny-gpt" in lines[0], err
    assert run(argv + ["--allow-mismatch", "--json"]) == 0


def test_a_ring_at_a_tp_it_was_not_timed_at_is_the_ranks_positions_alone_plus_the_rings_extra_split_by_tp(env):
    """The ring timed at tp 1 (F 3, B 4, W 2 ms per 128 positions: 12, 16, 8 at mbs 4); the rank's 64 positions
    alone at tp 1 (F 1, B 2, W 1.5 per 128: 2, 4, 3) and, in a TP group, at tp 2 (F 3, B 6, W 1 per 128 and tp:
    3, 6, 1). At tp 2 cp 2: alone at tp 2 + (ring - alone at tp 1) / 2 = 3 + 10/2, 6 + 12/2, 1 + 5/2 = F 8,
    B 12, W 3.5 ms (extrapolating the tp-1 ring to tp 2 by 1/tp would say 6, 8, 4). At tp 1 the ring as timed.
    Without the positions alone at tp 2 it extrapolates across tp, and says so."""
    model, cluster, train = env
    ring = [_entry("transformer", 1, mbs, f=3.0, b=4.0, w=2.0).model_copy(update={"cp": 2}) for mbs in (1, 4)]
    alone = [_entry("transformer", 1, mbs, seq_len=64) for mbs in (1, 4)]
    alone2 = [_entry("transformer", 2, mbs, seq_len=64, f=3.0, b=6.0, w=1.0, bw=7.0).model_copy(update={"tp_comm_included": True})
              for mbs in (1, 4)]
    base = _profile()
    full = base.model_copy(update={"layers": [*base.layers, *ring, *alone, *alone2]})
    got = ProfiledTimes(full, model, cluster, train).transformer(2, 4, 128, False, "none", cp=2)
    assert (got.forward_s, got.backward_input_s, got.backward_weight_s) == pytest.approx((8 * MS, 12 * MS, 3.5 * MS))
    at_1 = ProfiledTimes(full, model, cluster, train).transformer(1, 4, 128, False, "none", cp=2)
    assert (at_1.forward_s, at_1.backward_input_s, at_1.backward_weight_s) == pytest.approx((12 * MS, 16 * MS, 8 * MS))
    warnings: list[str] = []
    older = base.model_copy(update={"layers": [*base.layers, *ring, *alone]})
    old = ProfiledTimes(older, model, cluster, train, warn=warnings.append)._compute(2, 4, 128, "none", "transformer", 2)
    assert (old.forward_s, old.backward_input_s, old.backward_weight_s) == pytest.approx((6 * MS, 8 * MS, 4 * MS))
    assert any("cp=2 tp=2 is outside the measured tp 1" in w for w in warnings), warnings


def test_a_sequence_parallel_plan_priced_from_layers_timed_in_a_tp_group_says_they_ran_without_it(env):
    """A profile whose tp > 1 layers were timed in a TP group without sequence parallelism (``ppplan profile
    --tp-group --no-sequence-parallel``, or one taken before it timed both): the price of a sequence-parallel
    plan is theirs (their collectives inside F and B), and the caveat is said once."""
    model, cluster, train = env
    in_group = [_entry("transformer", 2, mbs, f=3.0, b=6.0, w=1.0).model_copy(update={"tp_comm_included": True})
                for mbs in (1, 4)]
    base = _profile(tps=(1,))
    profile = base.model_copy(update={"layers": [*base.layers, *in_group]})
    warnings: list[str] = []
    times = ProfiledTimes(profile, model, cluster, train, warn=warnings.append)
    plain, sp = (times.transformer(2, 4, 128, sequence_parallel, "none") for sequence_parallel in (False, True))
    assert (sp.forward_s, sp.backward_input_s) == pytest.approx((plain.forward_s, plain.backward_input_s))
    assert (sp.forward_s, sp.backward_input_s) == pytest.approx((6 * MS, 12 * MS))  # 3 and 6 ms per 128 tokens and tp
    times.transformer(2, 1, 128, True, "none")
    assert len([w for w in warnings if "without sequence parallelism" in w]) == 1, warnings


def _in_group(kind, tp, mbs, sp, recompute="none", **times):
    return _entry(kind, tp, mbs, recompute, **times).model_copy(update={"tp_comm_included": True, "sequence_parallel": sp})


def test_a_sequence_parallel_plan_is_priced_from_the_layers_timed_with_it_where_they_were(env):
    """``ppplan profile --tp-group`` also times tp > 1 with sequence parallelism: a plan with it is priced from
    those entries (F 4, B 7, W 1 ms per 128 tokens at tp 2, against 3, 6, 1 without it), its embedding and
    head too; a plan without it from the entries without it; no caveat is said. Under full recompute the
    re-run is the sequence-parallel B(full) - B(none). At tp 4, timed without sequence parallelism only,
    the plan falls back to those entries and says so once."""
    model, cluster, train = env
    base = _profile(tps=(1,))
    layers = [*base.layers]
    for mbs in (1, 4):
        layers += [_in_group("transformer", 2, mbs, False, f=3.0, b=6.0, w=1.0),
                   _in_group("transformer", 2, mbs, True, f=4.0, b=7.0, w=1.0),
                   _in_group("transformer", 2, mbs, True, "full", f=4.0, b=11.0, w=1.0),
                   _in_group("transformer", 4, mbs, False, f=3.0, b=6.0, w=1.0),
                   _in_group("embedding", 2, mbs, False, f=0.1, b=0.0, w=0.2),
                   _in_group("embedding", 2, mbs, True, f=0.3, b=0.0, w=0.2),
                   _in_group("head", 2, mbs, False, f=0.5, b=0.6, w=0.4),
                   _in_group("head", 2, mbs, True, f=0.9, b=0.6, w=0.4)]
    profile = base.model_copy(update={"layers": layers})
    warnings: list[str] = []
    as_profiled = StackKernels(full_recompute_early_stop=True, dropout=False)  # the re-run as measured, unscaled
    times = ProfiledTimes(profile, model, cluster, train, warn=warnings.append, kernels=as_profiled)
    plain, sp = (times.transformer(2, 4, 128, sequence_parallel, "none") for sequence_parallel in (False, True))
    assert (plain.forward_s, plain.backward_input_s, plain.backward_weight_s) == pytest.approx((6 * MS, 12 * MS, 2 * MS))
    assert (sp.forward_s, sp.backward_input_s, sp.backward_weight_s) == pytest.approx((8 * MS, 14 * MS, 2 * MS))
    assert sp.tp_comm_s > 0  # inside F and B, labelled for the breakdown
    full = times.transformer(2, 4, 128, True, "full")
    assert (full.backward_input_s, full.recompute_s) == pytest.approx((22 * MS, 8 * MS))  # 11 ms, re-run 11 - 7
    assert times.embedding(2, 4, 128, True).forward_s == pytest.approx(0.6 * MS)
    assert times.embedding(2, 4, 128, False).forward_s == pytest.approx(0.2 * MS)
    assert times.head(2, 4, 128, True).forward_s == pytest.approx(1.8 * MS)
    assert not warnings, warnings
    at_4 = times.transformer(4, 4, 128, True, "none")
    assert (at_4.forward_s, at_4.backward_input_s) == pytest.approx((3 * MS, 6 * MS))
    times.transformer(4, 1, 128, True, "none")
    assert len([w for w in warnings if "without sequence parallelism" in w]) == 1, warnings


def test_a_sequence_parallel_plan_whose_recompute_was_not_timed_with_it_is_priced_from_the_entries_without_it(env):
    """A merged profile with the layer timed with sequence parallelism at tp 2 without recompute but its full
    recompute only without sequence parallelism: a sequence-parallel plan under full recompute is priced from the
    entries without it at tp 2 (B(full) 9 ms per 128 tokens and tp), with the caveat, not from the recompute
    guess on the sequence-parallel forward; without recompute from the sequence-parallel entries."""
    model, cluster, train = env
    base = _profile(tps=(1,))
    layers = [*base.layers]
    for mbs in (1, 4):
        layers += [_in_group("transformer", 2, mbs, False, f=3.0, b=6.0, w=1.0),
                   _in_group("transformer", 2, mbs, False, "full", f=3.0, b=9.0, w=1.0),
                   _in_group("transformer", 2, mbs, True, f=4.0, b=7.0, w=1.0)]
    warnings: list[str] = []
    as_profiled = StackKernels(full_recompute_early_stop=True, dropout=False)
    times = ProfiledTimes(base.model_copy(update={"layers": layers}), model, cluster, train, warn=warnings.append,
                          kernels=as_profiled)
    assert times.sequence_parallel_timed("transformer", 2, True)
    assert not times.sequence_parallel_timed("transformer", 2, True, "full")
    full = times.transformer(2, 4, 128, True, "full")
    assert (full.forward_s, full.backward_input_s, full.recompute_s) == pytest.approx((6 * MS, 18 * MS, 6 * MS))
    assert any("without sequence parallelism" in w for w in warnings) and not any("no recompute" in w for w in warnings)
    assert times.transformer(2, 4, 128, True, "none").forward_s == pytest.approx(8 * MS)


def test_a_sequence_parallel_entry_is_a_layer_timed_in_a_tp_group():
    """``sequence_parallel`` is only a layer timed in a real TP group (tp > 1, no ring): anything else is refused."""
    good = _in_group("transformer", 2, 1, True)
    assert good.key[-1] is True
    for update in ({"tp": 1}, {"tp_comm_included": False}, {"cp": 2}, {"kind": "experts"}):
        with pytest.raises(ValidationError, match="sequence_parallel is a layer timed in a real TP group"):
            LayerProfile.model_validate(good.model_dump() | update)


def test_a_profile_with_a_ring_prices_that_cp_and_search_keeps_to_it(env):
    """Rings timed at cp 2 (``ppplan profile --cp 1,2``): cp 2 is priced from those entries (F 3, B 4, W 2 ms
    per 128 positions of the whole sequence, a rank holding half of them), the embedding and head at the
    rank's s/2 positions; cp 4 was not timed: bad input naming what was; the search offers cp 1 and 2 of
    the 1, 2, 4 it would offer without the profile."""
    model, cluster, train = env
    profile = _profile()
    ring = [_entry("transformer", 1, mbs, f=3.0, b=4.0, w=2.0).model_copy(update={"cp": 2}) for mbs in (1, 4)]
    profile = profile.model_copy(update={"layers": [*profile.layers, *ring]})
    times = ProfiledTimes(profile, model, cluster, train)
    assert times.context_parallel_degrees == frozenset({1, 2})
    got = times.transformer(1, 4, 128, False, "none", cp=2)
    assert (got.forward_s, got.backward_input_s, got.backward_weight_s) == pytest.approx((12 * MS, 16 * MS, 8 * MS))
    assert times.head(1, 4, 128, False, cp=2) == times.head(1, 4, 64, False)
    with pytest.raises(PlanError, match="no ring of cp=4 .it has cp 1,2."):
        times.transformer(1, 4, 128, False, "none", cp=4)
    from planner.search.space import enumerate_candidates

    long = TrainSpec(global_batch=8, seq_len=1024, precision="fp32")  # chunks of 1024 / (2·cp) >= 128 up to cp 4
    stack = load_stack("ppplan-torch")
    assert {c.cp for c in enumerate_candidates(model, long, 4, 8, stack=stack)} == {1, 2, 4}
    assert {c.cp for c in enumerate_candidates(model, long, 4, 8, stack=stack, cp_priced=times.context_parallel_degrees)} == {1, 2}


def test_a_profile_time_past_a_day_or_a_fit_past_the_clusters_caps_is_refused() -> None:
    """A measured time above a day (profiles.limits.MAX_ACTION_TIME_S) is no measurement: 1e308 s used to pass the
    schema and overflow the step to inf in the breakdown (a traceback instead of exit 2). A comm fit's bandwidth and
    latency take the clusters' caps (MIN/MAX_BANDWIDTH_GBS, MAX_LATENCY_US)."""
    good = _entry("transformer", 1, 1)
    assert LayerProfile.model_validate(good.model_dump() | {"forward_s": 86400.0}).forward_s == 86400.0
    with pytest.raises(ValidationError, match="less than or equal to 86400"):
        LayerProfile.model_validate(good.model_dump() | {"forward_s": 1e308})
    with pytest.raises(ValidationError, match="less than or equal to 86400"):
        RuntimeMeasurement(pipeline_action_overhead_s=0.0, optimizer_s_per_param=1e308)
    with pytest.raises(ValidationError, match="greater than or equal to 0.000001"):
        AlphaBetaFit(latency_us=1.0, bandwidth_gbs=1e-300, rms_relative_error=0.0, num_points=3)
    with pytest.raises(ValidationError, match="less than or equal to 1000000"):
        AlphaBetaFit(latency_us=1e308, bandwidth_gbs=10.0, rms_relative_error=0.0, num_points=3)
