"""The operators a layer is made of, with their FLOPs and bytes (pure data), and the building blocks
``costmodels.layer_ops`` assembles layers from.

Three kinds of compute operator, priced by ``costmodels.compute.operator_time_s``:

- ``Gemm(m, n, k, batch)``: 2·batch·m·n·k FLOPs on the tensor cores (efficiency by shape);
- ``FlashAttention(flops)``: a fused attention kernel on the FLOPs it executes (a causal
  kernel skips the blocks above the diagonal: half of QKᵀ and AV);
- ``MemoryBound(bytes)``: element-wise or reduction kernels priced by the bytes they read and
  write, counted as "accesses" of one tensor (a read or a write of every element);

and two that move data between ranks, priced with the network by ``costmodels.layer_costs``:
``AllToAll`` (an expert dispatch or combine) and ``RingAttention`` (context-parallel attention:
compute operators per step and the K/V transfers beside them).

A layer's operators come in passes (``LayerOps``): forward (F), backward-input (B: input
gradients, the attention backward, element-wise backward), backward-weight (W: the weight
gradients), and the forward operators recomputation re-runs inside B. Per TP rank and per
microbatch; the tensor-parallel collectives are priced apart (``costmodels.layer_costs``).

Which kernels run and how they are fused is the stack's (``StackSpec.kernels``): flash or
unfused attention (Megatron-LM 2021: ``baddbmm`` QKᵀ, a scale-mask-softmax kernel, dropout on
the probabilities, ``bmm`` with V), fused or eager norms, activations and rotary, dropout,
a vocab-parallel or a gathered cross-entropy, fused or not. The access counts per kernel are
stated where each operator is built.

Mixture-of-experts layers (``costmodels.experts``) replace the MLP by a router GEMM, the expert
GEMMs (``Gemm`` with ``batch`` = local experts and ``m`` = tokens routed to each), the shared
experts and the permutation copies, and add the token dispatch and combine as ``AllToAll``
operators over the expert-parallel group. Multi-head latent attention (``costmodels.mla``)
replaces the Q/K/V projections by its down- and up-projections. Context parallelism
(``costmodels.context_parallel``) runs each layer on its rank's ``seq_len / cp`` tokens and makes
the attention core a ``RingAttention``: per step a block of attention while the next K/V block
travels. ``AllToAll`` and the ring's transfers are priced with the network
(``costmodels.layer_costs``); the rest by roofline (``costmodels.compute``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from profiles.schema import ModelSpec
from profiles.stack_schema import StackKernels

MASK_BYTES = 1  # dropout keeps a 1-byte mask per element (Korthikanti et al. 2022, Sec. 4.1)
# Tensor-core GEMM kernels load their operands 16 bytes at a time: cuBLAS states 16-byte aligned
# pointers, leading dimensions and batch strides for its tensor-core paths (cuBLAS documentation,
# "Tensor Core Usage"; "most kernels targeting Tensor Cores require 128b aligned memory accesses",
# NVIDIA/cutlass issue 75).
TENSOR_CORE_ALIGNMENT_BYTES = 16
FP32_BYTES = 4
# FlashAttention-2's FLOP convention: the backward runs five matrix products to the forward's two
# (dQ, dK, dV, dP and the recomputed S), 2.5x the forward's FLOPs (Dao 2023, Sec. 3.1.2; the
# benchmark formula in Dao-AILab/flash-attention benchmarks/benchmark_flash_attention.py).
FLASH_BACKWARD_FLOPS_RATIO = 2.5
CAUSAL_EXECUTED_FRACTION = 0.5  # a causal flash kernel skips the blocks above the diagonal (same benchmark: FLOPs / 2)


@dataclass(frozen=True)
class Gemm:
    """A (batched) matrix product: ``batch`` products of (m × k) · (k × n). ``low_precision``: it
    runs in the run's GEMM precision (fp8 under fp8: Transformer Engine and torchao convert the
    transformer layers' linear layers); False for the attention's batched products and the
    logits GEMM, which stay in the activation precision (Megatron-Core's ``output_layer`` is a
    plain ``ColumnParallelLinear``, outside TE's fp8 autocast; torchtitan's float8 and MX
    converters skip ``output`` by default: "By default we always skip the output layer",
    torchtitan config ``filter_fqns``). ``tensor_cores``: False for a product whose operands break
    the tensor-core kernels' 16-byte alignment (``tensor_core_aligned``), which runs on the CUDA
    cores (``costmodels.compute.gemm_op_time_s``)."""

    name: str
    m: float
    n: float
    k: float
    batch: float = 1.0
    low_precision: bool = True
    tensor_cores: bool = True

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.n * self.k


@dataclass(frozen=True)
class FlashAttention:
    """A fused attention kernel: ``flops`` executed (causal half counted), ``backward`` for its
    backward kernel, ``generation`` the stack's flash kernel (``StackKernels.flash_generation``)."""

    name: str
    flops: float
    backward: bool = False
    generation: str = "native"


@dataclass(frozen=True)
class MemoryBound:
    """A kernel bound by HBM traffic: ``bytes`` read plus written."""

    name: str
    bytes: float


@dataclass(frozen=True)
class AllToAll:
    """Tokens exchanged over the expert-parallel group (dispatch or combine): ``bytes`` is the buffer
    each rank sends, its own share included (the busiest rank's, ``costmodels.experts``)."""

    name: str
    bytes: float


@dataclass(frozen=True)
class RingAttention:
    """Context-parallel attention over ``steps`` steps (``costmodels.context_parallel``): the first
    step runs ``first`` (the rank's own K/V), every other step ``other`` (one received K/V block),
    while ``exchange_bytes`` travel as ``exchange`` says: "p2p" (each step's next block sent while the
    current one computes), "all_gather" (all blocks gathered while the first step computes) or
    "blocking" (sent between steps, nothing overlapped)."""

    name: str
    steps: int
    first: tuple["Operator", ...]
    other: tuple["Operator", ...]
    exchange_bytes: float
    exchange: str


Compute = Union[Gemm, FlashAttention, MemoryBound]
Operator = Union[Gemm, FlashAttention, MemoryBound, AllToAll, RingAttention]


@dataclass(frozen=True)
class LayerOps:
    """One layer's operators per pass; ``recompute`` is what recomputation re-runs inside B."""

    forward: tuple[Operator, ...] = ()
    backward_input: tuple[Operator, ...] = ()
    backward_weight: tuple[Operator, ...] = ()
    recompute: tuple[Operator, ...] = ()

    def plus(self, other: "LayerOps") -> "LayerOps":
        return LayerOps(self.forward + other.forward, self.backward_input + other.backward_input,
                        self.backward_weight + other.backward_weight, self.recompute + other.recompute)


@dataclass(frozen=True)
class LayerShape:
    """What a layer's operators depend on besides the model and the stack's kernels.

    ``seq_len`` is the whole sequence; with ``cp`` context-parallel ranks each holds ``seq_len / cp``
    of its positions (``tokens``); ``ep`` expert-parallel ranks share an MoE layer's experts; ``moe``
    says the layer is a mixture-of-experts layer; ``expert_imbalance`` the busiest expert-parallel rank's
    load over the mean (None: ``costmodels.experts.EXPERT_LOAD_IMBALANCE``); ``etp`` the ranks each routed
    expert is split over (None: tp; 1 under Megatron-Core's parallel folding). ``bytes_per_element``: activations (2 for bf16/fp16 and fp8 runs, 4 for fp32);
    ``composite_rmsnorm``: torch's RMSNorm as the composite x·rsqrt(mean(x²)+eps)·w (off CUDA
    there is no fused kernel; ``costmodels.memory.ActivationVariant`` says the same)."""

    tp: int
    mbs: int
    seq_len: int
    sequence_parallel: bool
    recompute: str
    bytes_per_element: int
    composite_rmsnorm: bool = False
    cp: int = 1
    ep: int = 1
    moe: bool = False
    expert_imbalance: float | None = None
    etp: int | None = None

    @property
    def expert_tp(self) -> int:
        """Ranks each routed expert is split over: ``etp``, or tp (``ParallelConfig.expert_tp``)."""
        return self.tp if self.etp is None else self.etp

    @property
    def local_seq_len(self) -> int:
        """Positions of each sequence on one context-parallel rank: ``seq_len / cp``."""
        return self.seq_len // self.cp

    @property
    def tokens(self) -> int:
        return self.local_seq_len * self.mbs

    @property
    def replicated_tokens(self) -> float:
        """Tokens of the layer's replicated region (norms, residuals, dropout) on one TP rank:
        all of them, or 1/tp with sequence parallelism (Korthikanti et al. 2022, Sec. 4.2.2)."""
        return self.tokens / self.tp if self.sequence_parallel else float(self.tokens)


# -- building blocks ------------------------------------------------------------------------


def linear(name: str, tokens: float, in_features: float, out_features: float, batch: float = 1.0,
           low_precision: bool = True) -> LayerOps:
    """y = x·Wᵀ: F (tokens × in)·(in × out); B the input gradient (tokens × out)·(out × in);
    W the weight gradient (in × tokens)·(tokens × out); ``batch`` such products side by side
    (grouped experts, ``tokens`` each)."""
    return LayerOps(
        forward=(Gemm(name, tokens, out_features, in_features, batch, low_precision),),
        backward_input=(Gemm(f"{name}.dgrad", tokens, in_features, out_features, batch, low_precision),),
        backward_weight=(Gemm(f"{name}.wgrad", in_features, out_features, tokens, batch, low_precision),),
    )


def norm(name: str, elements: float, p: int, composite: bool) -> LayerOps:
    """LayerNorm or RMSNorm. One kernel (fused, or torch's native LayerNorm): F reads x and
    writes y (2 accesses), B reads dy and x and writes dx (3). Torch's composite RMSNorm:
    x², mean, ·rsqrt, ·w, each reading and writing (7 accesses; the mean writes one value
    per token), and autograd's backward of each, twice that (14)."""
    forward, backward = (7, 14) if composite else (2, 3)
    return LayerOps(forward=(MemoryBound(name, forward * p * elements),),
                    backward_input=(MemoryBound(f"{name}.bwd", backward * p * elements),))


def rotary(elements: float, p: int, fused: bool) -> LayerOps:
    """Rotary embedding of Q and K (Su et al. 2021). Fused (Megatron-Core's, TE's): read and
    write once (2 accesses of p bytes). Eager fp32 composite (torchtitan's and Llama's
    reference ``apply_rotary_emb``: upcast, complex multiply, downcast): p + 4 + 4 + 4 + 4 + p
    bytes per element. The backward is the same rotation with −θ, the same traffic."""
    per_element = 2 * p if fused else 2 * p + 4 * FP32_BYTES
    return LayerOps(forward=(MemoryBound("rope", per_element * elements),),
                    backward_input=(MemoryBound("rope.bwd", per_element * elements),))


def residual(name: str, elements: float, p: int, dropout: bool, fused: bool) -> LayerOps:
    """x + f(x), with dropout on f(x) when the stack runs it. The add reads two tensors and
    writes one (3 accesses); its backward sums the gradients of the two branches (3). Dropout
    fused into the add (Megatron's bias-dropout-add): + one 1-byte mask written, + p + 1 in
    the backward (read the gradient and the mask, write one); eager dropout: a kernel of its
    own, 2p + 1 each way."""
    forward = 3 * p * elements
    backward = 3 * p * elements
    if dropout:
        forward += (MASK_BYTES if fused else 2 * p + MASK_BYTES) * elements
        backward += (2 * p + MASK_BYTES) * elements
    return LayerOps(forward=(MemoryBound(name, forward),), backward_input=(MemoryBound(f"{name}.bwd", backward),))


def activation(elements: float, p: int, swiglu: bool, fused: bool, name: str = "act") -> LayerOps:
    """The MLP's activation on the per-rank FFN width. GELU (fused with its bias or not, one
    kernel): F 2 accesses, B 3. SwiGLU fused (Megatron's bias-SwiGLU, TE): F reads gate and
    up and writes one (3), B reads dy, gate and up and writes two (5); eager silu(gate)·up:
    F 2 + 3 = 5, B (mul's 5) + (silu's 3) = 8."""
    if not swiglu:
        forward, backward = 2, 3
    else:
        forward, backward = (3, 5) if fused else (5, 8)
    return LayerOps(forward=(MemoryBound(name, forward * p * elements),),
                    backward_input=(MemoryBound(f"{name}.bwd", backward * p * elements),))


def flash_attention(flops_full: float, generation: str = "native") -> LayerOps:
    """A causal flash attention kernel on ``flops_full`` (QKᵀ and AV counted in full, SC21's
    convention): it executes half, and its backward 2.5x that (FlashAttention-2)."""
    executed = flops_full * CAUSAL_EXECUTED_FRACTION
    core = FlashAttention("attn.core", executed, generation=generation)
    backward = FlashAttention("attn.core.bwd", FLASH_BACKWARD_FLOPS_RATIO * executed, True, generation=generation)
    return LayerOps(forward=(core,), backward_input=(backward,), recompute=(core,))


def tensor_core_aligned(elements: float, bytes_per_element: int) -> bool:
    """True when a row of ``elements`` values starts every next row on a 16-byte boundary
    (``TENSOR_CORE_ALIGNMENT_BYTES``)."""
    return float(elements).is_integer() and (int(elements) * bytes_per_element) % TENSOR_CORE_ALIGNMENT_BYTES == 0


def unfused_attention_on_tensor_cores(model: ModelSpec, bytes_per_element: int) -> bool:
    """Whether ``unfused_attention``'s batched products run on the tensor cores: each batch starts
    ``head_dim`` values after the previous one, so only a 16-byte aligned head dim keeps them there
    (``tensor_core_aligned``)."""
    return tensor_core_aligned(model.head_dim, bytes_per_element)


def unfused_attention(model: ModelSpec, shape: LayerShape, kernels: StackKernels) -> LayerOps:
    """Megatron-LM's 2021 ``CoreAttention``: per (microbatch, head) a ``baddbmm`` QKᵀ (s × d)·(d × s)
    over all s² scores (no causal skip, the 1/√d scale inside it), a scale-mask-softmax over
    the scores (fused ``FusedScaleMaskSoftmax``: F 2 accesses, B 3; eager mask + softmax: F 4,
    B 5), dropout on the probabilities (2p + 1 each way, when the stack runs dropout), and
    ``bmm`` with V (s × s)·(s × d). Backward: dP = dO·Vᵀ, dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q
    (Megatron-LM ``megatron/model/transformer.py`` @ v2.6).

    Each product's batch (one head of one sample) starts ``head_dim`` values after the previous
    one: the query, key and value are strided views of the [s, b, heads, head_dim] projection
    output. A head dim whose bytes are not a multiple of 16 (``unfused_attention_on_tensor_cores``: 108, 150
    or 450 values in fp16) leaves every other batch off the tensor cores' alignment, and the
    products run on the CUDA cores (``Gemm.tensor_cores``). BigScience measured it: tr11's
    h13824 at 128 heads (head dim 108) ran 30-40 % slower than at 64 or 96 heads, on every
    layout it tried (bigscience-workshop/bigscience train/tr11-176B-ml/chronicles-prequel.md,
    "NHEADs comparison" and "Rebalancing layers"; the text blames the fused softmax, whose
    kernel conditions do not involve the head dim: ``FusedScaleMaskSoftmax.is_kernel_available``)."""
    s, d, p = shape.local_seq_len, model.head_dim, shape.bytes_per_element
    heads = shape.mbs * model.num_attention_heads / shape.tp
    scores = heads * s * s
    softmax_f, softmax_b = (2, 3) if kernels.fused_softmax else (4, 5)
    on_tensor_cores = unfused_attention_on_tensor_cores(model, p)

    def bmm(name: str, m: float, n: float, k: float) -> Gemm:
        return Gemm(name, m, n, k, heads, low_precision=False, tensor_cores=on_tensor_cores)

    forward: list[Operator] = [bmm("attn.qk", s, s, d), MemoryBound("attn.softmax", softmax_f * p * scores)]
    backward: list[Operator] = [bmm("attn.av.dgrad_p", s, s, d), bmm("attn.av.dgrad_v", s, d, s)]
    if kernels.dropout:
        forward.append(MemoryBound("attn.dropout", (2 * p + MASK_BYTES) * scores))
        backward.append(MemoryBound("attn.dropout.bwd", (2 * p + MASK_BYTES) * scores))
    forward.append(bmm("attn.av", s, d, s))
    backward += [MemoryBound("attn.softmax.bwd", softmax_b * p * scores), bmm("attn.qk.dgrad_q", s, d, s), bmm("attn.qk.dgrad_k", s, d, s)]
    return LayerOps(forward=tuple(forward), backward_input=tuple(backward), recompute=tuple(forward))


def cross_entropy(tokens: float, vocab_per_rank: float, p: int, kernels: StackKernels) -> LayerOps:
    """The loss over ``vocab_per_rank`` logits per token (V/t with a vocab-parallel loss, all V
    when the logits are gathered first).

    Fused (flash-attn's xentropy kernel, csrc/xentropy/xentropy_kernel.cu): F reads the logits twice
    (max and sum in one pass, the exp-sum in a second: 2p), B reads them and writes their gradient (2p).
    Megatron's vocab-parallel cross-entropy on ``logits.float()`` (Megatron-LM
    ``mpu/cross_entropy.py``): cast (p + 4), max (4), subtract (8), exp (8), sum (4), divide into
    the softmax it keeps (8): p + 36 bytes per logit; B: scale the kept softmax (8) and cast
    back (4 + p). Torch's ``F.cross_entropy(logits.float())`` on gathered logits: cast
    (p + 4), log-softmax (8), F p + 12; B: the NLL gradient (4), the log-softmax backward
    (12), the cast back (4 + p): p + 20."""
    logits = tokens * vocab_per_rank
    if kernels.fused_cross_entropy:
        forward, backward = 2 * p, 2 * p
    elif kernels.vocab_parallel_loss:
        forward, backward = p + 9 * FP32_BYTES, p + 3 * FP32_BYTES
    else:
        forward, backward = p + 3 * FP32_BYTES, p + 5 * FP32_BYTES
    ops = LayerOps(forward=(MemoryBound("loss", forward * logits),),
                   backward_input=(MemoryBound("loss.bwd", backward * logits),))
    if kernels.train_metric_cross_entropies:
        ops = ops.plus(train_metric_cross_entropies(logits, p, kernels.train_metric_cross_entropies))
    return ops


def train_metric_cross_entropies(logits: float, p: int, count: int) -> LayerOps:
    """``count`` forward-only cross-entropies over a microbatch's ``logits`` beside the loss: the
    training metrics a trainer evaluates after each microbatch's backward (Composer's
    ``Trainer._eval_train_metrics``: llm-foundry's MPT keeps LanguageCrossEntropy and
    LanguagePerplexity, ``use_train_metrics`` true by default, each ``torch.nn.CrossEntropyLoss`` on the
    logits). Under the trainer's autocast, cross-entropy runs in fp32: cast (p + 4), log-softmax (8),
    p + 12 bytes per logit each, as torch's loss forward. No gradient: nothing kept (run after the
    backward, when the activations are freed, so no memory peak either)."""
    return LayerOps(forward=(MemoryBound("train_metrics", count * (p + 3 * FP32_BYTES) * logits),))
