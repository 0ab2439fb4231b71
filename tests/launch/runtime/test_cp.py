"""Context parallelism pieces in one process: the load-balanced split and the blockwise causal
attention (a ring of one rank runs every block locally)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from launch.runtime.cp import ContextParallel, chunk_ids, context_positions, context_slice


def test_each_rank_holds_a_head_and_a_tail_chunk() -> None:
    assert [chunk_ids(4, r) for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]
    assert context_positions(16, 2, 0).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert context_positions(16, 2, 1).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    batch = torch.arange(32).view(2, 16)
    assert context_slice(batch, 2, 1).tolist() == [list(range(4, 12)), list(range(20, 28))]
    assert torch.equal(context_slice(batch, 1, 0), batch)


def test_causal_work_is_balanced() -> None:
    """Key-query pairs under the causal mask that each of 4 ranks computes: the same for all."""
    seq, cp = 64, 4
    work = []
    for rank in range(cp):
        q = context_positions(seq, cp, rank)
        work.append(int((torch.arange(seq)[None, :] <= q[:, None]).sum()))
    assert len(set(work)) == 1 and sum(work) == seq * (seq + 1) // 2


def test_blockwise_attention_equals_causal_sdpa_with_gqa() -> None:
    torch.manual_seed(0)
    q = torch.randn(2, 8, 16, 32)
    k, v = torch.randn(2, 4, 16, 32), torch.randn(2, 4, 16, 32)
    ring_of_one = ContextParallel(group=None, size=1, rank=0)  # one rank: no sends, no group
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(ring_of_one.attention(q, k, v), expected, rtol=1e-5, atol=1e-6)
