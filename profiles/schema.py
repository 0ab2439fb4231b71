"""Core types shared by search, simulate, explain, launch and calibrate (DESIGN.md).

All models are pydantic v2, frozen and strict about keys (``extra="forbid"``):
a typo in a YAML file is an error that names the key, never a silent default.
Units live in field names (``_gib``, ``_gbs``, ``_tflops``, ``_s``, ``_us``).
Fields added after the first release have defaults, so a file with exactly the
DESIGN.md fields always loads.
"""

from __future__ import annotations

from typing import Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

SCHEMA_VERSION = 1

Activation = Literal["gelu", "swiglu"]
Precision = Literal["bf16", "fp16", "fp32", "fp8"]
RecomputeKind = Literal["none", "selective", "full"]
ScheduleName = Literal[
    "gpipe",
    "1f1b",
    "interleaved-1f1b",
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


class StrictModel(BaseModel):
    """The base of every file type ppplan reads: frozen, and an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(StrictModel):
    """Shape of a decoder-only transformer.

    ``norm`` and ``position_embedding`` default from ``activation`` (gelu: GPT
    style LayerNorm + learned positions; swiglu: Llama style RMSNorm + RoPE).
    """

    name: str
    num_layers: PositiveInt
    hidden_size: PositiveInt
    num_attention_heads: PositiveInt
    num_key_value_heads: PositiveInt | None = None
    ffn_hidden_size: PositiveInt | None = None
    vocab_size: PositiveInt
    seq_len: PositiveInt
    activation: Activation = "gelu"
    tie_embeddings: bool = True
    norm: Literal["layernorm", "rmsnorm"] | None = None
    position_embedding: Literal["learned", "rope", "alibi"] | None = None
    linear_bias: bool | None = Field(
        default=None, description="biases on linear layers; default true for gelu (GPT), false for swiglu (Llama)"
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
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.kv_heads}"
            )
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def ffn_size(self) -> int:
        return self.ffn_hidden_size or 4 * self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


class PeakTflops(StrictModel):
    """Dense (no sparsity) tensor-core peaks; only the precisions the GPU has."""

    fp32: PositiveFloat | None = None
    tf32: PositiveFloat | None = None
    bf16: PositiveFloat | None = None
    fp16: PositiveFloat | None = None
    fp8: PositiveFloat | None = None


class GpuSpec(StrictModel):
    name: str
    memory_gib: PositiveFloat
    peak_tflops: PeakTflops
    hbm_bandwidth_gbs: PositiveFloat


class LinkSpec(StrictModel):
    """One network tier: per-GPU, one-direction bandwidth in GB/s (1e9 B) and latency."""

    bandwidth_gbs: PositiveFloat
    latency_us: float = Field(ge=0)


class Efficiency(StrictModel):
    """Achievable fractions of the peaks; defaults are a-priori, documented in costmodels/compute.py.

    ``gemm_max`` is the large-GEMM fraction of dense peak and ``gemm_half_dim``
    the GEMM dimension at which half of it is reached (the small-GEMM drop).
    """

    gemm_max: float = Field(default=0.80, gt=0, le=1)
    gemm_half_dim: float = Field(default=96.0, ge=0)
    attention_max: float = Field(default=0.55, gt=0, le=1)
    hbm: float = Field(default=0.80, gt=0, le=1)
    intra_node_collective: float = Field(default=0.80, gt=0, le=1)
    inter_node_collective: float = Field(default=0.80, gt=0, le=1)
    step_overhead_s: float = Field(default=0.0, ge=0)


class ClusterSpec(StrictModel):
    name: str
    gpu: GpuSpec
    gpus_per_node: PositiveInt
    intra_node: LinkSpec
    inter_node: LinkSpec
    efficiency: Efficiency = Efficiency()
    runtime_reserved_gib: float = Field(
        default=1.0, ge=0, description="HBM held outside the allocator: CUDA context, NCCL buffers"
    )
    allocator_fragmentation: float = Field(
        default=0.08, ge=0, lt=1, description="fraction of allocated bytes lost to the caching allocator"
    )
    memory_safety_margin: float = Field(
        default=0.0, ge=0, lt=1, description="fraction of HBM the fit check keeps free"
    )
    concurrent_ranks_per_node: PositiveFloat | None = Field(
        default=None,
        description="ranks of one node that can compute at full speed at the same time (CPU cores, for gloo "
        "ranks running one thread each); more ranks time-share them (costmodels.estimate). None: every rank "
        "has its own accelerator",
    )
    provenance: dict[str, str] | None = None


class TrainSpec(StrictModel):
    global_batch: PositiveInt
    seq_len: PositiveInt
    precision: Precision = "bf16"


Recompute = Union[RecomputeKind, list[RecomputeKind]]


class ParallelConfig(StrictModel):
    """One 3D-parallel configuration.

    ``stage_layers[j]`` is the number of transformer layers of virtual stage
    ``j`` in pipeline order (``pp * v`` entries). The embedding always sits on
    virtual stage 0 and the final norm + logits + loss on the last one; which
    rank holds stage ``j`` is given by the schedule's placement
    (``costmodels.rank_grid.stage_to_rank``).
    """

    tp: PositiveInt
    pp: PositiveInt
    dp: PositiveInt
    v: PositiveInt = 1
    mbs: PositiveInt
    num_microbatches: PositiveInt
    schedule: ScheduleName = "1f1b"
    recompute: Recompute = "none"
    sequence_parallel: bool = False
    zero: int = Field(default=0, ge=0, le=3)
    stage_layers: list[PositiveInt]
    schedule_csv: str | None = Field(
        default=None,
        description="schedule 'custom' only: the action list in torch's pipeline CSV format, the exact "
        "order the simulator priced and the runtime executes",
    )

    @property
    def num_stages(self) -> int:
        return self.pp * self.v

    @property
    def world_size(self) -> int:
        """Ranks the configuration runs on: tp · pp · dp."""
        return self.tp * self.pp * self.dp

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
    """Step time split; the parts need not sum to the step (overlap)."""

    compute_s: float
    recompute_s: float
    tp_comm_s: float
    pp_comm_s: float
    dp_comm_s: float
    bubble_s: float
    optimizer_s: float
    overhead_s: float


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


class Plan(StrictModel):
    schema_version: int = SCHEMA_VERSION
    model: ModelSpec
    cluster: ClusterSpec
    train: TrainSpec
    config: ParallelConfig
    estimate: Estimate
    rationale: list[str] = []
