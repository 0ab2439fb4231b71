"""``costmodels.context_parallel``: ring attention's blocks, transfers, overlap and memory, derived by
hand; and the sequence split's effect on a layer's GEMMs and activations.

Shapes: s the whole sequence, cp ranks, c = s / (2 cp) positions per load-balancing chunk, H heads
(d head dim), KV kv-heads, tp tensor-parallel degree, p bytes per activation element.
"""

from __future__ import annotations

import pytest

from costmodels.comm import collective_s, network_for
from costmodels.context_parallel import (
    chunk_len,
    cp_activation_bytes,
    cp_neighbour_placement,
    eager_ring_activation_bytes,
    exchange_s,
    kv_block_bytes,
    ring_time_s,
)
from costmodels.layer_costs import RooflineTimes
from costmodels.layer_ops import transformer_layer_ops
from costmodels.memory import ActivationVariant, layer_activation_bytes
from costmodels.operators import FlashAttention, Gemm, LayerShape, RingAttention
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ModelSpec
from profiles.stack_schema import StackKernels

LLAMA = ModelSpec(name="llama", num_layers=4, hidden_size=1024, num_attention_heads=16, num_key_value_heads=4,
                  ffn_hidden_size=2816, vocab_size=32000, seq_len=8192, activation="swiglu")
P2P = StackKernels(context_parallel_attention="p2p_ring")
GATHER = StackKernels(context_parallel_attention="all_gather")
EAGER = StackKernels(context_parallel_attention="eager_ring", fused_norm=False, fused_activation=False,
                     fused_rope=False, vocab_parallel_loss=False)


def shape(cp: int, tp: int = 1, seq: int = 8192, mbs: int = 1, p: int = 2, recompute: str = "none") -> LayerShape:
    return LayerShape(tp, mbs, seq, False, recompute, p, cp=cp)


def ring(ops: tuple) -> RingAttention:
    (found,) = [op for op in ops if isinstance(op, RingAttention)]
    return found


def test_flash_ring_executes_the_ranks_share_of_the_causal_work() -> None:
    """cp = 4, s = 8192: c = 1024, d = 64. A step runs two c × c blocks: 2 · 2·c²·H·(d + d) = 2·2·1024²·16·128 =
    8,589,934,592 FLOPs; cp steps of it are 1/cp of the unsplit causal kernel's ½·4·s²·q."""
    ops = transformer_layer_ops(LLAMA, shape(4), P2P)
    forward = ring(ops.forward)
    (block,) = forward.first
    assert isinstance(block, FlashAttention) and block.flops == 8_589_934_592 and forward.other == forward.first
    whole = [op for op in transformer_layer_ops(LLAMA, shape(1), P2P).forward if isinstance(op, FlashAttention)][0]
    assert forward.steps * block.flops == pytest.approx(whole.flops / 4)
    backward = ring(ops.backward_input)
    assert backward.first[0].flops == 2.5 * block.flops and backward.first[0].backward
    assert ops.recompute == ()  # recompute "none"
    assert ring(transformer_layer_ops(LLAMA, shape(4, recompute="selective"), P2P).recompute) == forward


def test_ring_transfers_are_one_ranks_k_and_v() -> None:
    """The K/V block a step sends: s/cp · KV/tp · (d + d) · p = 2048 · 2 · 128 · 2 = 1,048,576 B (cp 4, tp 2,
    d = 64);
    the p2p ring's backward sends it with its gradient (twice), the all-gather gathers cp of them."""
    s4 = shape(4, tp=2)
    assert kv_block_bytes(LLAMA, s4) == 1_048_576
    ops = transformer_layer_ops(LLAMA, s4, P2P)
    assert (ring(ops.forward).exchange_bytes, ring(ops.forward).exchange) == (1_048_576, "p2p")
    assert ring(ops.backward_input).exchange_bytes == 2 * 1_048_576
    gathered = transformer_layer_ops(LLAMA, s4, GATHER)
    assert (ring(gathered.forward).exchange_bytes, ring(gathered.forward).exchange) == (4 * 1_048_576, "all_gather")
    assert ring(gathered.backward_input).exchange == "reduce_scatter"


def test_ring_time_overlaps_each_transfer_with_a_block() -> None:
    """p2p, cp = 4, first 3, other 2, x the transfer: max(3, x) + 2·max(2, x) + 2.
    x = 1: 9 (all hidden); x = 2.5: 2.5... = 3 + 5 + 2 = 10 (1 exposed); blocking: 3 + 3·(2 + x)."""
    op = RingAttention("r", 4, (), (), 0.0, "p2p")
    assert ring_time_s(op, 3.0, 2.0, 1.0) == (9.0, 0.0)
    assert ring_time_s(op, 3.0, 2.0, 2.5) == (10.0, 1.0)
    assert ring_time_s(RingAttention("r", 4, (), (), 0.0, "blocking"), 3.0, 2.0, 1.0) == (12.0, 3.0)
    assert ring_time_s(RingAttention("r", 4, (), (), 0.0, "all_gather"), 3.0, 2.0, 5.0) == (11.0, 2.0)
    assert ring_time_s(RingAttention("r", 1, (), (), 0.0, "p2p"), 3.0, 2.0, 5.0) == (3.0, 0.0)


def test_ring_hop_inside_and_across_nodes() -> None:
    """cp · tp <= 8: an NVLink hop (6 us + n/450 GB/s at the family's intra-node efficiency); beyond a
    node the hop crosses nodes and the node's tp rings share its NICs: min(50 GB/s, 400 GB/s / tp) at
    the inter-node efficiency."""
    cluster = load_cluster("dgx-h100")
    eff = cluster.efficiency
    net = network_for(cluster)
    n = 4e6
    inside = RingAttention("r", 4, (), (), n, "p2p")
    assert exchange_s(inside, 2, 4, net) == pytest.approx(6e-6 + n / (eff.intra_node_collective * 450e9))
    assert exchange_s(inside, 4, 4, net) == pytest.approx(12e-6 + n / (eff.inter_node_collective * 50e9))
    assert cp_neighbour_placement(8, 4, 8).node_senders == 8


def test_layer_times_hide_the_ring_behind_its_blocks() -> None:
    """Megatron-Core at 128k, cp 16, tp 8: every transfer hides behind its block; what shows is only the
    blocks' contention beside the transfers (hidden x 0.189 / 1.189, ``costmodels.overlap``); ppplan's eager
    ring waits for each of its cp - 1 shifts each way."""
    llama70 = load_model("llama3-70b")
    cluster = load_cluster("dgx-h100")
    core = RooflineTimes(llama70, cluster, "bf16", stack=load_stack("megatron-core"))
    t = core.transformer(8, 1, 131072, True, "none", cp=16)
    hop = collective_s("p2p", kv_block_bytes(llama70, LayerShape(8, 1, 131072, True, "none", 2, cp=16)),
                       cp_neighbour_placement(8, 16, 8), network_for(cluster))
    transfers = 15 * hop + 15 * collective_s(
        "p2p", 2 * kv_block_bytes(llama70, LayerShape(8, 1, 131072, True, "none", 2, cp=16)),
        cp_neighbour_placement(8, 16, 8), network_for(cluster))
    slowed = transfers * 0.189 / 1.189
    assert t.cp_comm_s == pytest.approx(slowed) and t.overlapped_cp_comm_s == pytest.approx(transfers - slowed)
    eager = RooflineTimes(llama70, cluster, "bf16", stack=load_stack("ppplan-torch")).transformer(8, 1, 131072, True, "none", cp=16)
    assert eager.cp_comm_s == pytest.approx(30 * hop) and eager.overlapped_cp_comm_s == 0.0


def test_eager_ring_runs_every_block_in_full() -> None:
    """ppplan's ring: 3 blocks at the own step, 2 at each other, each a QKᵀ of c × c × d (H/tp batches)."""
    ops = transformer_layer_ops(LLAMA, shape(2, seq=512, p=4), EAGER)
    forward = ring(ops.forward)
    first_qk = [op for op in forward.first if isinstance(op, Gemm) and op.name == "ring.qk"]
    other_qk = [op for op in forward.other if isinstance(op, Gemm) and op.name == "ring.qk"]
    assert len(first_qk) == 3 and len(other_qk) == 2 and forward.exchange == "blocking"
    assert (first_qk[0].m, first_qk[0].n, first_qk[0].k, first_qk[0].batch) == (128, 128, 64, 16)


def test_cp_splits_the_gemm_shapes() -> None:
    """With cp = 4 every projection runs on s/cp = 2048 tokens per sequence."""
    by_name = {op.name: op for op in transformer_layer_ops(LLAMA, shape(4), P2P).forward if isinstance(op, Gemm)}
    assert by_name["attn.qkv"].m == 2048 and by_name["mlp.fc1"].m == 2048


def test_activation_memory_divides_by_cp() -> None:
    """Apart from the attention core every kept tensor counts the rank's s/cp positions, so a layer at cp 4
    keeps a quarter of what it keeps at cp 1, less flash's log-sum-exp (4·H·s fp32), plus what the ring
    keeps: a log-sum-exp per step (p2p), and the gathered K/V blocks (all-gather)."""
    variant = ActivationVariant.for_stack(P2P, "bf16")
    whole = layer_activation_bytes(LLAMA, 8192, 1, 1, False, "none", variant)
    lse = 4.0 * 16 * 8192
    split = layer_activation_bytes(LLAMA, 8192, 1, 1, False, "none", variant, cp=4)
    assert split == pytest.approx((whole - lse) / 4 + 4 * 4.0 * 16 * 2048)
    gathered = layer_activation_bytes(LLAMA, 8192, 1, 1, False, "none", ActivationVariant.for_stack(GATHER, "bf16"), cp=4)
    assert gathered - split == pytest.approx(3 * kv_block_bytes(LLAMA, shape(4)))
    # selective recompute re-runs the ring: nothing of it is kept
    sel = layer_activation_bytes(LLAMA, 8192, 1, 1, False, "selective", variant, cp=4)
    assert sel == pytest.approx((layer_activation_bytes(LLAMA, 8192, 1, 1, False, "selective", variant) - lse) / 4 + lse / 4)


def test_eager_ring_memory_by_hand() -> None:
    """tiny-llama (h 256, 8 heads, 4 kv heads, d 32), s = 128, cp = 2, fp32: c = 32, 5 blocks of 8·32²
    scores keeping 8 B each and a log-sum-exp (4·8·32), two masks of 32² bools, 3 merges keeping two
    8 × 32 × 32 fp32 outputs and three log-sum-exps, the rank's own stacked K/V and the one received block
    (2 × 64 positions · 4 kv heads · 64 · 4 B), and each block's copy of its 8 × 32 × 32 query chunk (GQA)."""
    tiny = load_model("tiny-llama")
    s2 = LayerShape(1, 1, 128, False, "none", 4, cp=2)
    assert chunk_len(s2) == 32
    expected = (5 * (8 * 8 * 32 * 32 + 4 * 8 * 32) + 2 * 32 * 32 + 3 * (2 * 4 * 8 * 32 * 32 + 3 * 4 * 8 * 32)
                + 2 * 64 * 4 * 64 * 4 + 5 * 4 * 8 * 32 * 32)
    assert eager_ring_activation_bytes(tiny, s2) == expected
    assert cp_activation_bytes(tiny, s2, "eager_ring") == expected
