"""``StackSpec``: the software a plan runs on, and how it behaves (DESIGN.md, Core types).

A stack decides the legal space (which schedules, how many virtual stages, which
cut layouts, recompute granularities, ZeRO modes, precisions, and whether it has
sequence, context and expert parallelism) and the behaviour the cost model prices
(its kernels and its overlaps). Presets live in ``profiles/stacks/*.yaml``, each
citing the framework version its facts were read from.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveInt, model_validator

from profiles.schema import Precision, RecomputeKind, ScheduleName, StrictModel

EmitTarget = Literal["ppplan", "megatron", "torchtitan"]


class StackKernels(StrictModel):
    """The kernels the stack runs (what memory-bound work exists and how it is fused)."""

    attention: Literal["flash", "unfused"] = Field(
        default="flash", description="flash: fused attention keeping only the log-sum-exp; unfused: s² scores in HBM"
    )
    fused_norm: bool = True
    fused_activation: bool = True
    fused_rope: bool = True
    fused_softmax: bool = True
    fused_cross_entropy: bool = False
    vocab_parallel_loss: bool = Field(default=True, description="cross-entropy over vocab shards (Megatron) vs gathered logits")
    dropout: bool = False


class StackOverlap(StrictModel):
    """What the stack overlaps with compute, and its fixed costs."""

    dp_grad_reduce: Literal["bucketed", "after_backward"] = Field(
        description="bucketed: reduced during the last microbatch's backward, the last bucket exposed; "
        "after_backward: one reduction once the whole backward is done"
    )
    dp_bucket_params: PositiveInt = 40_000_000
    param_gather: Literal["overlapped", "after_step"] = "overlapped"
    tp_comm: Literal["exposed", "overlapped"] = "exposed"
    p2p: Literal["exposed", "overlapped"] = "exposed"
    host_overhead_per_action_s: NonNegativeFloat = 0.0


class StackSpec(StrictModel):
    """One software stack (see the module docstring)."""

    name: str
    description: str
    version: str = Field(description="the framework version (tag, commit, date) these facts were read from")
    sources: list[str] = []
    emit: EmitTarget = Field(description="what `ppplan launch --emit` writes for it (ppplan: torchrun/SLURM for our runtime)")
    pipeline_runtime: Literal["torch", "megatron"] = Field(
        description="whose pipeline engine runs the schedules: torch.distributed.pipelining or Megatron-LM's"
    )
    schedules: list[ScheduleName]
    interleaved_microbatches: Literal["torch-rounds", "multiple-of-pp"] = Field(
        default="torch-rounds",
        description="torch-rounds: M % max(1, M // pp) == 0 (torch); multiple-of-pp: M % pp == 0 (Megatron-LM)",
    )
    interleaved_min_pp: PositiveInt = 2
    max_virtual_stages: PositiveInt = 8
    cut_layouts: Literal["any", "first-last", "uniform"] = Field(
        default="any",
        description="any: every stage_layers; first-last: first and last rank apart, the middle ranks equal; "
        "uniform: every stage the same count",
    )
    recompute: list[RecomputeKind]
    recompute_per_stage: bool = False
    zero: list[int]
    precisions: list[Precision]
    sequence_parallel: bool = True
    context_parallel: bool = False
    expert_parallel: bool = False
    moe: bool = Field(default=False, description="runs mixture-of-experts layers (router, routed and shared experts)")
    multi_latent_attention: bool = Field(default=False, description="runs DeepSeek's multi-head latent attention")
    cp_sequence_multiple: Literal["2cp", "2cp_tp"] = Field(
        default="2cp",
        description="with cp > 1 the sequence splits into 2*cp chunks for causal load balance (2cp: seq % (2 cp) == 0, "
        "Megatron-Core; 2cp_tp: seq % (2 cp tp) == 0, torchtitan's CP with sequence-parallel TP)",
    )
    ep_folding: Literal["dp_cp", "fsdp_dp_cp"] = Field(
        default="dp_cp",
        description="which ranks expert parallelism is carved out of, experts being TP-sharded like the dense MLP "
        "(expert TP = tp): dp_cp: ep divides dp*cp (Megatron-Core's parallel folding); fsdp_dp_cp: the same out of "
        "FSDP's dp_shard*cp, so it needs a sharded data-parallel mesh (zero >= 1, torchtitan)",
    )
    ep_needs_sequence_parallel: bool = Field(
        default=False, description="ep > 1 with tp > 1 requires sequence parallelism (Megatron-Core)"
    )
    ep_fp16: bool = Field(default=True, description="expert parallelism runs in fp16 (Megatron-Core: no)")
    kernels: StackKernels = StackKernels()
    overlap: StackOverlap

    @model_validator(mode="after")
    def _check(self) -> "StackSpec":
        for field in ("schedules", "recompute", "zero", "precisions"):
            if not getattr(self, field):
                raise ValueError(f"{field} lists nothing: a stack runs at least one")
        bad = [z for z in self.zero if not 0 <= z <= 3]
        if bad:
            raise ValueError(f"zero {bad[0]} is not a ZeRO stage (0-3)")
        return self
