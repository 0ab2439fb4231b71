"""Schemas of measured profiles: per-layer times and memory (``ppplan profile``) and
collective timings with their alpha–beta fits (``ppplan profile-comm``).

Same conventions as ``profiles/schema.py``: pydantic v2, frozen, ``extra="forbid"``,
units in field names (``_s``, ``_bytes``, ``_us``, ``_gbs``). A profile holds no
timestamps or paths, only what was measured and on what hardware.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal, get_args

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt, model_validator

from profiles.limits import (
    MAX_ACTION_TIME_S,
    MAX_BANDWIDTH_GBS,
    MAX_COMM_BYTES,
    MAX_GLOBAL_BATCH,
    MAX_GPUS,
    MAX_LATENCY_US,
    MAX_SEQ_LEN,
    MIN_BANDWIDTH_GBS,
)
from profiles.schema import ModelSpec, Precision, RecomputeKind, StrictModel, count

# A measured time: non-negative and at most a day (``profiles.limits.MAX_ACTION_TIME_S``, the cap ``ppplan simulate``
# puts on an action). A larger figure is no measurement, and a step priced from it would overflow to inf.
Seconds = Annotated[float, Field(ge=0.0, le=MAX_ACTION_TIME_S, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0.0, le=MAX_ACTION_TIME_S, allow_inf_nan=False)]

PROFILE_SCHEMA_VERSION = 1
COMM_PROFILE_SCHEMA_VERSION = 1

# "transformer": a dense layer; "moe_transformer": a mixture-of-experts layer with all its routed experts
# on the one rank (ep = 1); "experts": that layer's router and routed experts alone (what expert
# parallelism's load imbalance scales, ``costmodels.profile_times``).
LayerKind = Literal["embedding", "transformer", "head", "moe_transformer", "experts"]
LAYER_KINDS: tuple[str, ...] = get_args(LayerKind)
Collective = Literal["all_reduce", "reduce_scatter", "all_gather", "p2p"]
COLLECTIVES: tuple[str, ...] = get_args(Collective)
Tier = Literal["intra_node", "inter_node"]

# The ModelSpec fields that decide what one transformer layer, the embedding and the
# head compute. ``name``, ``num_layers`` and ``seq_len`` are left out on purpose: a
# profile is per layer, and the sequence length is a measured axis (interpolated).
SHAPE_FIELDS: tuple[str, ...] = (
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "ffn_hidden_size",
    "vocab_size",
    "activation",
    "norm",
    "position_embedding",
    "linear_bias",
)
# What a mixture-of-experts layer adds; hashed only for an MoE model, so a dense model's hash is the same
# as before these fields existed.
MOE_SHAPE_FIELDS: tuple[str, ...] = (
    "num_experts",
    "experts_per_token",
    "moe_ffn_hidden_size",
    "shared_expert_ffn_hidden_size",
)


def model_shape_hash(model: ModelSpec) -> str:
    """First 16 hex digits of the SHA-256 of the shape fields (``SHAPE_FIELDS``, and ``MOE_SHAPE_FIELDS``
    for a mixture-of-experts model) as sorted JSON."""
    fields = SHAPE_FIELDS + (MOE_SHAPE_FIELDS if model.is_moe else ())
    shape = {key: getattr(model, key) for key in fields}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


class HardwareFingerprint(StrictModel):
    """What the measurements were taken on; a profile only prices the same device."""

    device_kind: Literal["cpu", "cuda"]
    device_name: str = Field(description="torch's CUDA device name, or 'cpu'")
    torch_version: str
    cuda_version: str | None = None
    driver_version: str | None = None
    cpu_model: str
    num_threads: PositiveInt = Field(description="torch intra-op threads used while timing")


class LayerProfile(StrictModel):
    """One layer kind at one shape: per-microbatch times (median over repeats, with the
    inter-quartile range as spread) and memory.

    ``backward_input_s`` is the gradient with respect to the layer's input only (B),
    ``backward_weight_s`` the gradient with respect to its weights only (W), as the
    zero-bubble schedules split them (Qi et al. 2023); with recompute, B includes the
    re-run forward. ``backward_s`` is the unsplit backward (B and W in one call); under
    full recompute torch's split W re-runs the forward once per parameter group, so
    B + W exceeds it there. ``activation_bytes`` are the bytes autograd keeps for backward
    (distinct storages, parameters excluded); ``transient_peak_bytes`` the peak of bytes
    live during F, B and W above the level before F, less ``activation_bytes`` (the
    working memory on top of the stored activations; null where it was not measured).
    """

    kind: LayerKind
    tp: count(MAX_GPUS)
    mbs: count(MAX_GLOBAL_BATCH)
    seq_len: count(MAX_SEQ_LEN)
    recompute: RecomputeKind = "none"
    precision: Precision
    forward_s: PositiveSeconds = Field(description="every layer kind does work forward: a 0 s reading is no measurement")
    forward_iqr_s: Seconds
    backward_input_s: Seconds
    backward_input_iqr_s: Seconds
    backward_weight_s: Seconds
    backward_weight_iqr_s: Seconds
    backward_s: PositiveSeconds = Field(description="B and W in one autograd call, as schedules without a split backward run them")
    backward_iqr_s: Seconds
    repeats: int = Field(ge=2, description="timed iterations (ppplan profile --repeats, at least 2: a median and a spread)")
    activation_bytes: NonNegativeInt
    parameter_bytes: NonNegativeInt
    transient_peak_bytes: NonNegativeInt | None = None
    tp_comm_included: bool = Field(
        default=False, description="timed in a real TP group: F and B include the TP collectives and DTensor overhead"
    )
    cp: count(MAX_GPUS) = Field(
        default=1, description="context-parallel ranks: > 1 is a layer of one rank of a real ring of cp processes "
        "(its seq_len / cp positions; seq_len is the whole sequence), the ring's transfers inside F and B",
    )

    sequence_parallel: bool = Field(
        default=False, description="timed in a real TP group with sequence parallelism (Korthikanti et al. 2022): "
        "the hidden states in and out are seq_len / tp positions, all-gathers and reduce-scatters inside F and B",
    )

    @model_validator(mode="after")
    def _sequence_parallel_in_a_tp_group(self) -> "LayerProfile":
        if self.sequence_parallel and (self.tp == 1 or self.cp > 1 or not self.tp_comm_included or self.kind == "experts"):
            raise ValueError("sequence_parallel is a layer timed in a real TP group (tp > 1, cp 1, tp_comm_included), "
                             "not the routed experts alone")
        return self

    @property
    def key(self) -> tuple[str, int, int, int, str, str, int, bool]:
        return (self.kind, self.tp, self.mbs, self.seq_len, self.recompute, self.precision, self.cp, self.sequence_parallel)


class TimeSharePoint(StrictModel):
    """One point of the time-sharing measurement (``launch/profiler/timeshare.py``)."""

    processes_per_core: float = Field(gt=0.0, le=MAX_GPUS, allow_inf_nan=False)
    efficiency: float = Field(
        ge=1e-3, le=100.0, allow_inf_nan=False,
        description="total throughput over that of one process per core; below a thousandth the workload did not run "
        "(and the times it divides would overflow)",
    )


class CrowdedPipelinePoint(StrictModel):
    """A pipeline of more ranks than cores (``launch/profiler/pipelined.py``, ``crowded_factors``)."""

    ranks_per_core: float = Field(gt=1.0, le=MAX_GPUS, allow_inf_nan=False)
    mbs: count(MAX_GLOBAL_BATCH)
    compute_factor: float = Field(
        ge=1.0, le=100.0, allow_inf_nan=False,
        description="wall time of the actions over the same calls made directly, one rank at a time (median)",
    )
    compute_factor_iqr: NonNegativeFloat = 0.0


class RuntimeMeasurement(StrictModel):
    """What the runtime adds around the layers, measured by ``ppplan profile``
    (``launch/profiler/runtime.py``; priced by ``costmodels.runtime_costs``)."""

    pipeline_action_overhead_s: Seconds = Field(
        description="host time torch.distributed.pipelining adds to one F or B action (median)"
    )
    pipeline_action_overhead_iqr_s: Seconds = 0.0
    pipelined_action_overhead_s: Seconds | None = Field(
        default=None, description="host time per action a two-rank pipeline spends between its actions (p2p posting, "
        "bookkeeping), median (launch/profiler/pipelined.py); None in profiles taken before it was measured",
    )
    pipelined_action_overhead_iqr_s: Seconds = 0.0
    pipelined_compute_factor: float | None = Field(
        default=None, ge=1.0, allow_inf_nan=False, le=100.0,
        description="time of the actions in a two-rank pipeline over the same calls made directly, one rank at a time "
        "(median, launch/profiler/pipelined.py); None in profiles taken before it was measured",
    )
    pipelined_compute_factor_iqr: NonNegativeFloat = 0.0
    fsdp_overhead_per_layer_step_s: Seconds = Field(
        default=0.0, description="host time FSDP2 adds per wrapped layer and optimizer step (copies, hooks), median"
    )
    fsdp_overhead_per_layer_step_iqr_s: Seconds = 0.0
    optimizer_s_per_param: Seconds | None = Field(
        default=None, description="the runtime's AdamW step, seconds per parameter it updates (median); None: priced "
        "by bytes at the cluster's memory bandwidth",
    )
    crowded_pipeline: list[CrowdedPipelinePoint] = Field(
        default_factory=list,
        description="the pipelined compute factor where a node runs more ranks than it has cores, per ranks per core "
        "and microbatch size (launch/profiler/pipelined.py); empty: the two-rank factor applies",
    )
    timeshare_efficiency: list[TimeSharePoint] = Field(
        default_factory=list,
        description="the reference workload's throughput with k processes per core over one per core "
        "(launch/profiler/timeshare.py): what a node loses when more ranks compute than it has cores",
    )
    speed_probe_s: Seconds | None = Field(
        default=None,
        description="the fixed reference workload (launch/profiler/speed_probe.py) timed with the profile's clock "
        "before and after the layers (median): how fast the machine ran while it was profiled; a later run "
        "takes the probe again to tell the machine's drift from the cost model's error",
    )


class ProfileFile(StrictModel):
    """``ppplan profile`` output: the layers of one model shape measured on one device."""

    schema_version: int = PROFILE_SCHEMA_VERSION
    model: ModelSpec
    model_shape_hash: str
    precision: Precision
    cluster: str | None = Field(default=None, description="the cluster preset this profile stands for, if given")
    hardware: HardwareFingerprint
    warmup_iterations: NonNegativeInt
    timer: Literal["wall", "thread_cpu"] = Field(
        default="wall", description="wall clock, or the timing thread's CPU time (one CPU thread; immune to other processes)"
    )
    approximation: list[str] = Field(default_factory=list, description="how the measurement differs from what runs")
    layers: list[LayerProfile]
    runtime: RuntimeMeasurement | None = Field(default=None, description="the runtime's own costs around the layers")

    @model_validator(mode="after")
    def _consistent(self) -> "ProfileFile":
        """What a profile is matched on must describe its own measurements: the shape hash is its model block's
        (``model_shape_hash``), and every layer was timed in the profile's precision."""
        if self.model_shape_hash != model_shape_hash(self.model):
            raise ValueError(f"model_shape_hash {self.model_shape_hash} is not the hash of the profile's model block "
                             f"({model_shape_hash(self.model)}): the file was edited; re-run ppplan profile")
        other = next((layer for layer in self.layers if layer.precision != self.precision), None)
        if other is not None:
            raise ValueError(f"a {other.kind} layer was timed in {other.precision} in a {self.precision} profile: "
                             "re-run ppplan profile")
        return self


class CollectiveMeasurement(StrictModel):
    """One collective at one message size: ``size_bytes`` is the all-reduce buffer, the
    reduce-scatter input, the all-gather output, or the p2p message (the conventions of
    ``costmodels.comm``)."""

    collective: Collective
    group_size: count(MAX_GPUS)
    size_bytes: count(MAX_COMM_BYTES)
    median_s: Seconds
    iqr_s: Seconds
    repeats: PositiveInt


class AlphaBetaFit(StrictModel):
    """Least-squares alpha–beta fit (relative residuals) of the ring cost formulas."""

    latency_us: float = Field(ge=0.0, le=MAX_LATENCY_US, allow_inf_nan=False)  # the clusters' caps (profiles.limits)
    bandwidth_gbs: float = Field(ge=MIN_BANDWIDTH_GBS, le=MAX_BANDWIDTH_GBS, allow_inf_nan=False,
                                 description="per-rank one-direction bandwidth, 1e9 bytes/s")
    rms_relative_error: NonNegativeFloat
    num_points: PositiveInt


class TierFit(StrictModel):
    """One network tier: a fit over every collective (the link the planner uses) and one per collective."""

    tier: Tier
    group_size: PositiveInt
    overall: AlphaBetaFit
    per_collective: dict[Collective, AlphaBetaFit]


class CommProfile(StrictModel):
    """``ppplan profile-comm`` output."""

    schema_version: int = COMM_PROFILE_SCHEMA_VERSION
    backend: Literal["gloo", "nccl"]
    nproc: PositiveInt
    nnodes: PositiveInt = 1
    hardware: HardwareFingerprint
    measurements: list[CollectiveMeasurement] = Field(min_length=1)
    tiers: list[TierFit] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_fit_per_tier(self) -> "CommProfile":
        """``tier`` reads the first fit of a name: a second one would be silently ignored."""
        names = [t.tier for t in self.tiers]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise ValueError(f"tier '{twice}' is fitted twice: a profile has one fit per tier")
        return self

    def tier(self, name: str) -> TierFit | None:
        return next((t for t in self.tiers if t.tier == name), None)
