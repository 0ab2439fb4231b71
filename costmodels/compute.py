"""Compute time by a roofline with an efficiency curve for small GEMMs.

A GEMM of ``flops`` FLOPs whose smallest dimension is ``d`` runs at
``peak · gemm_max · d / (d + gemm_half_dim)``: tensor-core GEMMs saturate
once every dimension is a few hundred wide and fall off roughly
hyperbolically below that (tile quantisation and wave quantisation; NVIDIA
"Matrix Multiplication Background User's Guide", and the GEMM throughput
curves in Narayanan et al. SC21, Fig. 8). The default constants are a
priori, not fitted to any published run: ``gemm_max = 0.80`` is the fraction
of dense peak cuBLAS reaches on large bf16 GEMMs on A100/H100 (NVIDIA's
published cuBLAS benchmarks), and ``gemm_half_dim = 96`` puts a 1,024-wide
GEMM at 91 % of that and a 128-wide one at 57 %. Fused attention runs at
``attention_max`` of peak (FlashAttention-2 paper, Dao 2023: 50–73 % forward,
lower backward). Element-wise work (norms, activations, residual adds,
rotary) is bound by HBM bandwidth at ``hbm`` efficiency.
"""

from __future__ import annotations

from costmodels.comm import bandwidth_bytes_per_s
from profiles.errors import PlanError
from profiles.schema import ClusterSpec

FP8_GEMM_PRECISION = "fp8"


def peak_flops(cluster: ClusterSpec, precision: str) -> float:
    """Dense peak in FLOP/s for ``precision``; fp8 GEMMs use the fp8 peak (Transformer Engine)."""
    value = getattr(cluster.gpu.peak_tflops, precision)
    if value is None:
        listed = [k for k, v in cluster.gpu.peak_tflops.model_dump().items() if v]
        raise PlanError(f"cluster '{cluster.name}' has no {precision} peak; use --precision {'|'.join(listed)}")
    return value * 1e12


def default_precision(cluster: ClusterSpec) -> str:
    """DESIGN.md: bf16 when the cluster's GPU lists a bf16 peak, else fp32."""
    return "bf16" if cluster.gpu.peak_tflops.bf16 else "fp32"


def non_gemm_precision(precision: str) -> str:
    """fp8 runs GEMMs at fp8 and everything else in bf16 (DESIGN.md)."""
    return "bf16" if precision == FP8_GEMM_PRECISION else precision


def gemm_efficiency(cluster: ClusterSpec, min_dim: float) -> float:
    eff = cluster.efficiency
    return eff.gemm_max * min_dim / (min_dim + eff.gemm_half_dim)


def gemm_time_s(cluster: ClusterSpec, precision: str, m: float, n: float, k: float) -> float:
    """Time of an (m × k) · (k × n) GEMM: 2·m·n·k FLOPs at the efficiency of its smallest dimension."""
    flops = 2.0 * m * n * k
    return flops / (peak_flops(cluster, precision) * gemm_efficiency(cluster, min(m, n, k)))


def attention_time_s(cluster: ClusterSpec, precision: str, flops: float) -> float:
    """Fused attention core (QKᵀ, softmax, AV) at ``attention_max`` of the non-GEMM precision peak."""
    return flops / (peak_flops(cluster, non_gemm_precision(precision)) * cluster.efficiency.attention_max)


def memory_bound_time_s(cluster: ClusterSpec, num_bytes: float) -> float:
    """Element-wise kernels: bytes read + written over achievable HBM bandwidth."""
    return num_bytes / (bandwidth_bytes_per_s(cluster.gpu.hbm_bandwidth_gbs) * cluster.efficiency.hbm)
