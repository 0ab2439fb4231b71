"""``planner.search.space``: the enumerated space with cp and ep, checked against the runtime rules
(``costmodels.rules``) and counted by hand."""

from __future__ import annotations

import pytest

from costmodels.layout import default_split
from costmodels.rules import config_violations
from planner.search.branch_and_bound import config_for
from planner.search.space import CP_MICRO_BATCH, MIN_CP_CHUNK, cp_degrees, enumerate_candidates, ep_degrees
from profiles.loader import load_model, load_stack
from profiles.schema import TrainSpec


@pytest.mark.parametrize(("model", "stack", "gpus", "seq"), [
    ("tiny-moe", "ppplan-torch", 8, 128),
    ("tiny-moe", "megatron-core", 8, 512),
    ("tiny-moe", "torchtitan", 8, 1024),
    ("tiny-llama", "torchtitan", 8, 2048),
    ("tiny-llama", "megatron-core", 16, 1024),
])
def test_every_candidate_keeps_the_stacks_rules(model: str, stack: str, gpus: int, seq: int) -> None:
    m, s = load_model(model), load_stack(stack)
    train = TrainSpec(global_batch=16, seq_len=seq, precision="bf16")
    cands = list(enumerate_candidates(m, train, gpus, 8, stack=s))
    assert cands
    for c in cands:
        cfg = config_for(c, default_split(m.num_layers, c.pp * c.v), s.name)
        assert not config_violations(m, train, gpus, cfg, s), c.label()
        assert c.cp == 1 or c.mbs == CP_MICRO_BATCH
    assert any(c.ep > 1 for c in cands) == m.is_moe
    assert any(c.cp > 1 for c in cands) == (seq >= 4 * MIN_CP_CHUNK)


def test_cp_degrees_by_hand() -> None:
    """seq 1024 on 16 ranks after tp = 2: divisors 1, 2, 4, 8, 16 with chunks 1024/(2cp) >= 128: 1, 2, 4.
    torchtitan also needs 2·cp·tp | seq: seq 1056 with tp = 8 keeps cp 2 (32 | 1056) but not cp 4
    (64 does not divide 1056), which Megatron-Core keeps (8 | 1056, chunks of 132). A profile: the degrees it timed."""
    train = TrainSpec(global_batch=8, seq_len=1024)
    assert cp_degrees(train, 16, 2, load_stack("megatron-core")) == [1, 2, 4]
    assert cp_degrees(train, 16, 2, load_stack("torchtitan")) == [1, 2, 4]
    odd = TrainSpec(global_batch=8, seq_len=1056)
    assert cp_degrees(odd, 16, 8, load_stack("torchtitan")) == [1, 2]
    assert cp_degrees(odd, 16, 8, load_stack("megatron-core")) == [1, 2, 4]
    assert cp_degrees(train, 16, 2, load_stack("megatron-lm-2021")) == [1]
    assert cp_degrees(train, 16, 2, load_stack("megatron-core"), frozenset({1})) == [1]
    assert cp_degrees(train, 16, 2, load_stack("megatron-core"), frozenset({1, 2})) == [1, 2]


def test_ep_degrees_by_hand() -> None:
    """8 experts on 12 dp x cp ranks: 1, 2, 4 (8 does not divide 12); Megatron-Core refuses EP in fp16."""
    moe = load_model("tiny-moe")
    bf16, fp16 = TrainSpec(global_batch=8, seq_len=128), TrainSpec(global_batch=8, seq_len=128, precision="fp16")
    assert ep_degrees(moe, bf16, 12, load_stack("megatron-core")) == [1, 2, 4]
    assert ep_degrees(moe, fp16, 12, load_stack("megatron-core")) == [1]
    assert ep_degrees(load_model("tiny-llama"), bf16, 12, load_stack("megatron-core")) == [1]
