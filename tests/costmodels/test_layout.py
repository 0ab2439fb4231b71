"""Stage layouts with the embedding or the head alone on an end stage (Megatron-LM's
account-for-embedding / account-for-loss split): the splits, their shape, and the plan's rule."""

import pytest
from pydantic import ValidationError

from costmodels.layout import (
    EndSlots,
    default_split,
    end_slot_split,
    end_slots_of,
    end_stage_floors,
    layouts_of,
    min_layers_for,
)
from profiles.schema import ParallelConfig


def test_llama_405b_on_128_stages_gives_the_ends_to_the_embedding_and_the_loss():
    # 126 layers + embedding + loss = 128 slots on pp 16 x v 8 (NeMo's 405B recipes)
    split = end_slot_split(126, 128)
    assert split == [0] + [1] * 126 + [0]
    assert end_slots_of(split) == EndSlots(1, embedding=True, loss=True)
    # pp 8 x v 8: two slots a stage, the end stages keep one layer
    assert end_slot_split(126, 64) == [1] + [2] * 62 + [1]


def test_end_slot_split_needs_the_slots_to_divide():
    assert end_slot_split(22, 24) == [0] + [1] * 22 + [0]  # the zero-bubble paper's 1.5B model, 1F1B-I
    assert end_slot_split(23, 24) is None
    assert end_slot_split(8, 1) is None
    assert end_slot_split(7, 8, embedding=False) == [1] * 7 + [0]


def test_end_slots_of_reads_one_or_both_ends():
    assert end_slots_of([2, 3, 3, 2]) == EndSlots(3, True, True)
    assert end_slots_of([3, 3, 3, 2]) == EndSlots(3, False, True)
    assert end_slots_of([0, 1]) == EndSlots(1, True, False)
    assert end_slots_of([3, 3, 3, 3]) is None  # nothing accounted: the plain uniform split
    assert end_slots_of([1, 3, 3, 1]) is None  # two fewer at each end: first/last counts, not slots
    assert end_slots_of([2, 3, 2, 2]) is None
    assert end_slots_of([4]) is None


def test_default_split_fills_the_stages_first_then_the_ends():
    assert default_split(10, 4) == [3, 3, 2, 2]
    assert default_split(7, 8) == [1] * 7 + [0]  # one short: the head alone on the last stage
    assert default_split(6, 8) == [0] + [1] * 6 + [0]  # two short: embedding and head alone
    assert default_split(5, 8) is None
    assert [min_layers_for(s) for s in (1, 2, 3, 8)] == [1, 1, 1, 6]
    assert end_stage_floors(1) == [1] and end_stage_floors(4) == [0, 1, 1, 0]


def test_an_empty_end_stage_still_holds_the_embedding_or_the_head():
    layouts = layouts_of([0, 1, 1, 1, 1, 0], pp=2, v=3, schedule="interleaved-1f1b")
    assert (layouts[0].num_layers, layouts[0].has_embedding, layouts[0].pipeline_rank) == (0, True, 0)
    assert (layouts[-1].num_layers, layouts[-1].has_head, layouts[-1].pipeline_rank) == (0, True, 1)
    assert [x.first_layer for x in layouts] == [0, 0, 1, 2, 3, 4]


def _config(stage_layers: list[int], pp: int, v: int) -> ParallelConfig:
    return ParallelConfig(tp=1, pp=pp, dp=1, v=v, mbs=1, num_microbatches=4, schedule="interleaved-1f1b" if v > 1 else "1f1b",
                          stage_layers=stage_layers)


def test_only_end_stages_may_be_empty():
    assert _config([0, 2, 2, 0], 2, 2).stage_layers == [0, 2, 2, 0]
    with pytest.raises(ValidationError, match="only the first stage"):
        _config([1, 0, 2, 1], 2, 2)
    with pytest.raises(ValidationError, match="only the first stage"):
        _config([0], 1, 1)
    with pytest.raises(ValidationError):
        _config([-1, 3, 3, 2], 2, 2)
