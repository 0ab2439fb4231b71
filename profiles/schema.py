"""Core types shared by search, simulate, explain, launch and calibrate (DESIGN.md).

All models are pydantic v2, frozen and strict about keys (``extra="forbid"``):
a typo in a YAML file is an error that names the key, never a silent default.
Units live in field names (``_gib``, ``_gbs``, ``_tflops``, ``_s``, ``_us``).
Fields added after the first release have defaults, so a file with exactly the
DESIGN.md fields always loads.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from profiles.errors import quoted
from profiles.limits import (
    MAX_ACTION_TIME_S,
    MAX_BANDWIDTH_GBS,
    MAX_EXPERTS,
    MAX_GLOBAL_BATCH,
    MAX_GPUS,
    MAX_HEADS,
    MAX_LATENCY_US,
    MAX_LAYERS,
    MAX_MEMORY_GIB,
    MAX_MICROBATCHES,
    MAX_MTP_LAYERS,
    MAX_SEQ_LEN,
    MAX_TFLOPS,
    MAX_VOCAB,
    MAX_WIDTH,
    MIN_BANDWIDTH_GBS,
    MIN_TFLOPS,
)

SCHEMA_VERSION = 1
BITS_PER_BYTE = 8


def count(cap: int, minimum: int = 1) -> type[int]:
    """An integer count in [minimum, cap] (``profiles/limits.py``); with the strict base,
    a bool or a float (even 8.0) is refused."""
    bound = {"gt": 0} if minimum == 1 else {"ge": minimum}  # pydantic's PositiveInt wording for counts from 1
    return Annotated[int, Field(le=cap, **bound)]  # type: ignore[return-value]


def bounded(low: float, high: float) -> type[float]:
    """A finite float in [low, high]."""
    return Annotated[float, Field(ge=low, le=high)]  # type: ignore[return-value]

Activation = Literal["gelu", "swiglu"]
Precision = Literal["bf16", "fp16", "fp32", "fp8"]
RecomputeKind = Literal["none", "selective", "full"]
ScheduleName = Literal[
    "gpipe",
    "1f1b",
    "interleaved-1f1b",
    "combined-1f1b",
    "looped-bfs",
    "zb-h1",
    "zb-h2",
    "interleaved-zb",
    "zbv",
    "dualpipev",
    "chimera",
    "custom",
]
SCHEDULE_NAMES: tuple[str, ...] = get_args(ScheduleName)


def _printable(text: str) -> str:
    """Text ppplan prints from a file (names, a plan's reasons) holds no control character (Unicode category Cc:
    C0, DEL, C1), so no escape sequence in a file reaches the user's terminal."""
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise ValueError(f"{quoted(repr(text))} holds a control character: use printable characters")
    return text


Name = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_printable)]  # 1024: an HF checkpoint's _name_or_path may be a long path
Text = Annotated[str, AfterValidator(_printable)]


class StrictModel(BaseModel):
    """The base of every file type ppplan reads: frozen; an unknown key, a non-finite number,
    and a bool, float or string where a number of another type goes are errors (strict mode:
    ``true`` or ``8.0`` is not a layer count)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ModelSpec(StrictModel):
    """Shape of a decoder-only transformer.

    ``norm`` and ``position_embedding`` default from ``activation`` (gelu: GPT
    style LayerNorm + learned positions; swiglu: Llama style RMSNorm + RoPE).
    ``head_dim`` defaults to hidden / heads (Qwen3 and others set it apart).

    Mixture of experts (all unset: a dense model): ``num_experts`` routed experts of
    FFN size ``moe_ffn_hidden_size`` (default ``ffn_hidden_size``), ``experts_per_token``
    of them per token, ``num_shared_experts`` always-on experts (their FFN size in
    total ``shared_expert_ffn_hidden_size``, default ``num_shared_experts`` ×
    ``moe_ffn_hidden_size``), and ``first_dense_layers`` dense layers (FFN
    ``ffn_hidden_size``) before the MoE ones. Multi-head latent attention (DeepSeek-V2/V3,
    set by ``kv_lora_rank``): queries through a ``q_lora_rank`` bottleneck (none when
    unset), keys and values through a ``kv_lora_rank`` one, per-head query/key dims
    ``qk_nope_head_dim`` + ``qk_rope_head_dim`` and value dim ``v_head_dim``.
    """

    name: Name
    num_layers: count(MAX_LAYERS)
    hidden_size: count(MAX_WIDTH)
    num_attention_heads: count(MAX_HEADS)
    num_key_value_heads: count(MAX_HEADS) | None = None
    ffn_hidden_size: count(MAX_WIDTH) | None = None
    vocab_size: count(MAX_VOCAB)
    seq_len: count(MAX_SEQ_LEN)
    activation: Activation = "gelu"
    tie_embeddings: bool = True
    norm: Literal["layernorm", "rmsnorm"] | None = None
    position_embedding: Literal["learned", "rope", "alibi"] | None = None
    linear_bias: bool | None = Field(
        default=None, description="biases on linear layers; default true for gelu (GPT), false for swiglu (Llama)"
    )
    head_dim: count(MAX_WIDTH) | None = None
    num_experts: count(MAX_EXPERTS) | None = None
    experts_per_token: count(MAX_EXPERTS) | None = None
    moe_ffn_hidden_size: count(MAX_WIDTH) | None = None
    num_shared_experts: count(MAX_EXPERTS, 0) = 0
    shared_expert_ffn_hidden_size: count(MAX_WIDTH * MAX_EXPERTS, 0) | None = None
    first_dense_layers: count(MAX_LAYERS, 0) = 0
    q_lora_rank: count(MAX_WIDTH) | None = None
    kv_lora_rank: count(MAX_WIDTH) | None = None
    qk_nope_head_dim: count(MAX_WIDTH) | None = None
    qk_rope_head_dim: count(MAX_WIDTH) | None = None
    v_head_dim: count(MAX_WIDTH) | None = None
    mtp_layers: count(MAX_MTP_LAYERS, 0) = Field(
        default=0,
        description="multi-token prediction modules (DeepSeek-V3; Megatron-Core --mtp-num-layers): each two norms, a "
        "2h -> h projection, one transformer layer of the model's last kind and the shared output head with its own "
        "loss, on the last pipeline stage (costmodels.mtp)",
    )

    @model_validator(mode="after")
    def _fill_defaults(self) -> "ModelSpec":
        gpt_style = self.activation == "gelu"
        fill = {
            "num_key_value_heads": self.num_attention_heads,
            "ffn_hidden_size": 4 * self.hidden_size,
            "norm": "layernorm" if gpt_style else "rmsnorm",
            "position_embedding": "learned" if gpt_style else "rope",
            "linear_bias": gpt_style,
        }
        for key, value in fill.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                    f"{self.num_attention_heads} (set head_dim for a model whose heads are sized apart)"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        self._check_moe()
        self._check_mla()
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.kv_heads}"
            )
        return self

    def _check_moe(self) -> None:
        moe_keys = ("experts_per_token", "moe_ffn_hidden_size", "shared_expert_ffn_hidden_size")
        if self.num_experts is None:
            given = [k for k in moe_keys if getattr(self, k) is not None]
            given += [k for k in ("num_shared_experts", "first_dense_layers") if getattr(self, k)]
            if given:
                raise ValueError(f"{given[0]} is set but num_experts is not: set num_experts for a mixture-of-experts model")
            return
        if self.experts_per_token is None:
            raise ValueError("num_experts is set but experts_per_token (the router's top-k) is not")
        if self.experts_per_token > self.num_experts:
            raise ValueError(f"experts_per_token {self.experts_per_token} is above num_experts {self.num_experts}")
        if self.first_dense_layers >= self.num_layers:
            raise ValueError(f"first_dense_layers {self.first_dense_layers} leaves no MoE layer of {self.num_layers}")
        if self.moe_ffn_hidden_size is None:
            object.__setattr__(self, "moe_ffn_hidden_size", self.ffn_hidden_size)
        if self.shared_expert_ffn_hidden_size is None:
            object.__setattr__(self, "shared_expert_ffn_hidden_size", self.num_shared_experts * self.moe_ffn_hidden_size)

    def _check_mla(self) -> None:
        dims = ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        if self.kv_lora_rank is None:
            given = [k for k in ("q_lora_rank", *dims) if getattr(self, k) is not None]
            if given:
                raise ValueError(f"{given[0]} is set but kv_lora_rank is not: multi-head latent attention needs kv_lora_rank")
            return
        missing = [k for k in dims if getattr(self, k) is None]
        if missing:
            raise ValueError(f"multi-head latent attention (kv_lora_rank set) needs {missing[0]}")

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden_size or 4 * self.hidden_size

    @property
    def q_dim(self) -> int:
        """Width of the attention's query (and output-projection input): heads x head_dim."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def score_head_dim(self) -> int:
        """Per-head width of queries and keys: ``head_dim``, or MLA's ``qk_nope_head_dim + qk_rope_head_dim``."""
        if self.kv_lora_rank is not None:
            return (self.qk_nope_head_dim or 0) + (self.qk_rope_head_dim or 0)
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def value_head_dim(self) -> int:
        """Per-head width of values (and of the attention output): ``head_dim``, or MLA's ``v_head_dim``."""
        if self.kv_lora_rank is not None:
            return self.v_head_dim or 0
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.first_dense_layers if self.is_moe else 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None


class PeakTflops(StrictModel):
    """Dense (no sparsity) tensor-core peaks; only the precisions the GPU has."""

    fp32: bounded(MIN_TFLOPS, MAX_TFLOPS) | None = None
    tf32: bounded(MIN_TFLOPS, MAX_TFLOPS) | None = None
    bf16: bounded(MIN_TFLOPS, MAX_TFLOPS) | None = None
    fp16: bounded(MIN_TFLOPS, MAX_TFLOPS) | None = None
    fp8: bounded(MIN_TFLOPS, MAX_TFLOPS) | None = None


class GpuSpec(StrictModel):
    name: Name
    memory_gib: Annotated[PositiveFloat, Field(le=MAX_MEMORY_GIB)]
    peak_tflops: PeakTflops
    hbm_bandwidth_gbs: bounded(MIN_BANDWIDTH_GBS, MAX_BANDWIDTH_GBS)


class LinkSpec(StrictModel):
    """One network tier: per-GPU, one-direction bandwidth in GB/s (1e9 B) and latency."""

    bandwidth_gbs: bounded(MIN_BANDWIDTH_GBS, MAX_BANDWIDTH_GBS)
    latency_us: float = Field(ge=0, le=MAX_LATENCY_US)


# The six constants a GPU family is fitted by (profiles/gpu_families.yaml documents each one).
FAMILY_CONSTANTS: tuple[str, ...] = (
    "gemm_max",
    "gemm_half_dim",
    "hbm",
    "intra_node_collective",
    "inter_node_collective",
    "action_overhead_s",
)


class Efficiency(StrictModel):
    """Achievable fractions of the peaks and fixed overheads (costmodels/compute.py, comm.py).

    The first six fields are a GPU family's fitted constants (``FAMILY_CONSTANTS``; a-priori
    values with their sources and fitted values with their provenance live in
    ``profiles/gpu_families.yaml``): ``gemm_max`` the large-GEMM fraction of dense peak,
    ``gemm_half_dim`` the GEMM dimension at which half of it is reached (the knee), ``hbm``
    the memory-bound kernels' fraction of HBM bandwidth, ``intra_node_collective`` and
    ``inter_node_collective`` the collectives' fraction of the NVLink and network bandwidth,
    ``action_overhead_s`` the fixed cost of one pipeline action (F, B or W of a microbatch on a
    stage: the host's work per action, not paid where the whole step is one CUDA graph,
    ``StackOverlap.cuda_graphs``). A cluster file that sets none of them gets its GPU family's values
    (``profiles.loader.load_cluster``); one that sets some keeps those. The defaults here are
    the ``generic`` family's, for clusters built in code.

    Not fitted: ``attention_max``, the fused (flash) attention forward's fraction of dense peak
    on the FLOPs it executes, is a cited or measured figure (None: derived from ``gemm_max``,
    ``costmodels.compute.flash_attention_efficiency``), ``attention_kernel_ratios`` the
    rate of an older flash kernel (``StackKernels.flash_generation``) over the native one's where the
    family measured both (Hopper: FA2 does not use its warpgroup MMA; missing: the native kernel's rate); ``step_overhead_s`` a fixed time per
    step (0 unless a file sets it).
    """

    gemm_max: float = Field(default=0.80, gt=0, le=1)
    gemm_half_dim: float = Field(default=96.0, ge=0, le=MAX_WIDTH, allow_inf_nan=False)
    hbm: float = Field(default=0.80, gt=0, le=1)
    intra_node_collective: float = Field(default=0.80, gt=0, le=1)
    inter_node_collective: float = Field(default=0.80, gt=0, le=1)
    action_overhead_s: float = Field(default=0.0, ge=0, le=MAX_ACTION_TIME_S, allow_inf_nan=False)
    attention_max: float | None = Field(default=None, gt=0, le=1)
    attention_kernel_ratios: dict[Literal["fa2", "triton"], Annotated[float, Field(gt=0, le=1)]] = Field(default_factory=dict)
    step_overhead_s: float = Field(default=0.0, ge=0, le=MAX_ACTION_TIME_S, allow_inf_nan=False)


class HeapReserve(StrictModel):
    """What a rank's allocator keeps resident beyond its ``allocator_fragmentation`` share, by what the rank
    exchanges with other ranks during its step (``costmodels.rank_memory.heap_reserve_gib``; a rank of several
    kinds takes the largest). On cpu-local glibc's heap grows past the live tensors on such ranks: by a
    near-constant number of bytes under DTensor tensor parallelism (``tp_gib``) and on pipeline ranks, whose
    sends torch.distributed.pipelining keeps to the step's end (``pp_gib``); under FSDP2's per-layer gathers
    and reduce-scatters (ZeRO 3 over more than one data rank) by a share of the allocated bytes for each
    microbatch of the step (``zero3_share_per_microbatch``). Measured by bench/cpu_heap.py; 0 on GPUs, whose
    caching allocator the fragmentation share covers."""

    tp_gib: float = Field(default=0.0, ge=0, le=MAX_MEMORY_GIB)
    pp_gib: float = Field(default=0.0, ge=0, le=MAX_MEMORY_GIB)
    zero3_share_per_microbatch: float = Field(default=0.0, ge=0, lt=1)


class ClusterSpec(StrictModel):
    """A cluster of identical nodes. Bandwidths are per GPU and one direction (GB/s).

    ``nics_per_node`` network cards of ``nic_bandwidth_gbit_s`` each (Gb/s, one direction, as
    NIC datasheets state it) carry every byte that leaves a node, shared by the node's GPUs
    (``costmodels.comm``); ``inter_node.bandwidth_gbs`` stays the most one GPU can inject. A
    file without them gets one NIC per GPU at ``inter_node.bandwidth_gbs`` (the node's egress
    is then ``gpus_per_node x inter_node.bandwidth_gbs``, what files before them meant).
    """

    name: Name
    gpu: GpuSpec
    gpus_per_node: count(MAX_GPUS)
    intra_node: LinkSpec
    inter_node: LinkSpec
    nics_per_node: count(MAX_GPUS) | None = None
    nic_bandwidth_gbit_s: float | None = Field(default=None, gt=0, le=8 * MAX_BANDWIDTH_GBS, allow_inf_nan=False)
    efficiency: Efficiency = Efficiency()
    runtime_reserved_gib: float = Field(
        default=1.0, ge=0, le=MAX_MEMORY_GIB,
        description="HBM a rank holds outside the allocator before its first tensor: the CUDA context and kernels",
    )
    nccl_communicator_gib: float | None = Field(
        default=None, ge=0, le=MAX_MEMORY_GIB, allow_inf_nan=False,
        description="HBM each NCCL communicator a rank uses holds outside the allocator (its channels' buffers); "
        "None: costmodels.communicators.NCCL_COMMUNICATOR_GIB on GPUs, 0 for CPU ranks",
    )
    allocator_fragmentation: float = Field(
        default=0.08, ge=0, lt=1, description="fraction of allocated bytes lost to the caching allocator"
    )
    heap_reserve: HeapReserve = Field(
        default_factory=HeapReserve,
        description="memory a rank's allocator keeps resident beyond its fragmentation share by what the rank "
        "exchanges with other ranks during its step, measured (bench/cpu_heap.py); 0 on GPUs",
    )
    memory_safety_margin: float = Field(
        default=0.0, ge=0, lt=1, description="fraction of HBM the fit check keeps free"
    )
    host_link: LinkSpec | None = Field(
        default=None,
        description="each GPU's link to host memory, one direction, for copies to and from pinned memory (activation "
        "offload, costmodels.offload). None: not stated, so no plan that offloads can be priced on the cluster",
    )
    concurrent_ranks_per_node: Annotated[PositiveFloat, Field(le=MAX_GPUS)] | None = Field(
        default=None,
        description="ranks of one node that can compute at full speed at the same time (CPU cores, for gloo "
        "ranks running one thread each); more ranks time-share them (costmodels.processor_sharing.timeshared_step_s). None: every rank "
        "has its own accelerator",
    )
    provenance: dict[str, str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_tp_heap_reserve(cls, data: Any) -> Any:
        """Files written before the heap reserve had kinds state ``tp_heap_reserve_gib`` (``heap_reserve.tp_gib``)."""
        if isinstance(data, dict) and "tp_heap_reserve_gib" in data:
            data = dict(data)
            if "heap_reserve" in data:
                raise ValueError("tp_heap_reserve_gib is heap_reserve.tp_gib: give one of them")
            data["heap_reserve"] = {"tp_gib": data.pop("tp_heap_reserve_gib")}
        return data

    @model_validator(mode="after")
    def _check_nics(self) -> "ClusterSpec":
        if (self.nics_per_node is None) != (self.nic_bandwidth_gbit_s is None):
            raise ValueError("nics_per_node and nic_bandwidth_gbit_s go together: set both or neither")
        return self

    @property
    def node_egress_gbs(self) -> float:
        """GB/s (one direction) all of a node's NICs move out of it together."""
        if self.nics_per_node is None or self.nic_bandwidth_gbit_s is None:
            return self.gpus_per_node * self.inter_node.bandwidth_gbs
        return self.nics_per_node * self.nic_bandwidth_gbit_s / BITS_PER_BYTE


def expert_data_ranks(tp: int, cp: int, dp: int, ep: int, expert_tp: int) -> int:
    """Ranks of a pipeline stage holding the same routed experts (the expert-data-parallel group):
    tp·cp·dp / (ep·etp), Megatron-Core's ``expert_data_parallel_size``; dp·cp / ep when etp = tp."""
    return max(1, tp * cp * dp // (ep * expert_tp))


class TrainSpec(StrictModel):
    global_batch: count(MAX_GLOBAL_BATCH)
    seq_len: count(MAX_SEQ_LEN)
    precision: Precision = "bf16"


Recompute = Union[RecomputeKind, list[RecomputeKind]]


class ParallelConfig(StrictModel):
    """One 3D-parallel configuration.

    ``stage_layers[j]`` is the number of transformer layers of virtual stage
    ``j`` in pipeline order (``pp * v`` entries). The embedding always sits on
    virtual stage 0 and the final norm + logits + loss on the last one; which
    rank holds stage ``j`` is given by the schedule's placement
    (``costmodels.rank_grid.stage_to_rank``). The first and the last stage may
    hold no transformer layer (the embedding or the head alone: Megatron-LM's
    ``--account-for-embedding-in-pipeline-split`` / ``--account-for-loss-in-pipeline-split``
    with one slot per stage); every other stage holds at least one.
    """

    stack: Name = Field(default="ppplan-torch", description="the software stack the plan runs on (profiles/stacks/)")
    tp: count(MAX_GPUS)
    cp: count(MAX_GPUS) = Field(default=1, description="context parallel: the sequence split over cp ranks")
    ep: count(MAX_GPUS) = Field(default=1, description="expert parallel: experts split over ep ranks of the dp x cp ranks")
    etp: count(MAX_GPUS) | None = Field(
        default=None,
        description="expert tensor parallel: each routed expert split over etp ranks (None: tp, the default). "
        "etp 1 under tp > 1 is Megatron-Core's parallel folding: experts whole, ep carved out of the tp x cp x dp "
        "ranks (--expert-tensor-parallel-size 1)",
    )
    pp: count(MAX_GPUS)
    dp: count(MAX_GPUS)
    v: count(MAX_LAYERS) = 1
    mbs: count(MAX_GLOBAL_BATCH)
    num_microbatches: count(MAX_MICROBATCHES)
    schedule: ScheduleName = "1f1b"
    recompute: Recompute = "none"
    sequence_parallel: bool = False
    sp_regather: bool = Field(
        default=False,
        description="with sequence parallelism, the attention's and the MLP's all-gathered inputs are kept for the "
        "backward as this rank's seq / tp shard and gathered again there, as Megatron-LM does (Korthikanti et al. "
        "2022, Sec. 4.2.2): 2(1 - 1/tp)·s·b·h values less per layer and microbatch in flight, for one more all-gather "
        "of each input in the backward (StackKernels.sequence_parallel_regather_exposed; ppplan's runtime: "
        "launch/runtime/regather.py). False: the gathered inputs are kept (DTensor's plan)",
    )
    zero: int = Field(default=0, ge=0, le=3)
    offload_layers: int = Field(
        default=0, ge=0, le=MAX_LAYERS,
        description="activation CPU offload: the saved activations of the first offload_layers transformer layers "
        "copied to pinned host memory during the forward and back during the backward (Megatron-Core's "
        "cpu_offloading_num_layers on Transformer Engine's offload handler; StackSpec.activation_offload); 0: none",
    )
    stage_layers: Annotated[list[count(MAX_LAYERS, minimum=0)], Field(min_length=1, max_length=MAX_LAYERS)]
    schedule_csv: str | None = Field(
        default=None,
        description="schedule 'custom' only: the action list in torch's pipeline CSV format, the exact "
        "order the simulator priced and the runtime executes",
    )

    @model_validator(mode="after")
    def _end_stages_only_may_be_empty(self) -> "ParallelConfig":
        empty = [j for j, n in enumerate(self.stage_layers) if n == 0]
        last = len(self.stage_layers) - 1
        if any(j not in (0, last) for j in empty) or (empty and last == 0):
            raise ValueError(
                f"stage_layers {self.stage_layers}: only the first stage (the embedding) and the last (the head) "
                "may hold no transformer layer, and only where there are at least two stages"
            )
        return self

    @property
    def num_stages(self) -> int:
        return self.pp * self.v

    @property
    def world_size(self) -> int:
        """Ranks the configuration runs on: tp · cp · pp · dp (ep folds into dp · cp, or tp · dp · cp with etp 1)."""
        return self.tp * self.cp * self.pp * self.dp

    @property
    def expert_tp(self) -> int:
        """Ranks each routed expert is split over: ``etp``, or tp when unset."""
        return self.tp if self.etp is None else self.etp

    @property
    def expert_data_ranks(self) -> int:
        """``expert_data_ranks`` of this configuration."""
        return expert_data_ranks(self.tp, self.cp, self.dp, self.ep, self.expert_tp)

    def recompute_of_stage(self, stage: int) -> RecomputeKind:
        if isinstance(self.recompute, list):
            return self.recompute[stage]
        return self.recompute

    @property
    def recompute_label(self) -> str:
        if isinstance(self.recompute, list):
            kinds = sorted(set(self.recompute))
            return kinds[0] if len(kinds) == 1 else "mixed"
        return self.recompute


class Breakdown(StrictModel):
    """Step time split of the busiest pipeline rank. ``overlapped`` holds time hidden behind
    compute, by term (seconds), reported apart from the exposed parts."""

    compute_s: float
    recompute_s: float
    tp_comm_s: float
    pp_comm_s: float
    dp_comm_s: float
    bubble_s: float
    optimizer_s: float
    overhead_s: float
    cp_comm_s: float = 0.0
    ep_comm_s: float = 0.0
    offload_s: float = Field(default=0.0, description="activation offload copies beyond the compute of their window "
                             "(costmodels.offload)")
    overlapped: dict[str, float] = {}


class Estimate(StrictModel):
    step_time_s: float
    tokens_per_s: float
    model_tflops_per_gpu: float
    hw_tflops_per_gpu: float
    mfu: float
    hfu: float
    bubble_fraction: float
    peak_memory_gib: list[float]
    memory_limit_gib: float
    fits: bool
    breakdown: Breakdown
    memory_breakdown_gib: list[dict[str, float]]
    params_total: float | None = Field(default=None, description="parameters of the model (count)")
    params_active: float | None = Field(default=None, description="parameters one token passes through (= total if dense)")
    error_band_pct: float | None = Field(
        default=None, description="held-out error of this stack and GPU class from `ppplan validate`, percent"
    )
    memory_error_band_pct: float | None = Field(
        default=None, description="95th percentile of how far held-out predicted peaks fell below this stack's "
        "published memory readings, percent of the reading (`ppplan validate`); None: fewer than 5 readings"
    )

    @model_validator(mode="after")
    def _check(self) -> "Estimate":
        """What a plan file's readers divide by and index (``ppplan explain``, ``compare``, ``tune``): a positive
        step time and memory limit, no negative rate, a bubble fraction within [0, 1], one memory breakdown per rank
        listed (or none: a hand-written plan may give only the peaks), and ``fits`` as the peaks and the limit say
        (``costmodels.estimate``: the largest peak within the limit)."""
        if self.step_time_s <= 0:
            raise ValueError(f"step_time_s must be positive, got {self.step_time_s}")
        for name in ("tokens_per_s", "model_tflops_per_gpu", "hw_tflops_per_gpu", "mfu", "hfu"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.memory_limit_gib <= 0:  # the share of it each rank needs is a division by it
            raise ValueError(f"memory_limit_gib must be positive, got {self.memory_limit_gib}")
        if self.peak_memory_gib and self.fits != (max(self.peak_memory_gib) <= self.memory_limit_gib):
            raise ValueError(f"fits is {str(self.fits).lower()} but the largest peak, {max(self.peak_memory_gib):g} GiB, is "
                             f"{'above' if self.fits else 'within'} memory_limit_gib {self.memory_limit_gib:g}: the estimate "
                             "contradicts itself (re-price the plan with ppplan evaluate)")
        if not 0 <= self.bubble_fraction <= 1:
            raise ValueError(f"bubble_fraction must be within [0, 1], got {self.bubble_fraction}")
        if self.memory_breakdown_gib and len(self.memory_breakdown_gib) != len(self.peak_memory_gib):
            raise ValueError(f"memory_breakdown_gib lists {len(self.memory_breakdown_gib)} ranks, "
                             f"peak_memory_gib {len(self.peak_memory_gib)}")
        return self


class Alternative(StrictModel):
    """A rejected plan near the chosen one, and why it lost."""

    config: ParallelConfig
    step_time_s: PositiveFloat | None
    delta_pct: float | None
    reason: Text


class Plan(StrictModel):
    schema_version: int = SCHEMA_VERSION
    model: ModelSpec
    cluster: ClusterSpec
    train: TrainSpec
    config: ParallelConfig
    estimate: Estimate
    rationale: list[Text] = []
    alternatives: list[Alternative] = []
    stack_spec: dict[str, Any] | None = Field(
        default=None, exclude_if=lambda spec: spec is None,
        description="the stack the plan was priced on, as its file states it (profiles.stack_schema.StackSpec), for a "
        "stack that is no shipped preset (`--stack mine.yaml`): the plan's readers use it instead of looking the "
        "name up (profiles.loader.plan_stack); absent for a preset",
    )

    @model_validator(mode="after")
    def _check(self) -> "Plan":
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version}: this ppplan reads plan files of version {SCHEMA_VERSION}; "
                "re-run ppplan search or evaluate --out"
            )
        if len(self.estimate.peak_memory_gib) != self.config.pp:
            raise ValueError(
                f"estimate.peak_memory_gib lists {len(self.estimate.peak_memory_gib)} ranks but the plan has pp={self.config.pp}"
            )
        return self
