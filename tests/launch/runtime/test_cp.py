"""Context parallelism pieces in one process: the load-balanced split and the blockwise causal
attention (a ring of one rank runs every block locally)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from costmodels.context_parallel import eager_ring_activation_bytes
from costmodels.operators import LayerShape
from launch.runtime.cp import ContextParallel, chunk_ids, context_positions, context_slice
from profiles.loader import load_model


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_heads", [4, 8])
def test_ring_keeps_what_the_cost_model_prices(dtype: torch.dtype, kv_heads: int) -> None:
    """The bytes autograd saves in one ring attention (saved-tensor hooks; the inputs q, k, v not counted) against
    ``eager_ring_activation_bytes`` for the same shape: 8 heads of 32 over 128 positions, grouped-query (4 kv heads)
    and not (8), fp32 and bf16, on a ring of one (cp 1: 3 blocks, 1 merge, the rank's own K/V). The formula counts
    three log-sum-exp-sized tensors per merge; the last merge's log-sum-exp is not kept: one 4·H·c over."""
    torch.manual_seed(0)
    seq, heads, head_dim = 128, 8, 32
    q = torch.randn(1, heads, seq, head_dim, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(1, kv_heads, seq, head_dim, dtype=dtype, requires_grad=True) for _ in range(2))
    inputs = {t.untyped_storage().data_ptr() for t in (q, k, v)}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in inputs:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ContextParallel(group=None, size=1, rank=0).attention(q, k, v)
    model = load_model("tiny-llama").model_copy(update={"num_key_value_heads": kv_heads, "seq_len": seq})
    assert (model.num_attention_heads, model.head_dim) == (heads, head_dim)
    shape = LayerShape(1, 1, seq, False, "none", dtype.itemsize, cp=1)
    chunk = seq // 2
    assert eager_ring_activation_bytes(model, shape) - sum(saved.values()) == 4 * heads * chunk
