"""Operator time by roofline (``costmodels.operators`` lists what runs).

- GEMM: ``2·m·n·k`` FLOPs at ``peak · gemm_max · d / (d + gemm_half_dim)`` where ``d`` is
  its smallest dimension: tensor-core GEMMs saturate once every dimension is a few hundred
  wide and fall off roughly hyperbolically below that (tile and wave quantization; NVIDIA
  "Matrix Multiplication Background User's Guide", and the GEMM throughput curves in
  Narayanan et al. SC21, Fig. 8). Never faster than its operands and result moving through
  HBM (the memory roof: a skinny GEMM, like the unfused attention's QKᵀ with k = head dim,
  is bound by bytes). A GEMM whose operands break the tensor cores' 16-byte alignment
  (``costmodels.operators.tensor_core_aligned``) runs on the CUDA cores: the fp32 peak at
  ``gemm_max`` (``cuda_core_flops``).
- Flash attention: a fused kernel whose inner products run on the tensor cores like a GEMM;
  FlashAttention-2 reaches 50-73 % of A100 peak, approaching the efficiency of GEMMs
  (Dao 2023, abstract). Its forward runs at ``gemm_max`` times the ratio of FA2's forward
  with its softmax to the same kernel with the softmax removed (68 % vs 83 % of the
  clock-adjusted A100 peak, non-causal, head dim 128: 0.82; liangan1/GPU_travel
  performance/flash-attn/README.md), and its backward at 0.7 of the forward's rate
  (flash-attention's own benchmark: 0.66-0.77 across head dims and masks, e.g. apache/tvm
  tl_doc/flash_perf.md, RTX 4090, head dim 128: 124.6 vs 169.3 TFLOP/s non-causal,
  99.2 vs 151.2 causal). A GPU family that measured its kernel states ``attention_max``. An
  older flash kernel than the architecture's own (``StackKernels.flash_generation``) runs at
  the family's measured ``attention_kernel_ratios`` of the native one (Hopper: FA2 does not use
  warpgroup MMA or TMA, Shah et al. 2024; Ampere: FA2 outruns the Triton kernel, Dao 2023).
- Memory-bound kernels: bytes read and written over ``hbm`` of the HBM bandwidth.
"""

from __future__ import annotations

from typing import get_args

from costmodels.comm import bandwidth_bytes_per_s
from costmodels.operators import FlashAttention, Gemm, MemoryBound, Operator
from profiles.errors import PlanError
from profiles.schema import ClusterSpec, Precision

FP8_GEMM_PRECISION = "fp8"
# fp8 GEMMs' efficiency (on the fp8 peak) over bf16 GEMMs' (on the bf16 peak): cuBLAS 12.9's FP8 matmuls
# on Hopper run 1.75x the BF16 baseline for large matmuls (NVIDIA, "Boosting Matrix Multiplication Speed
# and Flexibility with NVIDIA cuBLAS 12.9", 2025) against a 2x peak ratio: 1.75 / 2.
FP8_GEMM_EFFICIENCY_OVER_BF16 = 0.875
FLASH_FORWARD_FRACTION_OF_GEMM = 0.82  # FA2 forward with / without its softmax on A100 (module docstring)
FLASH_BACKWARD_RATE_RATIO = 0.7  # FA2 backward's FLOP rate over its forward's (module docstring)
GEMM_OPERAND_BYTES = {"fp8": 1, "bf16": 2, "fp16": 2, "fp32": 4}


def peak_flops(cluster: ClusterSpec, precision: str) -> float:
    """Dense peak in FLOP/s for ``precision``; fp8 GEMMs use the fp8 peak (Transformer Engine)."""
    value = getattr(cluster.gpu.peak_tflops, precision)
    if value is None:
        listed = [k for k, v in cluster.gpu.peak_tflops.model_dump().items() if v and k in get_args(Precision)]
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


def gemm_bytes(gemm: Gemm, precision: str) -> float:
    """HBM bytes of a GEMM: both operands in the GEMM precision, the result in the activation one."""
    operand, result = GEMM_OPERAND_BYTES[precision], GEMM_OPERAND_BYTES[non_gemm_precision(precision)]
    return gemm.batch * (operand * (gemm.m * gemm.k + gemm.k * gemm.n) + result * gemm.m * gemm.n)


def gemm_precision(precision: str, gemm: Gemm) -> str:
    """The precision a GEMM runs in: the run's, or the activations' for one kept out of fp8
    (``Gemm.low_precision``)."""
    return precision if gemm.low_precision else non_gemm_precision(precision)


def cuda_core_flops(cluster: ClusterSpec) -> float:
    """FLOP/s of a GEMM off the tensor cores (``Gemm.tensor_cores`` False): the GPU's fp32 peak,
    which is its CUDA cores' FMA rate, at the family's large-GEMM fraction ``gemm_max`` (no
    tensor-core tile knee)."""
    if cluster.gpu.peak_tflops.fp32 is None:
        raise PlanError(f"cluster '{cluster.name}' lists no fp32 peak: a GEMM off the tensor cores (an attention "
                        f"head dim whose bytes are not a multiple of 16) cannot be priced; add gpu.peak_tflops.fp32")
    return peak_flops(cluster, "fp32") * cluster.efficiency.gemm_max


def gemm_op_time_s(cluster: ClusterSpec, precision: str, gemm: Gemm) -> float:
    """The slower of the compute roof (efficiency of the smallest dimension; fp8 GEMMs at
    ``FP8_GEMM_EFFICIENCY_OVER_BF16`` of it; a GEMM off the tensor cores at ``cuda_core_flops``)
    and the memory roof."""
    runs_in = gemm_precision(precision, gemm)
    if not gemm.tensor_cores:
        compute = gemm.flops / cuda_core_flops(cluster)
    else:
        efficiency = gemm_efficiency(cluster, min(gemm.m, gemm.n, gemm.k))
        if runs_in == FP8_GEMM_PRECISION:
            efficiency *= FP8_GEMM_EFFICIENCY_OVER_BF16
        compute = gemm.flops / (peak_flops(cluster, runs_in) * efficiency)
    return max(compute, memory_bound_time_s(cluster, gemm_bytes(gemm, runs_in)))


def gemm_time_s(cluster: ClusterSpec, precision: str, m: float, n: float, k: float) -> float:
    """Time of an (m × k) · (k × n) GEMM (``gemm_op_time_s``)."""
    return gemm_op_time_s(cluster, precision, Gemm("gemm", m, n, k))


def flash_attention_efficiency(cluster: ClusterSpec, backward: bool, generation: str = "native") -> float:
    """Fraction of the (non-GEMM precision) peak a flash attention kernel reaches on the FLOPs
    it executes: the family's measured ``attention_max``, or ``gemm_max`` times FA2's softmax
    ratio, times the family's ``attention_kernel_ratios`` entry for an older kernel (1 where it
    states none); the backward at ``FLASH_BACKWARD_RATE_RATIO`` of that."""
    eff = cluster.efficiency
    native = eff.attention_max if eff.attention_max is not None else eff.gemm_max * FLASH_FORWARD_FRACTION_OF_GEMM
    forward = native * eff.attention_kernel_ratios.get(generation, 1.0)
    return forward * (FLASH_BACKWARD_RATE_RATIO if backward else 1.0)


def attention_time_s(cluster: ClusterSpec, precision: str, attention: FlashAttention) -> float:
    """A flash attention kernel's executed FLOPs at ``flash_attention_efficiency``."""
    peak = peak_flops(cluster, non_gemm_precision(precision))
    return attention.flops / (peak * flash_attention_efficiency(cluster, attention.backward, attention.generation))


def memory_bound_time_s(cluster: ClusterSpec, num_bytes: float) -> float:
    """Element-wise kernels: bytes read + written over achievable HBM bandwidth."""
    return num_bytes / (bandwidth_bytes_per_s(cluster.gpu.hbm_bandwidth_gbs) * cluster.efficiency.hbm)


def operator_time_s(cluster: ClusterSpec, precision: str, op: Operator) -> float:
    """Seconds of one compute operator by its kind (see the module docstring); communication operators
    (``AllToAll``, ``RingAttention``) need the network and are priced by ``costmodels.layer_costs``."""
    if isinstance(op, Gemm):
        return gemm_op_time_s(cluster, precision, op)
    if isinstance(op, FlashAttention):
        return attention_time_s(cluster, precision, op)
    if isinstance(op, MemoryBound):
        return memory_bound_time_s(cluster, op.bytes)
    raise TypeError(f"unknown operator {op!r}")


def operators_time_s(cluster: ClusterSpec, precision: str, ops: tuple[Operator, ...]) -> float:
    return sum(operator_time_s(cluster, precision, op) for op in ops)
