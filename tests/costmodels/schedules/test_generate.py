"""Schedule generators: structure, runtime rules, hand-checked orders, and the torch CSV format."""

from __future__ import annotations

import logging

import pytest

from costmodels.rules import schedule_violations
from costmodels.schedules.actions import Action, Schedule, stage_ranks, structure_problems
from costmodels.schedules.chimera import chimera_rank_of
from costmodels.schedules.generate import generate_schedule
from costmodels.schedules.registry import GENERATED_SCHEDULES, SCHEDULES, SPLIT_BACKWARD_SCHEDULES, shape_violations
from costmodels.schedules.torch_csv import format_torch_csv, parse_torch_csv
from costmodels.schedules.torch_order import combined_paired_share
from costmodels.simulator import schedule_graph
from profiles.errors import PlanError
from profiles.loader import load_stack

V_OF = {"interleaved-1f1b": 2, "combined-1f1b": 2, "looped-bfs": 2, "interleaved-zb": 2, "zbv": 2, "dualpipev": 2}
RUNNABLE = [n for n in GENERATED_SCHEDULES if n != "chimera"]


def shapes() -> list[tuple[str, int, int, int]]:
    return [(n, pp, V_OF.get(n, 1), m) for n in GENERATED_SCHEDULES for pp in (2, 3, 4, 8) for m in (1, pp, 2 * pp + 1, 4 * pp)
            if not shape_violations(n, pp, V_OF.get(n, 1), m)]


@pytest.mark.parametrize(("name", "pp", "v", "m"), shapes())
def test_every_pass_runs_once_on_the_rank_holding_its_stage(name: str, pp: int, v: int, m: int) -> None:
    schedule = generate_schedule(name, pp, v, m)
    assert structure_problems(schedule) is None
    counts = {}
    for actions in schedule.ranks:
        for a in actions:
            counts[a.kind] = counts.get(a.kind, 0) + 1
    assert counts["F"] == pp * v * m
    assert counts.get("BW", 0) + counts.get("B", 0) == pp * v * m
    assert counts.get("B", 0) == counts.get("W", 0)
    if name in SPLIT_BACKWARD_SCHEDULES - {"dualpipev"}:
        assert "BW" not in counts
    if name in ("gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "chimera"):
        assert "B" not in counts
    owners = stage_ranks(schedule)
    for stage, ranks in owners.items():
        if name == "chimera":
            expected = {stage, pp - 1 - stage} if m > 1 else {stage}  # one microbatch never goes up
        elif name in ("zbv", "dualpipev"):
            expected = {min(stage, 2 * pp - 1 - stage)}
        else:
            expected = {stage % pp}
        assert ranks == expected


def test_1f1b_order_is_warmup_then_alternate_then_drain() -> None:
    s = generate_schedule("1f1b", 3, 1, 4)
    assert [str(a) for a in s.ranks[0]] == ["F0@0", "F1@0", "F2@0", "BW0@0", "F3@0", "BW1@0", "BW2@0", "BW3@0"]
    assert [str(a) for a in s.ranks[2]] == ["F0@2", "BW0@2", "F1@2", "BW1@2", "F2@2", "BW2@2", "F3@2", "BW3@2"]


def test_zb_h1_rank_lags_its_weight_passes_by_its_index() -> None:
    s = generate_schedule("zb-h1", 3, 1, 4)
    assert [str(a) for a in s.ranks[0]] == ["F0@0", "F1@0", "F2@0", "B0@0", "W0@0", "F3@0", "B1@0", "W1@0",
                                            "B2@0", "W2@0", "B3@0", "W3@0"]
    assert [str(a) for a in s.ranks[2]] == ["F0@2", "B0@2", "F1@2", "B1@2", "F2@2", "B2@2", "W0@2", "F3@2",
                                            "B3@2", "W1@2", "W2@2", "W3@2"]


def test_chimera_sends_even_microbatches_down_and_odd_ones_up() -> None:
    pp = 4
    s = generate_schedule("chimera", pp, 1, 8)
    for rank, actions in enumerate(s.ranks):
        for a in actions:
            assert rank == chimera_rank_of(a.stage, a.microbatch, pp)
            assert rank == (a.stage if a.microbatch % 2 == 0 else pp - 1 - a.stage)


@pytest.mark.parametrize(
    ("name", "pp", "v", "m", "fix"),
    [
        ("interleaved-1f1b", 4, 2, 9, "multiple of max(1, M // pp) = 2"),
        ("interleaved-zb", 4, 2, 9, "multiple of"),
        ("1f1b", 4, 1, 3, "at least pp=4 microbatches"),
        ("dualpipev", 4, 2, 7, "at least 2*pp=8"),
        ("zbv", 4, 3, 8, "use --v 2"),
        ("1f1b", 4, 2, 8, "use --v 1"),
        ("interleaved-1f1b", 4, 1, 8, "v >= 2"),
        ("chimera", 4, 2, 8, "use --v 1"),
    ],
)
def test_shapes_the_runtime_rejects_raise_plan_error_saying_how_to_fix(name: str, pp: int, v: int, m: int, fix: str) -> None:
    with pytest.raises(PlanError, match=fix.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        generate_schedule(name, pp, v, m)


@pytest.mark.parametrize(("name", "pp", "v", "m"), [("looped-bfs", 4, 2, 9), ("zbv", 4, 2, 3), ("zb-h1", 4, 1, 2), ("zb-h2", 8, 1, 5), ("gpipe", 4, 1, 1)])
def test_shapes_the_runtime_accepts_are_generated(name: str, pp: int, v: int, m: int) -> None:
    assert not schedule_violations(name, pp, v, m, load_stack("ppplan-torch"))
    assert generate_schedule(name, pp, v, m).num_microbatches == m


def test_unknown_and_custom_names_are_plan_errors() -> None:
    with pytest.raises(PlanError, match="unknown schedule 'zb-h3'"):
        generate_schedule("zb-h3", 4, 1, 8)
    with pytest.raises(PlanError, match="parse_torch_csv"):
        generate_schedule("custom", 4, 1, 8)


def test_chimera_is_simulated_only() -> None:
    assert any("simulated only" in p for p in schedule_violations("chimera", 4, 1, 8, load_stack("ppplan-torch")))
    with pytest.raises(PlanError, match="no torch runtime"):
        format_torch_csv(generate_schedule("chimera", 4, 1, 8))


@pytest.mark.parametrize("name", RUNNABLE)
def test_csv_round_trip(name: str) -> None:
    pp, m = 4, 8
    schedule = generate_schedule(name, pp, V_OF.get(name, 1), m)
    text = format_torch_csv(schedule)
    assert len(text.splitlines()) == pp
    assert parse_torch_csv(text, name=name) == schedule


def test_csv_cells_use_torch_kind_letters() -> None:
    text = format_torch_csv(generate_schedule("zb-h1", 2, 1, 2))
    assert text.splitlines()[1] == "1F0,1I0,1F1,1I1,1W0,1W1"
    assert format_torch_csv(generate_schedule("1f1b", 2, 1, 2)).splitlines()[0] == "0F0,0F1,0B0,0B1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("0F0,0X0\n", "'0X0' is not a compute action"),
        ("0F0,1F0,1B0,0B0\n1F0,1B0\n", "stage 1 on ranks"),
        ("0F0,0I0\n1F0,1B0\n", "needs one BW, or one B and one W"),
        ("0B0,0F0\n", "runs before its forward"),
    ],
)
def test_bad_csv_is_a_plan_error(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        parse_torch_csv(text)


def test_csv_parses_overlap_cells_and_idle_slots() -> None:
    text = "0F0,,0F1,(0B0;0F2)OVERLAP_F_B,0B1,0B2\n"
    schedule = parse_torch_csv(text.replace("(0B0;0F2)", "(0F2;0B0)"))
    assert [str(a) for a in schedule.ranks[0]] == ["F0@0", "F1@0", "F2@0", "BW0@0", "BW1@0", "BW2@0"]


class StandInStage:
    def __init__(self, stage_index: int, num_stages: int, pp: int, rank: int) -> None:
        self.stage_index, self.num_stages, self.group_size, self.group_rank = stage_index, num_stages, pp, rank
        self.submod = None


@pytest.mark.parametrize(("name", "pp", "m"), [("zb-h1", 4, 8), ("zb-h2", 4, 8), ("zb-h2", 3, 2), ("zbv", 3, 6),
                                                ("interleaved-zb", 2, 4), ("dualpipev", 2, 4), ("1f1b", 3, 5)])
def test_torch_load_csv_accepts_ours(name: str, pp: int, m: int, tmp_path) -> None:
    schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
    schedule = generate_schedule(name, pp, V_OF.get(name, 1), m)
    path = tmp_path / "schedule.csv"
    path.write_text(format_torch_csv(schedule))
    local = [s for s, owners in sorted(stage_ranks(schedule).items()) if owners == {0}]
    stages = [StandInStage(s, schedule.num_stages, pp, 0) for s in local]
    logging.disable(logging.WARNING)
    try:
        runtime = schedules._PipelineScheduleRuntime(stages, m)
        runtime._load_csv(str(path))  # validates counts/order and lowers to send/recv (no deadlock)
    finally:
        logging.disable(logging.NOTSET)
    loaded = [[Action({"F": "F", "I": "B", "W": "W", "B": "BW"}[a.computation_type.value], a.microbatch_index, a.stage_index)
               for a in runtime.pipeline_order[r]] for r in range(pp)]
    assert loaded == [list(r) for r in schedule.ranks]
    assert any(a.computation_type.value == "SEND_F" for a in runtime.pipeline_order_with_comms[0])


def test_schedules_compare_by_value_and_hash_once() -> None:
    a = generate_schedule("1f1b", 4, 1, 8)
    b = Schedule(a.name, a.pp, a.v, a.num_microbatches, tuple(tuple(r) for r in a.ranks))
    assert a == b and hash(a) == hash(b)


def _inflight_grid() -> list[tuple[str, int, int, int]]:
    shapes = []
    for name, spec in SCHEDULES.items():
        if spec.peak_inflight is None:
            continue
        vs = {"one": (1,), "two": (2,), "looped": (2, 3, 4)}[spec.stages_per_rank]
        for pp in (1, 2, 3, 4, 5, 7, 8, 12):
            for v in vs:
                for m in (*range(1, 26), 31, 32, 48, 50):
                    if (pp == 1 and name not in ("1f1b", "gpipe")) or shape_violations(name, pp, v, m):
                        continue
                    shapes.append((name, pp, v, m))
    return shapes


def test_peak_inflight_closed_forms_equal_the_generated_lists() -> None:
    """The registry's closed forms (what the search bounds memory with) count exactly what the
    simulator counts on the generated action lists, over a grid of shapes."""
    grid = _inflight_grid()
    assert len(grid) > 2500
    for name, pp, v, m in grid:
        expected = schedule_graph(generate_schedule(name, pp, v, m)).peak_inflight
        got = tuple(SCHEDULES[name].peak_inflight(r, pp, v, m) for r in range(pp))
        assert got == expected, (name, pp, v, m)


def test_combined_1f1b_runs_one_more_warm_up_forward_than_interleaved() -> None:
    """pp 2, v 2, M 4 (rounds of 2): interleaved 1F1B warms rank 0 up with (v-1)*2 + 2*(pp-1-0) = 4 forwards and
    rank 1 with 2, then alternates F and B; Megatron-Core's combined 1F1B adds one (get_pp_rank_microbatches),
    so its first backward comes one forward later and its peak holds one more microbatch-stage (6 and 4)."""
    interleaved, combined = generate_schedule("interleaved-1f1b", 2, 2, 4), generate_schedule("combined-1f1b", 2, 2, 4)

    def leading_forwards(actions: list[Action]) -> int:
        return next(i for i, a in enumerate(actions) if a.kind != "F")

    assert [leading_forwards(r) for r in interleaved.ranks] == [5, 3]
    assert [leading_forwards(r) for r in combined.ranks] == [6, 4]
    assert [sorted(map(str, r)) for r in combined.ranks] == [sorted(map(str, r)) for r in interleaved.ranks]
    assert [SCHEDULES["combined-1f1b"].peak_inflight(r, 2, 2, 4) for r in range(2)] == [6, 4]
    # rank 0's 5 warm-up forwards and 5 cool-down backwards run alone: 3 of its 8 forwards are merged
    assert combined_paired_share(2, 2, 4) == 3 / 8
    assert combined_paired_share(16, 2, 480) == (960 - (16 + 30 + 1)) / 960  # rounds of 16: 16 + 2*15 + 1 warm up
