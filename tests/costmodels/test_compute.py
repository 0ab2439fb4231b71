"""``costmodels.compute``: operators priced by roofline, by hand.

A100-like test GPU: 312 TFLOP/s bf16, 2,000 GB/s HBM; family constants gemm_max 0.8,
gemm_half_dim 96, hbm 0.8 unless a test says otherwise.
"""

from __future__ import annotations

import pytest

from costmodels.compute import (
    FLASH_BACKWARD_RATE_RATIO,
    FLASH_FORWARD_FRACTION_OF_GEMM,
    FP8_GEMM_EFFICIENCY_OVER_BF16,
    flash_attention_efficiency,
    gemm_bytes,
    gemm_precision,
    operator_time_s,
)
from costmodels.operators import FlashAttention, Gemm, MemoryBound
from profiles.errors import PlanError
from profiles.schema import ClusterSpec

PEAK = 312e12
HBM = 2000e9


def gpu(fp32_tflops: float | None = None, **efficiency) -> ClusterSpec:
    peaks = {"bf16": 312, "fp8": 624} | ({"fp32": fp32_tflops} if fp32_tflops else {})
    return ClusterSpec(
        name="test",
        gpu={"name": "TEST", "memory_gib": 80, "peak_tflops": peaks, "hbm_bandwidth_gbs": 2000},
        gpus_per_node=8,
        intra_node={"bandwidth_gbs": 300, "latency_us": 8},
        inter_node={"bandwidth_gbs": 25, "latency_us": 15},
        efficiency=efficiency,
    )


def test_a_large_gemm_runs_at_the_ceiling_times_the_knee_of_its_smallest_dimension() -> None:
    gemm = Gemm("g", 4096, 8192, 1024)
    efficiency = 0.8 * 1024 / (1024 + 96)
    assert operator_time_s(gpu(), "bf16", gemm) == pytest.approx(2 * 4096 * 8192 * 1024 / (PEAK * efficiency))


def test_a_skinny_gemm_is_bound_by_its_bytes() -> None:
    """(4096 x 8) · (8 x 4096) in bf16: 268 MFLOP at 0.8·8/104 of peak = 14.0 us; its 33.6 MB
    result (plus 131 KB of operands) at 0.8 x 2,000 GB/s = 21.1 us: the memory roof binds."""
    gemm = Gemm("skinny", 4096, 4096, 8)
    compute = gemm.flops / (PEAK * 0.8 * 8 / (8 + 96))
    memory = 2 * (4096 * 8 + 8 * 4096 + 4096 * 4096) / (0.8 * HBM)
    assert gemm_bytes(gemm, "bf16") == 2 * (4096 * 8 + 8 * 4096 + 4096 * 4096)
    assert memory > compute
    assert operator_time_s(gpu(), "bf16", gemm) == pytest.approx(memory)


def test_fp8_gemms_read_one_byte_operands_and_run_at_the_fp8_peak_at_the_cited_fraction_of_bf16s_efficiency() -> None:
    """cuBLAS 12.9 on Hopper: fp8 1.75x bf16 on large matmuls against a 2x peak ratio, so 0.875."""
    gemm = Gemm("g", 4096, 4096, 4096)
    assert gemm_bytes(gemm, "fp8") == 2 * 4096 * 4096 * 1 + 4096 * 4096 * 2
    assert FP8_GEMM_EFFICIENCY_OVER_BF16 == 0.875
    expected = gemm.flops / (624e12 * 0.8 * 0.875 * 4096 / (4096 + 96))
    assert operator_time_s(gpu(), "fp8", gemm) == pytest.approx(expected)
    # the same GEMM in bf16 takes 2 / 1.75 of that time
    assert operator_time_s(gpu(), "bf16", gemm) / operator_time_s(gpu(), "fp8", gemm) == pytest.approx(1.75)


def test_a_gemm_kept_out_of_fp8_runs_in_the_activation_precision() -> None:
    """The logits GEMM and attention's batched products stay in bf16 in an fp8 run."""
    kept = Gemm("head.logits", 4096, 4096, 4096, low_precision=False)
    assert gemm_precision("fp8", kept) == "bf16" and gemm_precision("fp8", Gemm("fc1", 1, 1, 1)) == "fp8"
    assert operator_time_s(gpu(), "fp8", kept) == operator_time_s(gpu(), "bf16", kept)
    assert operator_time_s(gpu(), "fp8", kept) == pytest.approx(kept.flops / (PEAK * 0.8 * 4096 / (4096 + 96)))


def test_batched_gemm_counts_every_product() -> None:
    gemm = Gemm("bmm", 2048, 2048, 64, batch=8)
    assert gemm.flops == 2 * 8 * 2048 * 2048 * 64
    compute = gemm.flops / (PEAK * 0.8 * 64 / (64 + 96))
    memory = 8 * 2 * (2048 * 64 * 2 + 2048 * 2048) / (0.8 * HBM)
    assert operator_time_s(gpu(), "bf16", gemm) == pytest.approx(max(compute, memory))


def test_a_gemm_off_the_tensor_cores_runs_at_the_fp32_peak_times_the_ceiling() -> None:
    """Head dim 108 in fp16 (216 B a row, not a multiple of 16): QKᵀ of 8 heads at s = 2048 is
    2·8·2048²·108 = 7.25 GFLOP; on the CUDA cores at 19.5 TFLOP/s x 0.8 it takes 464.5 us, where
    the tensor cores at 312 x 0.8 x 108/204 would take 54.9 us. Its bytes (8·2·(2·2048·108 +
    2048²) = 74.2 MB, 46.4 us) bind neither. A GPU that lists no fp32 peak cannot price it."""
    gemm = Gemm("attn.qk", 2048, 2048, 108, batch=8, low_precision=False, tensor_cores=False)
    assert gemm.flops == pytest.approx(7.248e9, rel=1e-3)
    assert operator_time_s(gpu(fp32_tflops=19.5), "bf16", gemm) == pytest.approx(gemm.flops / (19.5e12 * 0.8))
    assert operator_time_s(gpu(fp32_tflops=19.5), "bf16", gemm) == pytest.approx(464.5e-6, rel=1e-3)
    aligned = operator_time_s(gpu(fp32_tflops=19.5), "bf16", Gemm("attn.qk", 2048, 2048, 108, batch=8, low_precision=False))
    assert aligned == pytest.approx(gemm.flops / (PEAK * 0.8 * 108 / (108 + 96)))
    with pytest.raises(PlanError, match="lists no fp32 peak"):
        operator_time_s(gpu(), "bf16", gemm)


def test_flash_attention_runs_at_the_gemm_ceiling_times_the_cited_ratio() -> None:
    assert flash_attention_efficiency(gpu(), backward=False) == pytest.approx(0.8 * FLASH_FORWARD_FRACTION_OF_GEMM)
    assert flash_attention_efficiency(gpu(), backward=True) == pytest.approx(0.8 * 0.82 * FLASH_BACKWARD_RATE_RATIO)
    assert (FLASH_FORWARD_FRACTION_OF_GEMM, FLASH_BACKWARD_RATE_RATIO) == (0.82, 0.7)
    fwd = FlashAttention("a", 1e12)
    assert operator_time_s(gpu(), "bf16", fwd) == pytest.approx(1e12 / (PEAK * 0.8 * 0.82))
    # fp8 runs attention in bf16 (DESIGN.md: fp8 is for GEMMs)
    assert operator_time_s(gpu(), "fp8", fwd) == operator_time_s(gpu(), "bf16", fwd)
    # a family that measured its kernel states attention_max, which replaces the derivation
    measured = gpu(attention_max=0.5)
    assert operator_time_s(measured, "bf16", FlashAttention("b", 1e12, backward=True)) == pytest.approx(1e12 / (PEAK * 0.5 * 0.7))


def test_an_older_flash_kernel_runs_at_the_familys_measured_ratio_of_the_native_one() -> None:
    """Hopper-like family: FA2 at 0.49 of its native kernel; a generation the family states no ratio
    for runs at the native rate (on Ampere FA2 is the native kernel)."""
    hopper = gpu(attention_kernel_ratios={"fa2": 0.49})
    native = operator_time_s(hopper, "bf16", FlashAttention("a", 1e12))
    fa2 = operator_time_s(hopper, "bf16", FlashAttention("a", 1e12, generation="fa2"))
    assert fa2 == pytest.approx(native / 0.49)
    assert flash_attention_efficiency(hopper, backward=True, generation="fa2") == pytest.approx(0.8 * 0.82 * 0.49 * 0.7)
    assert operator_time_s(hopper, "bf16", FlashAttention("a", 1e12, generation="triton")) == native


def test_memory_bound_kernels_move_their_bytes_at_the_family_fraction_of_hbm() -> None:
    assert operator_time_s(gpu(), "bf16", MemoryBound("m", 1.6e9)) == pytest.approx(1.6e9 / (0.8 * HBM))
    assert operator_time_s(gpu(hbm=0.5), "bf16", MemoryBound("m", 1e9)) == pytest.approx(1e-3)
