"""Search quality and determinism on shipped presets."""

import json

import pytest

from costmodels.estimate import estimate
from costmodels.layout import uniform_split
from planner.cli.main import run
from planner.search.branch_and_bound import search
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ParallelConfig, TrainSpec


def test_gpt_1t_best_plan_beats_megatrons_own_config():
    """Megatron-LM's own 1T configuration (Narayanan et al. 2021, Table 1) on Megatron's stack, against the search's
    best plan on the same stack."""
    m, c = load_model("gpt-1t"), load_cluster("dgx-a100-80g")
    train = TrainSpec(global_batch=3072, seq_len=2048)
    stack = load_stack("megatron-core")
    result = search(m, c, train, 3072, top_k=1, stack=stack)
    megatron = ParallelConfig(stack="megatron-core", tp=8, pp=64, dp=6, mbs=1, num_microbatches=512, schedule="1f1b",
                              recompute="full", stage_layers=uniform_split(128, 64))
    baseline = estimate(m, c, train, megatron, stack=stack)
    assert baseline.fits
    best = result.best[0].estimate
    assert best.fits and best.step_time_s <= baseline.step_time_s


def test_search_respects_memory_and_rules_on_tiny_model():
    m, c = load_model("tiny-gpt"), load_cluster("cpu-local")
    result = search(m, c, TrainSpec(global_batch=8, seq_len=128, precision="fp32"), 4, top_k=3)
    assert len(result.best) == 3
    for s in result.best:
        cfg = s.config
        assert cfg.tp * cfg.pp * cfg.dp == 4 and sum(cfg.stage_layers) == 8 and s.estimate.fits
    times = [s.estimate.step_time_s for s in result.best]
    assert times == sorted(times)


def test_identical_inputs_give_byte_identical_plan(tmp_path, capsys):
    args = ["search", "--model", "gpt3-7.5b", "--cluster", "dgx-h100", "--gpus", "64", "--global-batch", "256"]
    assert run(args + ["--out", str(tmp_path / "a.json")]) == 0
    assert run(args + ["--out", str(tmp_path / "b.json")]) == 0
    a, b = (tmp_path / "a.json").read_bytes(), (tmp_path / "b.json").read_bytes()
    assert a == b
    plan = json.loads(a)
    assert plan["schema_version"] == 1 and plan["estimate"]["fits"]


def test_search_json_is_a_list_of_plans(capsys):
    assert run(["search", "--model", "tiny-llama", "--cluster", "cpu-local", "--gpus", "4", "--global-batch", "8",
                "--top-k", "2", "--json"]) == 0
    plans = json.loads(capsys.readouterr().out)
    assert len(plans) == 2 and {"config", "estimate"} <= set(plans[0])
    assert plans[0]["estimate"]["step_time_s"] <= plans[1]["estimate"]["step_time_s"]


def test_infeasible_exits_1_with_closest_plan(capsys):
    code = run(["search", "--model", "llama3-405b", "--cluster", "dgx-a100-80g", "--gpus", "8", "--global-batch", "16"])
    captured = capsys.readouterr()
    assert code == 1
    assert "closest" in captured.err and "GiB" in captured.err
    assert "OOM" in captured.out


def test_evaluate_json_fields_and_plan_out(tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = run(["evaluate", "--model", "gpt3-175b", "--cluster", "dgx-a100-80g", "--gpus", "1024", "--global-batch", "1536",
                "--tp", "8", "--pp", "16", "--mbs", "1", "--v", "2", "--schedule", "interleaved-1f1b", "--recompute", "full",
                "--json", "--out", str(out)])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    est = doc["estimate"]
    for key in ("step_time_s", "tokens_per_s", "model_tflops_per_gpu", "hw_tflops_per_gpu", "mfu", "hfu",
                "bubble_fraction", "peak_memory_gib", "fits", "breakdown"):
        assert key in est
    assert len(est["peak_memory_gib"]) == 16
    assert 0 < est["mfu"] < est["hfu"] < 1
    assert doc["config"]["stage_layers"] == [3] * 32
    assert json.loads(out.read_text())["config"]["dp"] == 8


def test_evaluate_that_does_not_fit_still_prices(capsys):
    code = run(["evaluate", "--model", "gpt3-175b", "--cluster", "dgx-a100-40g", "--gpus", "8", "--global-batch", "8",
                "--tp", "8", "--pp", "1", "--mbs", "1", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["estimate"]["fits"] is False


def test_explain_names_binding_and_alternatives(tmp_path, capsys):
    plan = tmp_path / "p.json"
    assert run(["search", "--model", "gpt3-1.7b", "--cluster", "dgx-a100-80g", "--gpus", "32", "--global-batch", "512",
                "--out", str(plan)]) == 0
    capsys.readouterr()
    assert run(["explain", str(plan)]) == 0
    text = capsys.readouterr().out
    assert "What binds" in text and "Nearest alternatives" in text and "slower" in text


def test_every_alternative_keeps_the_rules_and_one_outside_a_degree_filter_says_so(tmp_path, capsys):
    """The pp neighbour of an interleaved plan at pp 1 kept v 2 and interleaved-1f1b, which evaluate refuses ("pp=1
    has no pipeline"), and search wrote it into the plan as "faster: the plan did not come from search". Every
    alternative is now checked by the rules module on its priced configuration, a pp-1 neighbour runs 1f1b, and
    one excluded by --pp says it was the filter (a consistency fuzz of session 52: 3 of 146 alternatives)."""
    from costmodels.rules import config_violations
    from profiles.schema import Plan

    plan = tmp_path / "s.json"
    assert run(["search", "--model", "tiny-llama", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "12",
                "--stack", "megatron-core", "--top-k", "1", "--pp", "2", "--out", str(plan)]) == 0
    doc = Plan.model_validate_json(plan.read_text())
    stack = load_stack("megatron-core")
    assert doc.alternatives and all(
        not config_violations(doc.model, doc.train, 2, a.config, stack) for a in doc.alternatives)
    pp1 = [a for a in doc.alternatives if a.config.pp == 1]
    assert [(a.config.schedule, a.config.v) for a in pp1] == [("1f1b", 1)]
    assert pp1[0].delta_pct < 0 and pp1[0].reason.endswith("outside the degrees the search was limited to (pp in {2})")
    capsys.readouterr()
    evaluated = tmp_path / "e.json"
    assert run(["evaluate", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "8",
                "--tp", "1", "--pp", "2", "--mbs", "1", "--v", "2", "--schedule", "interleaved-1f1b", "--out",
                str(evaluated)]) == 0
    assert run(["explain", str(evaluated)]) == 0
    text = capsys.readouterr().out
    assert "pp=1 dp=2 mbs=1 M=4 v=1 1f1b" in text and "v=2 interleaved-1f1b" in text and "pp=1 dp=2 mbs=1 M=4 v=2" not in text


def test_a_faster_alternative_names_the_limit_that_kept_it_out_of_the_search(capsys):
    """A neighbour on a schedule outside --schedules, or at an mbs above the space's 16, said "the plan did not come
    from search over this space: re-run ppplan search", which re-running cannot change; within the 0.5 % tolerance it
    said "within the search's tolerance" (a second consistency round of session 52: 12 of 83 --schedules cases)."""
    def reasons(argv: list[str]) -> dict[tuple, str]:
        assert run(["search", *argv, "--top-k", "1", "--json"]) == 0
        alts = json.loads(capsys.readouterr().out)[0]["alternatives"]
        return {(a["config"]["pp"], a["config"]["schedule"], a["config"]["mbs"]): a["reason"] for a in alts}

    zb = reasons(["--model", "gpt3-1.7b", "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "32", "--schedules", "zb-h1"])
    assert zb[(1, "1f1b", 2)].endswith("faster: schedule '1f1b' is outside the schedules searched (--schedules zb-h1)")
    assert zb[(2, "interleaved-1f1b", 2)].startswith("0.0967% faster: schedule 'interleaved-1f1b' is outside")
    tiny = reasons(["--model", "tiny-gpt", "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "24",
                    "--schedules", "zb-h2,1f1b", "--pp", "8", "--tp", "1,8"])
    assert tiny[(8, "zb-h2", 24)] == "0.844% faster: mbs 24 is above the 16 search tries"
    assert not any("did not come from search" in r for r in (*zb.values(), *tiny.values()))


def test_a_cross_node_tp_neighbour_names_the_flag_only_where_the_search_ran_without_it() -> None:
    """A faster tp-16 neighbour on 8-GPU nodes is outside the default space ("--allow-cross-node-tp"), but inside
    a search run with that flag, which the alternatives used not to be told."""
    from types import SimpleNamespace

    from planner.search.explain import _outside_space

    cfg = ParallelConfig(tp=16, pp=1, dp=1, mbs=1, num_microbatches=8, schedule="1f1b", stage_layers=[24])
    scored = SimpleNamespace(config=cfg, candidate=None)
    searcher = SimpleNamespace(cluster=load_cluster("dgx-h100"), train=TrainSpec(global_batch=8, seq_len=2048))
    assert _outside_space(scored, searcher, None, None) == "TP across nodes, which search tries only with --allow-cross-node-tp"
    assert _outside_space(scored, searcher, None, None, cross_node_tp=True) is None


def test_runners_up_that_tie_say_so_instead_of_a_negative_gap(capsys):
    """Plans are ranked by step time rounded to 12 digits: a runner-up read "-1.1e-14% slower than #1"."""
    assert run(["search", "--model", "tiny-gpt", "--cluster", "cpu-local", "--gpus", "2", "--global-batch", "24",
                "--stack", "megatron-core", "--top-k", "3", "--tp", "1", "--json"]) == 0
    lines = [plan["rationale"][0] for plan in json.loads(capsys.readouterr().out)[1:]]
    assert lines == [f"#{k} of the search: ties with #1 on step time" for k in (2, 3)]


def test_the_returned_cut_is_refined_past_the_min_max_cut(capsys):
    """tiny-gpt on 12 A100s, zb-h1 over 6 stages: the space's cuts are the uniform [2, 2, 1, 1, 1, 1] and the min-max
    [1, 1, 2, 2, 1, 1] (one slowest stage of two layers either way); the simulator prices [1, 2, 2, 1, 1, 1], one
    layer moved from stage 0 to stage 2, 1.9 % faster (a brute force of session 52). The search returns it, and
    evaluate reproduces both prices."""
    job = ["--model", "tiny-gpt", "--cluster", "eleuther-a100-40g", "--gpus", "12", "--global-batch", "24"]
    assert run(["search", *job, "--top-k", "1", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)[0]
    cfg = plan["config"]
    assert (cfg["tp"], cfg["pp"], cfg["mbs"], cfg["schedule"], cfg["stage_layers"]) == (1, 6, 3, "zb-h1", [1, 2, 2, 1, 1, 1])
    steps = {}
    for cut in ("1,2,2,1,1,1", "2,2,1,1,1,1"):
        assert run(["evaluate", *job, "--tp", "1", "--pp", "6", "--mbs", "3", "--schedule", "zb-h1", "--zero", str(cfg["zero"]),
                    "--stage-layers", cut, "--json"]) == 0
        steps[cut] = json.loads(capsys.readouterr().out)["estimate"]["step_time_s"]
    assert steps["1,2,2,1,1,1"] == pytest.approx(plan["estimate"]["step_time_s"], rel=1e-9)
    assert steps["1,2,2,1,1,1"] < steps["2,2,1,1,1,1"] * (1 - 0.005)
    gain_pct = 100 * (1 - steps["1,2,2,1,1,1"] / steps["2,2,1,1,1,1"])  # 1.9 %: what the rationale says refining saved
    said = [line for line in plan["rationale"] if line.startswith("cut refined")]
    assert said == [f"cut refined by one-layer moves from the search's own cut ({steps['2,2,1,1,1,1']:#.3g} s): "
                    f"{gain_pct:#.3g}% faster; an alternative below that is not a runner-up is priced on the search's own cuts, "
                    "unrefined"]


def test_a_refined_runner_up_can_overtake_the_pick_whatever_k(capsys):
    """gpt3-1.7b on 16 A100-40G over zero-bubble schedules: unrefined, interleaved-zb at pp 2 v 2 ([6, 7, 7, 4]) is the
    pick; refined (each move saving over 0.5 %, the lowest time bound priced first), the v-3 runner-up wins, below the
    v-2 plan's own price, which no one-layer move improves by 0.5 %. The search ranks its default five plans whatever
    k, so ``--top-k 1`` returns the default search's pick (it used to return v 2, refining only the plan it returned),
    with the same rationale, runner-up line included."""
    job = ["--model", "gpt3-1.7b", "--cluster", "dgx-a100-40g", "--gpus", "16", "--global-batch", "32"]
    picks = []
    for k in ("1", "5"):
        assert run(["search", *job, "--top-k", k, "--schedules", "zbv,zb-h2,interleaved-zb", "--pp", "2,4", "--json"]) == 0
        plans = json.loads(capsys.readouterr().out)
        assert len(plans) == int(k)
        picks.append(plans[0])
    assert picks[0] == picks[1]  # config, estimate, rationale (its runner-up line too) and alternatives
    pick = picks[0]["config"]
    assert (pick["pp"], pick["v"], pick["schedule"], pick["stage_layers"]) == (2, 3, "interleaved-zb", [3, 5, 5, 5, 5, 1])
    assert run(["evaluate", *job, "--tp", "1", "--pp", "2", "--v", "2", "--mbs", "2", "--schedule", "interleaved-zb",
                "--zero", str(pick["zero"]), "--stage-layers", "6,7,7,4", "--json"]) == 0
    v2_step_s = json.loads(capsys.readouterr().out)["estimate"]["step_time_s"]
    assert picks[0]["estimate"]["step_time_s"] < v2_step_s * (1 - 0.005)


def test_the_refinement_prices_the_lowest_bound_first(capsys):
    """llama3-8b at seq 4096 on 16 H200, interleaved-zb at pp 8 v 2: scanning the moves nearest first, the budget of 48
    prices stopped at [2, 2, 2, 2, 2, 2, 3, 2, 2, 3, 2, 2, 2, 3, 1, 0]; pricing each round's moves lowest time bound
    first, it goes on to a cut over 3 % faster (evaluate's prices of both cuts)."""
    job = ["--model", "llama3-8b", "--cluster", "dgx-h200", "--gpus", "16", "--global-batch", "32", "--seq-len", "4096"]
    assert run(["search", *job, "--top-k", "1", "--schedules", "zbv,interleaved-zb,1f1b", "--pp", "8,16", "--tp", "1,2",
                "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)[0]
    cfg = plan["config"]
    assert (cfg["tp"], cfg["pp"], cfg["v"], cfg["mbs"], cfg["schedule"]) == (1, 8, 2, 1, "interleaved-zb")
    steps = {}
    for cut in (cfg["stage_layers"], [2, 2, 2, 2, 2, 2, 3, 2, 2, 3, 2, 2, 2, 3, 1, 0]):
        assert run(["evaluate", *job, "--tp", "1", "--pp", "8", "--v", "2", "--mbs", "1", "--schedule", "interleaved-zb",
                    "--zero", str(cfg["zero"]), "--stage-layers", ",".join(map(str, cut)), "--json"]) == 0
        steps[tuple(cut)] = json.loads(capsys.readouterr().out)["estimate"]["step_time_s"]
    refined, scanned = steps.values()
    assert refined == pytest.approx(plan["estimate"]["step_time_s"], rel=1e-9)
    assert refined < scanned * (1 - 0.03)


def test_a_rank_memory_line_caps_layers_under_both_the_backward_and_the_step_peak() -> None:
    """Hand numbers: the backward's peak 10 + 2 GiB per layer (+ 1 per in-flight microbatch), the step's
    4 + 5 per layer; under 40 GiB with 2 in flight the backward allows 14 layers, the step 7."""
    from planner.search.branch_and_bound import RankMemoryLine

    line = RankMemoryLine(base=10.0, per_layer=2.0, per_stage=1.0, per_stage_layer=0.0, step_base=4.0, step_per_layer=5.0)
    assert max(at_zero + slope * 7 for at_zero, slope in line.pieces(1, 2)) == max(10 + 14 + 2, 4 + 35) == 39
    assert line.cap(1, 2, 40.0, 96) == 7
    assert line.cap(1, 2, 13.0, 96) == 0  # one layer is too many for the backward (12 + 2 > 13), none fits
    assert line.cap(1, 2, 8.0, 96) == -1  # not even none: the backward's 12 GiB at no layer
    assert RankMemoryLine(10.0, 2.0, 1.0, 0.0).cap(1, 2, 40.0, 96) == 14  # no step temporaries: the backward caps


@pytest.mark.parametrize("stack", ["megatron-lm-2021", "megatron-core"])
def test_the_peak_is_the_larger_of_the_backward_and_the_step_that_the_search_caps_with(stack: str) -> None:
    """gpt3-1.7b in fp16 on 2 A100s (pp 2, full recompute: few activations, the fp32 gradient copy binds)
    and with no recompute at 8 in flight (the activations bind): every rank's estimated peak is the
    larger of the two pieces ``uniform_rank_memory`` gives the search."""
    from costmodels.rank_memory import uniform_rank_memory

    model, cluster = load_model("gpt3-1.7b"), load_cluster("dgx-a100-80g")
    train = TrainSpec(global_batch=8, seq_len=2048, precision="fp16")
    binds = set()
    for recompute in ("full", "none"):
        cfg = ParallelConfig(stack=stack, tp=1, pp=2, dp=1, mbs=1, num_microbatches=8, schedule="1f1b",
                             recompute=recompute, stage_layers=[12, 12])
        est = estimate(model, cluster, train, cfg, stack=load_stack(stack))
        for rank, inflight in ((0, 2), (1, 1)):
            pieces = [uniform_rank_memory(model, cluster, train, cfg, rank, 12, stack=load_stack(stack))(inflight, part)
                      for part in ("backward", "step")]
            assert est.peak_memory_gib[rank] == pytest.approx(max(pieces), abs=1e-3)
            binds.add(pieces.index(max(pieces)))
    assert binds == {0, 1}  # each piece binds somewhere


def test_a_slower_neighbour_names_both_terms_when_two_large_moves_nearly_cancel() -> None:
    """The explained reason compares the two plans' critical ranks: when one term rises by 9 s and others
    fall by nearly as much (DeepSeek-V3's pp 32 against pp 16), the falls are named too (the three
    largest; a fall under a twentieth of the rise is not); a single rise keeps the short form."""
    from planner.search.explain import _why_slower

    model, cluster = load_model("gpt3-1.7b"), load_cluster("dgx-a100-80g")
    cfg = ParallelConfig(tp=1, pp=1, dp=8, mbs=1, num_microbatches=1, schedule="1f1b", stage_layers=[24])
    win = estimate(model, cluster, TrainSpec(global_batch=8, seq_len=2048), cfg, stack=load_stack())

    def moved(**deltas: float):
        parts = {k: getattr(win.breakdown, k) + v for k, v in deltas.items()}
        return win.model_copy(update={"breakdown": win.breakdown.model_copy(update=parts)})

    both = _why_slower(win, moved(bubble_s=9.11, compute_s=-8.85), 0.82, cfg, None)
    assert both == "0.820% slower: bubble +9.11 s against compute efficiency -8.85 s"
    one = _why_slower(win, moved(bubble_s=2.0, compute_s=-0.5), 5.0, cfg, None)
    assert one == "5.00% slower, mostly bubble (+2.00 s)"
    spread = _why_slower(win, moved(bubble_s=9.16, compute_s=-4.13, ep_comm_s=-2.71, recompute_s=-1.71, dp_comm_s=-0.34),
                         0.823, cfg, None)  # DeepSeek-V3's figures: the fall is spread over four terms
    assert spread == ("0.823% slower: bubble +9.16 s against compute efficiency -4.13 s, expert all-to-all -2.71 s, "
                      "recomputation -1.71 s")


def test_a_slower_neighbour_is_never_explained_by_rounding_noise() -> None:
    """Mixtral-8x7B on 64 H100 (megatron-core): v 5 against v 4 is 0.358 % slower through pipeline
    p2p alone, which the reason once left out, naming 1e-15 s differences instead. Every breakdown
    term is compared now, and a gap that no term carries says so."""
    from planner.search.explain import _why_slower

    model, cluster = load_model("gpt3-1.7b"), load_cluster("dgx-a100-80g")
    cfg = ParallelConfig(tp=1, pp=1, dp=8, mbs=1, num_microbatches=1, schedule="1f1b", stage_layers=[24])
    win = estimate(model, cluster, TrainSpec(global_batch=8, seq_len=2048), cfg, stack=load_stack())

    def moved(step_s: float, **deltas: float):
        parts = {k: getattr(win.breakdown, k) + v for k, v in deltas.items()}
        return win.model_copy(update={"breakdown": win.breakdown.model_copy(update=parts),
                                      "step_time_s": win.step_time_s + step_s})

    p2p = _why_slower(win, moved(0.0111, pp_comm_s=0.0111, compute_s=-2.2e-15), 0.358, cfg, None)
    assert p2p == "0.358% slower, mostly pipeline p2p (+0.0111 s)"
    unexplained = _why_slower(win, moved(0.05, bubble_s=0.004, compute_s=-1e-15), 1.5, cfg, None)
    assert unexplained == ("1.50% slower (+0.0500 s): no term of the critical rank's breakdown rises by more than "
                           "0.00400 s; the gap comes from how the ranks' work overlaps")


def test_a_rank_of_end_stages_that_fits_no_layer_may_still_hold_the_embedding_or_the_head_alone() -> None:
    """pp 3: the end ranks' memory lines allow no layer but fit with none (cap 0), the middle rank's ten
    (capped at the model's 8): the caps keep the candidate, and the min-max cut puts every layer on the middle stage."""
    from planner.search.branch_and_bound import RankMemoryLine, Searcher
    from planner.search.space import Candidate

    model, cluster = load_model("tiny-gpt"), load_cluster("cpu-local")
    searcher = Searcher(model, cluster, TrainSpec(global_batch=8, seq_len=128, precision="fp32"), 3)
    limit = searcher.limit_gib
    end = RankMemoryLine(base=limit - 0.5, per_layer=1.0, per_stage=0.0, per_stage_layer=0.0)  # 0 layers fit, 1 does not
    middle = RankMemoryLine(base=0.0, per_layer=limit / 10.5, per_stage=0.0, per_stage_layer=0.0)  # 10 layers fit
    searcher._memory_line = lambda c, kind: end if any(kind) else middle  # type: ignore[method-assign]
    c = Candidate(tp=1, cp=1, ep=1, etp=1, pp=3, dp=1, mbs=1, v=1, schedule="1f1b", recompute="none",
                  sequence_parallel=False, zero=0, num_microbatches=8)
    assert searcher.layer_caps(c) == [0, 8, 0]
    assert searcher.min_max_cut(c) == [0, 8, 0]
    # a rank holding a middle stage must fit a layer: one layer too many there drops the candidate
    searcher._memory_line = lambda c, kind: end  # type: ignore[method-assign]
    assert searcher.layer_caps(c) is None


def test_a_rank_of_several_stages_is_also_capped_with_its_end_stage_extras_charged_once() -> None:
    """BLOOM-176B on 384 A100 (tp 8 sp, pp 12, v 2, dualpipev, mbs 1, M 512): rank 0 holds the first and the last
    stage. Its memory line charges the head's per-microbatch extras (250k-vocabulary logits) on every
    stage-microbatch in flight, so those caps rule out even one layer a stage, though the uniform cut fits.
    Charged once, the caps admit the min-max cut that gives the head's stage one layer: it fits and is over 10 %
    faster than the uniform cut (72.1 against 83.7 s at this commit), and the search weighs it. (At mbs 2, the
    case this test had before ppplan's runtime was priced with its sequence-parallel gathered inputs, no cut
    fits.)"""
    from planner.search.branch_and_bound import Searcher
    from planner.search.space import Candidate

    model, cluster = load_model("bloom-176b"), load_cluster("dgx-a100-80g")
    searcher = Searcher(model, cluster, TrainSpec(global_batch=2048, seq_len=2048), 384)
    c = Candidate(tp=8, cp=1, ep=1, etp=8, pp=12, dp=4, mbs=1, v=2, schedule="dualpipev", recompute="none",
                  sequence_parallel=True, zero=1, num_microbatches=512)
    assert searcher.layer_caps(c) is None
    # the line of the rank of both end stages, with the extras charged once: a middle rank's per-microbatch term,
    # and the end stages' excess over it added to the base once
    end, middle = searcher._memory_line(c, (True, True)), searcher._memory_line(c, (False, False))
    once = searcher._extras_once(c, end)
    assert end.per_stage > middle.per_stage
    assert once.per_stage == middle.per_stage and once.base == pytest.approx(end.base + end.per_stage - middle.per_stage)
    assert (once.per_layer, once.per_stage_layer, once.step_base) == (end.per_layer, end.per_stage_layer, end.step_base)
    # at this commit: 5 layers a stage on the rank of the end stages (its extras once), 6 on the others
    assert searcher.layer_caps(c, extras_once=True) == [5] + [6] * 22 + [5]
    cuts = searcher.cuts(c)
    assert cuts[0] == searcher.default_cut(c) and len(cuts) == 2
    uniform, balanced = (searcher.score(c, cut).estimate for cut in cuts)
    assert cuts[1][-1] == 1 and sum(cuts[1]) == model.num_layers
    assert uniform.fits and balanced.fits
    assert balanced.step_time_s < 0.9 * uniform.step_time_s
