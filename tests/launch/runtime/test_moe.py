"""The MoE feed-forward in one process: routing and combine against a per-token loop, the
dispatch permutation, expert shards equal to the full layer's, parameter count (whole, and per
expert-parallel rank as the cost model counts it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from costmodels.memory import stage_param_split
from costmodels.params import model_parameters
from launch.runtime.model import build_full_model, build_layer, build_stage_module
from launch.runtime.moe import ExpertShard, _source_to_expert_order, expert_shard_of
from profiles.loader import load_model

MOE = load_model("tiny-moe")


def test_moe_output_is_the_weighted_top2_experts_per_token() -> None:
    ff = build_layer(MOE, 0, seed=1).feed_forward
    tokens = torch.randn(6, MOE.hidden_size)
    weights, chosen = ff.router(tokens)
    assert torch.allclose(weights.sum(-1), torch.ones(6))
    expected = torch.zeros_like(tokens)
    for t in range(6):
        logits = tokens[t] @ ff.router.gate.weight.T
        assert set(chosen[t].tolist()) == set(logits.topk(2).indices.tolist())
        for slot in range(2):
            e = int(chosen[t, slot])
            hidden = F.silu(tokens[t] @ ff.experts.w1[e].T) * (tokens[t] @ ff.experts.w3[e].T)
            expected[t] += weights[t, slot] * (hidden @ ff.experts.w2[e].T)
    torch.testing.assert_close(ff(tokens.view(1, 6, -1)).view(6, -1), expected)


def test_received_rows_regroup_by_expert() -> None:
    # 2 source ranks x 2 local experts: source 0 sent 1 row to expert 0 and 2 to expert 1, source 1 sent 3 and 0
    by_expert, back = _source_to_expert_order(torch.tensor([[1, 2], [3, 0]]), torch.device("cpu"))
    assert by_expert.tolist() == [0, 3, 4, 5, 1, 2]  # expert 0: row 0 (source 0), rows 3-5 (source 1); expert 1: rows 1-2
    assert by_expert[back].tolist() == list(range(6))


def test_an_expert_shard_holds_the_full_layers_experts() -> None:
    full = build_layer(MOE, 2, seed=5).feed_forward
    assert expert_shard_of(MOE, 4, data_context_index=6) == ExpertShard(first=4, count=2)
    part = build_layer(MOE, 2, seed=5, experts=ExpertShard(first=4, count=2)).feed_forward
    assert torch.equal(part.experts.w2, full.experts.w2[4:6])
    assert torch.equal(part.router.gate.weight, full.router.gate.weight)


def test_runtime_parameter_count_is_the_cost_models() -> None:
    assert sum(p.numel() for p in build_full_model(MOE).parameters()) == model_parameters(MOE).total == 27_283_712


def test_a_ranks_parameters_under_ep_are_the_cost_models() -> None:
    """What an expert-parallel rank builds (its stage's layers with ``num_experts / ep`` experts each) is what
    ``costmodels.memory.stage_param_split`` counts for it: the routed experts apart from the rest."""
    for ep in (2, 4, 8):
        shard = ExpertShard.of_rank(MOE.num_experts, ep, 1)
        module = build_stage_module(MOE, 2, 3, True, False, seed=3, experts=shard)
        expert = sum(p.numel() for name, p in module.named_parameters() if ".experts." in name)
        total = sum(p.numel() for p in module.parameters())
        counted = stage_param_split(MOE, 2, 3, True, False, tp=1, ep=ep)
        assert (total - expert, expert) == (counted.dense, counted.expert)
