"""``costmodels.mla`` and MLA in the layer's operators, FLOPs and memory: DeepSeek-V3's numbers from
FACTS.md section 4 (d 7168, 128 heads, q rank 1536, kv rank 512, qk 128 + 64, v 128)."""

from __future__ import annotations

import pytest

from costmodels.flops import attention_gemm_params, transformer_layer_forward_flops
from costmodels.layer_ops import transformer_layer_ops
from costmodels.memory import layer_params
from costmodels.mla import mla_activation_bytes
from costmodels.operators import FlashAttention, Gemm, LayerShape
from profiles.loader import load_model
from profiles.stack_schema import StackKernels

V3 = load_model("deepseek-v3")


def test_projection_flops_per_token() -> None:
    """Forward projections 2·187,105,280 = 374,210,560 FLOPs per token; the attention core at S = 4096
    counted in full 2·S·H·(192 + 128) = 335,544,320 (FACTS.md gives its causal half, 167,772,160)."""
    assert attention_gemm_params(V3) == 187_105_280
    per_token = transformer_layer_forward_flops(V3, 4096, 1)
    assert per_token.attention / 4096 == 335_544_320
    ops = transformer_layer_ops(V3, LayerShape(1, 1, 4096, False, "none", 2), StackKernels())
    gemm = sum(op.flops for op in ops.forward if isinstance(op, Gemm) and op.name.startswith(("mla.", "attn.")))
    assert gemm / 4096 == 374_210_560
    (core,) = [op for op in ops.forward if isinstance(op, FlashAttention)]
    assert core.flops == pytest.approx(0.5 * 335_544_320 * 4096)


def test_down_projections_are_whole_on_every_tp_rank() -> None:
    """With tp = 8 the up-projections and the output projection split over tp, the down-projections
    (7168·1536 + 7168·576) and the latent norms (1536 + 512) do not: 15,140,864 whole per rank."""
    ops = transformer_layer_ops(V3, LayerShape(8, 1, 4096, False, "none", 2), StackKernels())
    by_name = {op.name: op for op in ops.forward if isinstance(op, Gemm)}
    assert by_name["mla.q_down"].n == 1536 and by_name["mla.kv_down"].n == 576
    assert by_name["mla.q_up"].n == 128 * 192 / 8 and by_name["mla.kv_up"].n == 128 * 256 / 8
    dense = layer_params(V3, 8, 1, False).dense
    assert dense == pytest.approx((583_483_392 - 15_140_864) / 8 + 15_140_864)


def test_activation_bytes_by_hand() -> None:
    """Per token, bf16: q and k 2·128·192, v and the output 2·128·128 over tp; the latents 2·1536 + 2·512
    + 64 whole."""
    sharded, whole = mla_activation_bytes(V3, 1, 8, 2)
    assert sharded == 2 * 128 * (2 * 192 + 2 * 128) / 8
    assert whole == 2 * (2 * 1536 + 2 * 512 + 64)
