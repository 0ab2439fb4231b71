"""Our generated per-rank compute order equals the order torch 2.13 executes.

Multi-stage schedules (``_PipelineScheduleRuntime`` subclasses) execute their
``pipeline_order``, which the constructor builds for every rank; it reads only
``num_stages``, ``group_size``, ``group_rank`` and ``submod`` from the stages,
so stand-in stages replace a process group. Idle slots (``None``) and
``REDUCE_GRAD`` markers are dropped, DualPipeV's ``OVERLAP_F_B`` pairs are
flattened into the two sub-actions the runtime runs in order.

Single-stage schedules (GPipe, 1F1B) execute ``_step_microbatches`` and never
read their ``pipeline_order`` IR (which for 1F1B is wrong on the last rank in
torch 2.13: it starts at microbatch 1 and names microbatch M); we run
``_step_microbatches`` per rank on a recording stage with no-op p2p instead.
The whole grid runs in seconds on CPU.
"""

from __future__ import annotations

import logging

import pytest

from costmodels.schedules.actions import Action
from costmodels.schedules.generate import generate_schedule
from costmodels.schedules.registry import shape_violations

schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
utils = pytest.importorskip("torch.distributed.pipelining._utils")

TORCH_KIND = {"F": "F", "I": "B", "W": "W", "B": "BW"}
TORCH_CLASS = {
    "gpipe": ("ScheduleGPipe", "loop"),
    "1f1b": ("Schedule1F1B", "loop"),
    "interleaved-1f1b": ("ScheduleInterleaved1F1B", "loop"),
    "looped-bfs": ("ScheduleLoopedBFS", "loop"),
    "interleaved-zb": ("ScheduleInterleavedZeroBubble", "loop"),
    "zbv": ("ScheduleZBVZeroBubble", "v"),
    "dualpipev": ("ScheduleDualPipeV", "v"),
}


class StandInStage:
    """The attributes torch's schedule constructors read from a pipeline stage."""

    def __init__(self, stage_index: int, num_stages: int, pp: int, rank: int) -> None:
        self.stage_index = stage_index
        self.num_stages = num_stages
        self.group_size = pp
        self.group_rank = rank
        self.submod = None
        self.is_first = stage_index == 0
        self.is_last = stage_index == num_stages - 1


class RecordingStage(StandInStage):
    """A single-stage stand-in whose compute calls are recorded and whose p2p ops are empty."""

    def __init__(self, stage_index: int, num_stages: int) -> None:
        super().__init__(stage_index, num_stages, num_stages, stage_index)
        self.calls: list[Action] = []

    def forward_one_chunk(self, mb: int, *args: object, **kwargs: object) -> None:
        self.calls.append(Action("F", mb, self.stage_index))

    def backward_one_chunk(self, mb: int, loss: object = None, full_backward: bool = True, **kwargs: object) -> None:
        self.calls.append(Action("BW" if full_backward else "B", mb, self.stage_index))

    def no_ops(self, *args: object, **kwargs: object) -> list:
        return []

    get_fwd_recv_ops = get_fwd_send_ops = get_bwd_recv_ops = get_bwd_send_ops = no_ops
    perform_reduce_grad = no_ops


def executed_single_stage_order(name: str, pp: int, m: int) -> list[list[Action]]:
    cls = getattr(schedules, TORCH_CLASS[name][0])
    orders = []
    for rank in range(pp):
        stage = RecordingStage(rank, pp)
        obj = cls(stage, m)
        obj._initialize_stage = lambda *args, **kwargs: None
        obj._step_microbatches()
        orders.append(stage.calls)
    return orders


def torch_order(name: str, pp: int, v: int, m: int) -> list[list[Action]]:
    class_name, style = TORCH_CLASS[name]
    cls = getattr(schedules, class_name)
    if name in ("gpipe", "1f1b"):
        return executed_single_stage_order(name, pp, m)
    local = utils.generate_rank_to_stage_mapping(pp, pp * v, style)[0]
    stages = [StandInStage(s, pp * v, pp, 0) for s in local]
    logging.disable(logging.WARNING)
    try:
        obj = cls(stages[0], m) if v == 1 else cls(stages, m)
    finally:
        logging.disable(logging.NOTSET)
    return [_flatten(obj.pipeline_order[r]) for r in range(pp)]


def _flatten(row: list) -> list[Action]:
    out: list[Action] = []
    for action in row:
        if action is None:
            continue
        parts = action.sub_actions if action.sub_actions is not None else (action,)
        for part in parts:
            kind = TORCH_KIND.get(part.computation_type.value)
            if kind is not None:
                out.append(Action(kind, part.microbatch_index, part.stage_index))
    return out


def grid() -> list[tuple[str, int, int, int]]:
    cases = []
    for name in TORCH_CLASS:
        vs = (1,) if name in ("gpipe", "1f1b") else (2,) if name in ("zbv", "dualpipev") else (2, 3)
        for pp in (2, 3, 4, 6):
            for v in vs:
                for m in sorted({1, 2, pp - 1, pp, pp + 1, 2 * pp, 2 * pp + 2, 3 * pp, 4 * pp} - {0}):
                    if not shape_violations(name, pp, v, m):
                        cases.append((name, pp, v, m))
    return cases


@pytest.mark.parametrize(("name", "pp", "v", "m"), grid())
def test_compute_order_matches_torch(name: str, pp: int, v: int, m: int) -> None:
    ours = generate_schedule(name, pp, v, m)
    expected = torch_order(name, pp, v, m)
    for rank in range(pp):
        assert list(ours.ranks[rank]) == expected[rank], f"{name} pp={pp} v={v} M={m} rank {rank}"


@pytest.mark.parametrize(
    ("name", "pp", "v", "m"),
    [("1f1b", 4, 1, 3), ("interleaved-1f1b", 4, 2, 9), ("interleaved-zb", 3, 2, 7), ("dualpipev", 3, 2, 5)],
)
def test_torch_rejects_what_our_rules_reject(name: str, pp: int, v: int, m: int) -> None:
    assert shape_violations(name, pp, v, m)
    with pytest.raises(ValueError):
        torch_order(name, pp, v, m)


@pytest.mark.parametrize(("name", "pp", "v", "m"), [("looped-bfs", 4, 2, 9), ("zbv", 4, 2, 3), ("gpipe", 4, 1, 2)])
def test_torch_accepts_what_our_rules_accept(name: str, pp: int, v: int, m: int) -> None:
    assert not shape_violations(name, pp, v, m)
    assert len(torch_order(name, pp, v, m)) == pp
