"""``StackSpec``: the software a plan runs on, and how it behaves (DESIGN.md, Core types).

A stack decides the legal space (which schedules, how many virtual stages, which
cut layouts, recompute granularities, ZeRO modes, precisions, and whether it has
sequence, context and expert parallelism) and the behaviour the cost model prices
(its kernels and its overlaps). Presets live in ``profiles/stacks/*.yaml``, each
citing the framework version its facts were read from.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from profiles.limits import MAX_ACTION_TIME_S, MAX_GPUS, MAX_LAYERS
from profiles.schema import Name, Precision, RecomputeKind, ScheduleName, StrictModel, count

# a bucket of more parameters than any model has (10^13) is one bucket: the cap keeps the figure a float can hold
MAX_BUCKET_PARAMS = 10**13
BucketParams = Annotated[int, Field(gt=0, le=MAX_BUCKET_PARAMS)]
# host seconds per action or operator: at most a day, as an action's time in `ppplan simulate`
HostSeconds = Annotated[float, Field(ge=0.0, le=MAX_ACTION_TIME_S, allow_inf_nan=False)]

EmitTarget = Literal["ppplan", "megatron", "torchtitan", "none"]
FSDP2_EMIT_TARGETS = ("ppplan", "torchtitan")  # the runtimes whose ZeRO-3 is FSDP2's fully_shard
OFFLOAD_EMIT_TARGETS = ("megatron", "none")  # the jobs that can offload activations (Megatron-Core's --cpu-offloading-*)


class StackKernels(StrictModel):
    """The kernels the stack runs (what memory-bound work exists and how it is fused)."""

    attention: Literal["flash", "unfused"] = Field(
        default="flash", description="flash: fused attention keeping only the log-sum-exp; unfused: s² scores in HBM"
    )
    flash_generation: Literal["native", "fa2", "triton"] = Field(
        default="native",
        description="native: the flash kernel written for the GPU's architecture (FlashAttention-2 on Ampere; "
        "FlashAttention-3 or cuDNN fused attention on Hopper and Blackwell: Transformer Engine, torch SDPA's cuDNN "
        "backend); fa2: FlashAttention-2 on whatever GPU (it does not use Hopper's warpgroup MMA and TMA, Shah et al. "
        "2024, FlashAttention-3, Sec. 1); triton: the flash-attention repository's Triton kernel (flash_attn_triton), "
        "which FlashAttention-2 outruns by 1.3-2.5x on A100 (Dao 2023, Sec. 4.1). Each GPU family states the rate of "
        "the non-native kernels it measured (gpu_families.yaml attention_kernel_ratios)",
    )
    fused_norm: bool = True
    fused_activation: bool = True
    fused_rope: bool = True
    fused_softmax: bool = True
    fused_cross_entropy: bool = Field(
        default=False,
        description="the loss is one kernel over the logits in their own dtype: it keeps the logits themselves (not an "
        "fp32 copy) and the log-sum-exp, and writes their gradient once (flash-attn's xentropy CrossEntropyLoss, "
        "flash_attn/losses/cross_entropy.py, llm-foundry's default loss_fn 'fused_crossentropy')",
    )
    train_metric_cross_entropies: int = Field(
        default=0, ge=0, le=8,
        description="forward-only cross-entropies over each microbatch's logits beside the loss: training metrics the "
        "trainer evaluates after every microbatch's backward (Composer with llm-foundry's MPT: LanguageCrossEntropy and "
        "LanguagePerplexity, 2; costmodels.operators.train_metric_cross_entropies)",
    )
    cross_entropy_inplace: bool = Field(
        default=False,
        description="the loss overwrites its fp32 copy of the logits with the softmax, which it keeps, and its backward "
        "overwrites that with the gradient, so beside what it keeps only the compute-dtype logits (forward) or their "
        "compute-dtype gradient (backward) exist: Megatron's vocab-parallel cross-entropy, fused or not "
        "(megatron/core/tensor_parallel/cross_entropy.py: in-place subtract, exp(out=), div_, mul_; "
        "megatron/mpu/cross_entropy.py @ v2.6 the same). Otherwise its fp32 working set and gradient are new tensors "
        "(torch's log_softmax and NLL backward)",
    )
    vocab_parallel_loss: bool = Field(default=True, description="cross-entropy over vocab shards (Megatron) vs gathered logits")
    vocab_parallel_loss_decomposed: bool = Field(
        default=False,
        description="with tp > 1 the vocab-parallel loss is DTensor's decomposition, whose every step writes a new fp32 "
        "tensor (torch.distributed.tensor.parallel.loss_parallel, torch/distributed/tensor/parallel/loss.py: _log_softmax "
        "and _nll_loss_and_log_softmax_backward; torchtitan's loss parallel): 4 B/logit kept, 12 beside at the backward's "
        "peak. With tp 1 the stack runs torch's fused log_softmax",
    )
    dropout: bool = False
    context_parallel_attention: Literal["p2p_ring", "all_gather", "eager_ring"] = Field(
        default="p2p_ring",
        description="how attention runs with cp > 1: p2p_ring: flash blocks, each step's K/V sent to the next rank "
        "while the current block computes, K/V and dK/dV sent round again in backward (Transformer Engine's "
        "AttnFuncWithCPAndKVP2P, Megatron-Core --cp-comm-type p2p); all_gather: flash blocks, K/V all-gathered "
        "while the local block computes and dK/dV reduce-scattered, the gathered blocks kept for backward (torch's "
        "context_parallel with the allgather rotater, torchtitan's default); eager_ring: fp32 blockwise attention, "
        "blocking p2p, every block's scores and the received K/V kept for backward (ppplan's launch/runtime/cp.py)",
    )
    fsdp_copies: bool = Field(
        default=False,
        description="FSDP2's copies on the compute stream, per microbatch: each gathered parameter copied out of the "
        "all-gather buffer (read and write, 2 x p bytes per parameter per gather) and each unsharded gradient copied "
        "into the reduce-scatter buffer at the reduce dtype (p + r bytes) (torch 2.13 "
        "torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py: foreach_all_gather_copy_out's split_with_sizes_copy "
        "runs in wait_for_unshard, foreach_reduce's chunk_cat before the reduce-scatter stream waits); FSDP1 gathers "
        "into the flat parameter itself and casts the gradient on its post-backward stream (false)",
    )
    fp8_saved_gemm_inputs: bool = Field(
        default=False,
        description="in fp8 runs each transformer-layer GEMM keeps its fp8-cast input (1 B per value) for the "
        "weight gradient instead of the bf16 one: Transformer Engine's Linear, LayerNormLinear and LayerNormMLP save "
        "the quantized input (transformer_engine/pytorch/module/linear.py, 'saved_inputmat = inputmat' after the "
        "cast). torchao's Float8Linear (torchtitan) saves the high-precision input and casts again in backward",
    )
    expert_dispatch: Literal["tp_replicated", "tp_split"] = Field(
        default="tp_replicated",
        description="which tokens a tensor-parallel rank sends in the expert all-to-all: tp_replicated: all of its "
        "data-parallel rank's routed tokens, the same on every tp rank (ppplan's runtime, torchtitan); tp_split: "
        "its 1/tp sequence-parallel share, all-gathered over tp after the all-to-all (Megatron-Core's alltoall "
        "dispatcher with expert TP = tp)",
    )
    moe_tp_input_grads_per_linear: bool = Field(
        default=False,
        description="with tp > 1 and tp_replicated dispatch, B all-reduces the gradient of each replicated input a "
        "tp-sharded linear reads (the routed rows, the shared experts' w1 and w3) (torchtitan v0.2.2 and 2645c02: "
        "TensorParallel's to_local(grad_placements=(Partial(),)), ColwiseParallel shared experts; "
        "costmodels.experts.moe_tp_collectives), instead of reducing the block's input gradient once at its entry "
        "and all-reducing the router scores' gradient (ppplan's runtime, launch/runtime/moe.py; later torchtitan also "
        "reduces the input gradients once at the entry). "
        "Either way the experts' outputs stay partial sums over tp and F reduces the block's sum once on exit: an "
        "all-reduce, or with sequence parallelism an all-gather of the input on entry and a reduce-scatter of the "
        "output to sequence shards",
    )
    sequence_parallel_keeps_gathered_inputs: bool = Field(
        default=False,
        description="with sequence parallelism, the attention's and the MLP's column-parallel GEMMs keep the block's "
        "all-gathered input (every position, on each tp rank) for their backward, as DTensor's plan does: the block's "
        "input becomes one replicated DTensor that autograd saves (launch/runtime/tp.py; torchtitan's apply_tp). False: "
        "they keep the rank's seq / tp shard and all-gather it again in the backward (Megatron-LM, Korthikanti et al. "
        "2022, Sec. 4.2.2), as ppplan's runtime does where a plan asks (sequence_parallel_regather_exposed). Per-op "
        "selective recompute (every_other_mm) keeps neither: its policy does not save the all-gather, which the "
        "backward re-runs",
    )
    sequence_parallel_regather_exposed: bool = Field(
        default=False,
        description="a plan may keep its sequence-parallel blocks' inputs as shards (ParallelConfig.sp_regather) on "
        "this stack, which keeps them gathered otherwise: they are gathered again in the backward on the critical "
        "path, once per block in B and again in W where the schedule splits the backward (ppplan's runtime: "
        "saved-tensor hooks gather when autograd reads the saved input, launch/runtime/regather.py; not under full "
        "recompute, whose re-run forward keeps the gathered inputs for the one layer it runs). A stack that always "
        "keeps the shards (sequence_parallel_keeps_gathered_inputs false, Megatron-LM) runs that gather beside the "
        "input-gradient GEMM (LinearWithGradAccumulationAndAsyncCommunication), priced as hidden",
    )
    moe_probs_in_activation: bool = Field(
        default=False,
        description="the router probabilities multiply the expert activation's output (fc2's input), so the "
        "combine sums unweighted expert outputs and keeps none of them for backward (Megatron-Core's GroupedMLP "
        "and TEGroupedMLP: activation_func_with_probs, megatron/core/transformer/moe/experts.py, since core v0.13 "
        "'moving the probs multiplication from unpermutation to activation function of GroupedMLP'); otherwise the "
        "combine weights the k expert outputs of each token and keeps them (ppplan's runtime)",
    )
    compiled_blocks: bool = Field(
        default=False,
        description="each transformer block ran under torch.compile (torchtitan's [compile]): with per-op selective "
        "recompute (every_other_mm) the partitioner keeps only the marked outputs the backward reads, so a dense block "
        "drops its last linear's output where the policy keeps it (SwiGLU's w2, the 7th mm) and, under sequence "
        "parallelism, the reduce-scatter after it (costmodels.selective_ac.unread_saved_bytes); eager, the "
        "checkpoint's cache keeps every marked output. Nothing else of compile is priced (its element-wise fusions "
        "are not). Set by published rows that ran compiled; the jobs ppplan emits run eager, so a stack that emits "
        "ppplan or torchtitan may not set it",
    )
    full_recompute_early_stop: bool = Field(
        default=False,
        description="full recompute is torch's non-reentrant checkpoint with early stop: the re-run forward stops as "
        "soon as the block's last saved tensor is packed again, which is the down projection's input, packed before that "
        "GEMM runs, so a dense block's last GEMM, the collective after it and the residual add do not run again "
        "(torch/utils/checkpoint.py _recomputation_hook raising _StopRecomputationError, the default since torch 2.1.0: "
        "'Non-reentrant checkpoint stops recomputation as soon as all needed intermediate activations have been "
        "recomputed'; costmodels.layer_ops.early_stop_tail, which also gives an MoE block's tail). It holds where the "
        "block's last ops are aten ops (torch's nn.Linear); a linear that is an autograd Function (Transformer Engine's, "
        "torchao's float8) saves its inputs after its GEMM has run, and a compiled block is one Function too, so those "
        "re-run whole. ppplan's runtime (launch/runtime/model.py) and Composer's FSDP activation checkpointing in bf16 "
        "on torch >= 2.1 run it; Megatron's and DeepSpeed's checkpoints re-run the whole block, and torchtitan's FullAC "
        "passes early_stop=False (pytorch/torchtitan 25413d2, 2025-08)",
    )
    selective_recompute: Literal["attention_core", "every_other_mm"] = Field(
        default="attention_core",
        description="what --recompute selective runs: attention_core: the attention core alone is recomputed "
        "(Korthikanti et al. 2022, Sec. 5; Megatron's --recompute-granularity selective, ppplan's runtime); "
        "every_other_mm: torchtitan's per-op selective checkpointing (selective_ac_option = \"op\"): the outputs "
        "of every other mm, the attention kernels, the TP reduce-scatters and the expert all-to-alls are kept, "
        "everything else runs again in the backward (costmodels.selective_ac)",
    )


class StackOverlap(StrictModel):
    """What the stack overlaps with compute, and its fixed costs."""

    dp_grad_reduce: Literal["bucketed", "after_backward", "after_schedule"] = Field(
        description="bucketed: each stage's gradients reduced in buckets during its last backward, the last "
        "bucket exposed; after_backward: each stage's once its backward is done (torch's REDUCE_GRAD); "
        "after_schedule: all of a rank's once its whole schedule is done (Megatron-LM 2021, DeepSpeed)"
    )
    dp_bucket_params: BucketParams = 40_000_000
    dp_bucket_params_per_dp_rank: int = Field(
        default=0, ge=0, le=MAX_BUCKET_PARAMS, description="buckets grow to at least this many parameters per data-parallel rank "
        "(Megatron-Core: max(40M, 1M x dp x cp))",
    )
    dp_later_chunks_one_bucket: bool = Field(
        default=False,
        description="bucketed only: a rank's model chunks after its first (interleaved virtual stages) keep their "
        "gradients in one bucket each, reduced once the chunk's last backward ends and gathered as one piece "
        "(Megatron-Core's get_model wraps chunk 2 onwards with DDP(disable_bucketing=True): megatron/training/"
        "training.py, NeMo's McoreDDP alike); false: every chunk in buckets",
    )
    dp_grad_sync: Literal["per_step", "per_microbatch_without_pp"] = Field(
        default="per_step",
        description="per_step: gradients accumulate over the step's microbatches and are reduced once (Megatron's "
        "no_sync on all but the last microbatch; torch pipelining's REDUCE_GRAD); per_microbatch_without_pp: without "
        "pipeline parallelism FSDP reduce-scatters every microbatch's backward and keeps gradients sharded "
        "(torchtitan: pytorch/torchtitan PR #1710 review, 2025-09, and issue #292), with it as per_step",
    )
    param_gather: Literal["overlapped", "after_step"] = "overlapped"
    backward_gather: Literal["prefetched", "after_gradients"] = Field(
        default="prefetched",
        description="when a ZeRO-3 (FSDP) backward all-gathers the next unit's parameters: prefetched, before the "
        "current unit's gradient computation, so the gather hides under it (FSDP2's backward prefetch; FSDP1's "
        "BackwardPrefetch.BACKWARD_PRE); after_gradients, once the current unit's gradients are computed (FSDP1's "
        "BackwardPrefetch.BACKWARD_POST: 'overlaps the current reduce-scatter and the next gradient computation', "
        "torch/distributed/fsdp/api.py), so every backward gather waits on the critical path while the "
        "reduce-scatter still hides",
    )
    tp_comm: Literal["exposed", "backward_overlapped", "overlapped"] = Field(
        default="exposed",
        description="exposed: TP collectives on the critical path; backward_overlapped: the forward's exposed, the "
        "backward's column-parallel collectives launched asynchronously beside that pass's GEMMs (Megatron-LM 2022 "
        "LinearWithGradAccumulationAndAsyncCommunication, Transformer Engine's Linear without userbuffers: the "
        "input-gradient all-reduce, or with sequence parallelism its reduce-scatter, overlaps the wgrad GEMM; the "
        "row-parallel output-gradient all-gather stays synchronous: costmodels.layer_costs.backward_async_share); "
        "overlapped: every TP collective hidden behind its pass's GEMMs where they are long enough (TE userbuffers, "
        "--tp-comm-overlap)",
    )
    p2p: Literal["exposed", "overlapped"] = "exposed"
    ep_comm: Literal["exposed", "overlapped"] = Field(
        default="exposed",
        description="exposed: the expert all-to-alls on the critical path of their pass; overlapped: each "
        "microbatch's forward merged with another's backward so that each one's all-to-alls run under the other's "
        "compute (Megatron-Core --overlap-moe-expert-parallel-comm, core v0.14 'batch-level overlapping to hide "
        "EP-A2A communication'; Megatron-Bridge moe_a2a_overlap): a layer exposes what its all-to-alls exceed its "
        "passes' compute by, on every pass. Published rows that ran it without a pipeline use it; with a pipeline "
        "the overlap is the schedule combined-1f1b (costmodels.schedules.registry), which only merges the passes "
        "that have a partner",
    )
    host_overhead_per_action_s: HostSeconds = 0.0
    cuda_graphs: Literal["none", "per_layer", "full_iteration"] = Field(
        default="none",
        description="CUDA graphs the stack captures and replays. full_iteration: the whole step is one graph "
        "(Megatron-Core's full_cuda_graph / cuda_graph_scope full_iteration, MLPerf's FULL_CUDA_GRAPH): no pipeline "
        "action is issued from the host, so neither the GPU family's fixed cost per action (GpuFamily "
        "action_overhead_s) nor the stack's host_overhead_per_action_s is paid. per_layer: each transformer layer's "
        "passes are graphs (Megatron-Core's enable_cuda_graph, Transformer Engine's make_graphed_callables, MLPerf's "
        "LAYER_CUDA_GRAPH), while the schedule, the p2p, the gradient hooks and the embedding and loss still run from "
        "the host: priced as none (the published rows that ran per-layer graphs price better with the per-action cost "
        "than without it: profiles/calibration/README.md). Only none with an emit target: the jobs ppplan writes "
        "capture no graphs",
    )
    moe_host_s_per_operator: HostSeconds = Field(
        default=0.0,
        description="host (CPU) seconds the framework spends per operator of a mixture-of-experts layer "
        "(costmodels.operators: one framework call, a grouped expert GEMM counted once), where the layer's token "
        "dispatch synchronizes host and device: the dropless alltoall dispatcher copies the tokens-per-expert counts "
        "to the host for the all-to-all's split sizes in every MoE layer's forward (Megatron-Core "
        "megatron/core/transformer/moe/token_dispatcher.py MoEAlltoAllTokenDispatcher.preprocess), so the host "
        "cannot run ahead of the GPU and each pass of the layer takes max(GPU time, operators x this) "
        "(costmodels.layer_costs.host_bound). 0: not priced (the host keeps ahead)",
    )
    moe_host_fit_rows: list[str] = Field(
        default=[],
        description="the published rows ('source_id: run' of profiles/calibration/public_runs.csv) "
        "moe_host_s_per_operator was fitted on: `ppplan validate` reports them in sample, apart from the held-out "
        "figures",
    )


class OptimizerPostValidation(StrictModel):
    """Where the stack steps the optimizer without the pipeline-wide synchronisation: the global gradient norm
    and the inf/NaN check, an all-reduce over every stage in Megatron-LM's clip_grad_norm and found_inf, become
    a partial reduce passed from stage to stage and validated during the next step's warm-up forwards, which
    roll the step back if it fails (Qi et al., ICLR 2024, Sec. 4, 'optimizer post-validation';
    sail-sg/zero-bubble-pipeline-parallelism, arxiv branch f68d3879, megatron/core/pipeline_parallel/
    zb_schedules.py run_until_post_validation). Each rank then starts the next step once its own work, reduce and
    optimizer are done, so consecutive steps overlap and a step costs the steady-state period
    (``costmodels.steady_state``), not the makespan."""

    schedules: list[ScheduleName] = Field(description="the schedules the stack runs this way")
    precisions: list[Precision] = Field(
        description="the precisions it is allowed in (the fork asserts fp16: megatron/arguments.py @ f68d3879)"
    )


class StackSpec(StrictModel):
    """One software stack (see the module docstring)."""

    name: Name
    description: str
    version: str = Field(description="the framework version (tag, commit, date) these facts were read from")
    sources: list[str] = []
    emit: EmitTarget = Field(description="what `ppplan launch --emit` writes for it (ppplan: torchrun/SLURM for our runtime)")
    pipeline_runtime: Literal["torch", "megatron", "megatron-zero-bubble"] = Field(
        description="whose pipeline engine runs the schedules: torch.distributed.pipelining, Megatron-LM's, or "
        "Megatron-LM's with the zero-bubble fork's runtime beside it (sail-sg/zero-bubble-pipeline-parallelism: its "
        "ZB schedules split the backward at the GEMMs, WeightGradStore; otherwise priced as Megatron-LM's engine)"
    )
    schedules: list[ScheduleName]
    single_stage_pipeline: bool = Field(
        default=False,
        description="runs plans without pipeline parallelism through its pipeline schedule too, as one stage "
        "(ppplan's runtime: torch.distributed.pipelining keeps each microbatch's output, the logits, until its "
        "backward); otherwise pp = 1 runs the framework's plain forward and backward, which frees the logits first "
        "(torchtitan's train loop, Megatron's forward_backward_no_pipelining)",
    )
    interleaved_microbatches: Literal["torch-rounds", "multiple-of-pp"] = Field(
        default="torch-rounds",
        description="torch-rounds: M % max(1, M // pp) == 0 (torch); multiple-of-pp: M % pp == 0 (Megatron-LM)",
    )
    interleaved_min_pp: count(MAX_GPUS) = 2
    max_virtual_stages: count(MAX_LAYERS) = 8
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
    multi_token_prediction: bool = Field(
        default=False, description="runs DeepSeek-V3's multi-token prediction modules (ModelSpec.mtp_layers) on the last stage"
    )
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
    expert_tp_folding: bool = Field(
        default=False,
        description="runs routed experts whole (expert TP 1) under tp > 1, ep carved out of the tp*cp*dp ranks so "
        "that ep divides them (Megatron-Core's MoE parallel folding, --expert-tensor-parallel-size 1, "
        "megatron/core/parallel_state.py); otherwise expert TP = tp",
    )
    ep_needs_sequence_parallel: bool = Field(
        default=False, description="ep > 1 with tp > 1 requires sequence parallelism (Megatron-Core)"
    )
    ep_fp16: bool = Field(default=True, description="expert parallelism runs in fp16 (Megatron-Core: no)")
    tp_needs_sequence_parallel: bool = Field(
        default=False,
        description="tensor parallelism always runs with sequence parallelism: the norms are sharded along the "
        "sequence (torchtitan's llama3 parallelize.py apply_tp puts SequenceParallel on every norm, with no switch, "
        "@ v0.2.2)",
    )
    ddp_one_dimensional: bool = Field(
        default=False,
        description="ZeRO 0 is DDP, which the stack runs only where data parallelism is the only parallelism: with "
        "tensor, context or pipeline parallelism its data ranks are FSDP2's (torchtitan's llama3 parallelize.py "
        "raises 'DDP has not supported > 1D parallelism' @ v0.2.2)",
    )
    mixed_precision_needs_fsdp: bool = Field(
        default=False,
        description="bf16, fp16 and fp8 runs are the priced mixed precision only under FSDP2 (dp_shard > 1 or cp > 1): "
        "without it torchtitan's maybe_enable_amp turns autocast off with TP or PP (the run trains in fp32) and runs "
        "torch.autocast over fp32 weights otherwise (torchtitan/distributed/utils.py @ v0.2.2)",
    )
    grad_accumulation_fp32: bool = Field(
        default=False,
        description="bf16 and fp8 runs accumulate and reduce gradients in fp32 (4 B/param, not 2): Megatron-LM "
        "('bfloat16 requires gradient accumulation and all-reduce to be done in fp32', megatron/training/arguments.py, "
        "every version since v2; --grad-reduce-in-bf16, or NeMo's and Megatron-Bridge's grad_reduce_in_fp32 False, "
        "turns both off). The reduce follows it unless grad_reduce_fp32 says otherwise. Not FSDP2's fp32 reduce dtype: "
        "its sharded fp32 gradients are the ZeRO paper's 16 B/param, and its unsharded accumulation under a pipeline is "
        "fsdp_unsharded_grads_fp32",
    )
    grad_reduce_fp32: bool | None = Field(
        default=None,
        description="bf16 and fp8 runs reduce gradients across data-parallel ranks in fp32 (4 B/param) or in the "
        "parameters' dtype (2 B). None: in the dtype they accumulate in (grad_accumulation_fp32): Megatron reduces "
        "its gradient buffer in place, so grad_reduce_in_fp32 sets both (megatron/core/distributed/"
        "distributed_data_parallel_config.py; DistributedDataParallel allocates the buffer in fp32 when it is set, "
        "else in the parameters' dtype), and FSDP2 without a mixed-precision policy reduces the parameters' dtype. "
        "true: FSDP2's reduce_dtype float32 beside bf16 parameters (torchtitan's training.mixed_precision_reduce; "
        "Composer's FSDP mixed_precision DEFAULT)",
    )
    autocast_fp32_params: bool = Field(
        default=False,
        description="bf16 (and fp16) runs are torch.autocast over fp32 parameters: the parameters, gradients and Adam's "
        "state stay fp32 (4 + 4 + 8 B per parameter), the residual stream and the norms stay fp32 while each GEMM saves "
        "the bf16 cast of its input, and every GEMM saves autocast's bf16 cast of its weight, a copy per microbatch in "
        "flight until that microbatch's backward (autocast clears its cast cache when the region exits, the saved "
        "tensor keeps the copy): ppplan's runtime until 2026-12 (it now runs FSDP2's MixedPrecisionPolicy: "
        "fsdp_mixed_precision_always); torchtitan runs it without FSDP, TP and PP, which its rules refuse "
        "(mixed_precision_needs_fsdp)",
    )
    fsdp_mixed_precision_always: bool = Field(
        default=False,
        description="bf16 runs wrap every stage in FSDP2 for its MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype="
        "fp32), on a one-rank mesh where dp x cp = 1 and as HSDP with one shard at ZeRO 0, so the fp32 accumulation of "
        "the unsharded gradients (fsdp_unsharded_grads_fp32) holds at every dp and ZeRO stage: ppplan's runtime "
        "(fsdp_wraps). Otherwise FSDP2 wraps only ZeRO >= 1 over more than one rank",
    )
    activation_offload: bool = Field(
        default=False,
        description="runs activation CPU offload (ParallelConfig.offload_layers): Megatron-Core's cpu_offloading with "
        "cpu_offloading_num_layers, on Transformer Engine's AsyncDoubleBufferGroupOffloadHandler "
        "(megatron/core/model_parallel_config.py, transformer_config.py @ core_v0.14.0; transformer_engine/pytorch/"
        "cpu_offload.py @ v2.5), which refuses pipeline parallelism, recomputation and at least num_layers layers",
    )
    fsdp_unsharded_grads_fp32: bool = Field(
        default=False,
        description="where the pipeline turns FSDP2's gradient sync off until the last microbatch (pp > 1; "
        "gradients_sharded false), bf16 and fp8 runs accumulate the unsharded gradients in fp32, the reduce dtype: "
        "4 B/param, not 2 (torch/distributed/fsdp/_fully_shard/_fsdp_param.py to_accumulated_grad_if_needed, "
        "pytorch PR #125191; torchtitan's training.mixed_precision_reduce float32)",
    )
    pipeline_keeps_stage_outputs: bool = Field(
        default=False,
        description="the pipeline engine keeps each microbatch's stage output (s x b x h, over tp only with sequence "
        "parallelism) until that microbatch's backward on every stage but the last, whose output is the loss: "
        "DeepSpeed's PipelineEngine stores it in pipe_buffers['outputs'] in _exec_forward_pass and drops it at the end "
        "of _exec_backward_pass (deepspeed/runtime/pipe/engine.py); torch.distributed.pipelining keeps every stage's "
        "output, the last's logits too, without this field (ActivationVariant.keeps_stage_output)",
    )
    bf16_grads_kept_beside_fp32: bool = Field(
        default=False,
        description="bf16 runs keep each parameter's bf16 gradient beside its fp32 accumulation (2 B/param more "
        "than grad_accumulation_fp32's 4): DeepSpeed's BF16_Optimizer (deepspeed/runtime/bf16_optimizer.py) clears "
        "the bf16 .grad only before the next backward (backward: clear_lp_grads(), loss.backward(), "
        "update_hp_grads(clear_lp_grads=False)) and accumulates into full-size fp32 buffers "
        "(fp32_groups_gradients_flat = zeros_like(bf16_groups_flat, float32)); DeepSpeed's engine picks it for bf16 "
        "with fp32 gradient accumulation at ZeRO 0 or 1 (runtime/engine.py _do_optimizer_sanity_check)",
    )
    optimizer_state_bf16: bool = Field(
        default=False,
        description="Adam's state in bf16: the stored parameter copy, exp_avg and exp_avg_sq 2 B each, 6 B per updated "
        "parameter, not the fp32 12: Apex's DistributedFusedAdam with dtype=torch.bfloat16 allocates each state bucket's "
        "params_shard (store_params, default True), exp_avg_shard and exp_avg_sq_shard in the optimizer dtype "
        "(apex/contrib/optimizers/distributed_fused_adam.py StateBucket); NeMo 1's optim distributed_fused_adam with "
        "dtype: bf16 (nemo/core/optim/distributed_adam.py passes it through)",
    )
    fp16_main_grads_copied: bool = Field(
        default=False,
        description="fp16 runs copy each gradient the rank updates to fp32 at the optimizer step (Megatron-LM's "
        "Float16OptimizerWithFloat16Params and DistributedOptimizer _copy_model_grads_to_main_grads: "
        "'main_param.grad = model_param.main_grad.float()', megatron/optimizer/optimizer.py @ v2.6): 4 B per updated "
        "parameter beside the static state while the step runs (bf16 with an fp32 gradient buffer keeps fp32 main grads "
        "already: no copy; with a bf16 buffer, grad_accumulation_fp32 false, Megatron-Core's DistributedOptimizer copies "
        "too unless its precision-aware optimizer reads the bf16 gradients: not priced)",
    )
    fp16_grads_flattened: bool = Field(
        default=False,
        description="at ZeRO 0 the fp16 step's fp32 gradient copy is concatenated from per-tensor casts that live beside "
        "it until torch.cat returns, so the step holds 8 B per updated parameter, not the copy's 4 "
        "(``costmodels.memory.optimizer_step_temp_bytes``): DeepSpeed's FP16_Optimizer, its optimizer for fp16 without "
        "ZeRO (deepspeed/runtime/fp16/fused_optimizer.py step: _flatten_dense_tensors([p.grad.to(fp32) for p in "
        "group])). Its ZeRO-1/2 optimizer frees the gradients outside the rank's partition first and is not counted "
        "so (BigScience's tr11 20B reading at dp 1 fits the copy's 4 B)",
    )
    grad_accumulation: Literal["fused", "main_grad", "autograd"] = Field(
        default="autograd",
        description="how each microbatch's weight gradients join the step's (costmodels.grad_accumulation): fused "
        "(the weight-gradient GEMM accumulates into the fp32 main grads: Megatron-Core's gradient_accumulation_fusion), "
        "main_grad (an add into the main-gradient buffer after every microbatch: Megatron-LM v2.6's DDP hook) or "
        "autograd (torch's AccumulateGrad adds into .grad from the second microbatch on)",
    )
    optimizer_implementation: Literal["fused", "foreach"] = Field(
        default="fused",
        description="the Adam kernels: fused (apex or Transformer Engine FusedAdam, torch's fused AdamW: no "
        "temporaries) or foreach (torch.optim.AdamW's default on CUDA, _multi_tensor_adam: one fp32 "
        "exp_avg_sq_sqrt per updated parameter during the step)",
    )
    allocator_fragmentation: float | None = Field(
        default=None, ge=0, lt=1, allow_inf_nan=False,
        description="share of the allocated bytes the CUDA caching allocator keeps reserved beyond them as this stack "
        "drives it (freed activation blocks that the optimizer step's and the gradient reduce's larger tensors "
        "cannot reuse; PyTorch before 2.1 has no expandable segments), fitted on the memory its published runs "
        "read (bench/allocator_share.py); replaces the cluster's allocator_fragmentation on GPU clusters. "
        "None: the cluster's",
    )
    allocator_fit_sources: list[str] = Field(
        default=[],
        description="the source_ids of profiles/calibration/public_runs.csv whose memory readings "
        "allocator_fragmentation was fitted on: `ppplan validate` prices each of them at the share fitted without "
        "its sweep (planner.trust.allocator_fit.heldout_memory_gib)",
    )
    optimizer_post_validation: OptimizerPostValidation | None = Field(
        default=None,
        description="the schedules and precisions under which the stack's optimizer step waits for no other pipeline "
        "stage (OptimizerPostValidation); None: every step ends with a pipeline-wide synchronisation",
    )
    kernels: StackKernels = StackKernels()
    overlap: StackOverlap

    def with_changes(self, changes: dict[str, object]) -> "StackSpec":
        """This stack with some fields of its parts replaced ({"kernels": {...}, "overlap": {...}}), or some of
        its own fields (a value that is not a dict), validated as a stack file is."""
        if not changes:
            return self
        update = {part: getattr(self, part).model_dump() | fields if isinstance(fields, dict) else fields
                  for part, fields in changes.items()}
        return StackSpec.model_validate(self.model_dump() | update)

    @model_validator(mode="after")
    def _check(self) -> "StackSpec":
        for field in ("schedules", "recompute", "zero", "precisions"):
            if not getattr(self, field):
                raise ValueError(f"{field} lists nothing: a stack runs at least one")
        bad = [z for z in self.zero if not 0 <= z <= 3]
        if bad:
            raise ValueError(f"zero {bad[0]} is not a ZeRO stage (0-3)")
        if self.activation_offload and self.emit not in OFFLOAD_EMIT_TARGETS:
            raise ValueError(f"activation_offload is Megatron-Core's cpu_offloading, but emit {self.emit} runs a job that "
                             "does not offload: set activation_offload: false, or emit: megatron or none")
        if self.overlap.backward_gather == "after_gradients" and self.emit in FSDP2_EMIT_TARGETS:
            raise ValueError(f"overlap.backward_gather after_gradients is FSDP1's BACKWARD_POST, but emit {self.emit} runs "
                             "FSDP2, which prefetches the backward's gathers: set backward_gather: prefetched, or emit: none")
        if self.overlap.cuda_graphs != "none" and self.emit != "none":
            raise ValueError(f"overlap.cuda_graphs {self.overlap.cuda_graphs}: the job ppplan writes for emit {self.emit} "
                             "captures no CUDA graphs: set overlap.cuda_graphs none, or emit: none")
        if self.emit in FSDP2_EMIT_TARGETS and (self.kernels.compiled_blocks or self.kernels.fused_cross_entropy):
            raise ValueError(f"emit {self.emit}: the job ppplan writes runs its blocks and its loss eager (torchtitan's with "
                             "[compile] off, ppplan's runtime uncompiled): set kernels.compiled_blocks and "
                             "kernels.fused_cross_entropy false, or emit: none")
        if self.kernels.moe_tp_input_grads_per_linear and (self.kernels.expert_dispatch != "tp_replicated"
                                                           or self.emit == "ppplan"):
            raise ValueError("kernels.moe_tp_input_grads_per_linear describes a tp_replicated dispatch whose backward "
                             "all-reduces each tp-sharded linear's input gradient (torchtitan v0.2.2); ppplan's runtime "
                             "reduces the block's input gradient once at its entry and tp_split reduce-scatters the "
                             "routed rows: set it false")
        k = self.kernels
        if k.sequence_parallel_regather_exposed and not k.sequence_parallel_keeps_gathered_inputs:
            raise ValueError("kernels.sequence_parallel_regather_exposed lets a plan keep the shards of the gathered inputs "
                             "a stack keeps otherwise, but sequence_parallel_keeps_gathered_inputs is false (the stack "
                             "keeps the shards always): set one of them true, the other false")
        post = self.optimizer_post_validation
        if post is not None:
            for field, runs in (("schedules", self.schedules), ("precisions", self.precisions)):
                extra = [x for x in getattr(post, field) if x not in runs]
                if extra:
                    raise ValueError(f"optimizer_post_validation.{field}: {extra[0]} is not in the stack's {field}")
        return self

    def held_precision(self, precision: str) -> str:
        """The precision a rank holds its parameters, gradients and optimizer state in: the run's, or fp32 where the
        stack runs 16-bit precisions as autocast over fp32 parameters (``autocasts``)."""
        return "fp32" if self.autocasts(precision) else precision

    @property
    def runs_fsdp(self) -> bool:
        """Whether the stack's data parallelism is PyTorch FSDP: its job runs FSDP2 (``FSDP2_EMIT_TARGETS``: ppplan's
        runtime, torchtitan), or it prices FSDP2's accumulation of unsharded gradients (``fsdp_unsharded_grads_fp32``;
        the corpus's Composer stack, torchtitan's with emit none)."""
        return self.emit in FSDP2_EMIT_TARGETS or self.fsdp_unsharded_grads_fp32

    def fsdp_wraps(self, data_ranks: int, zero: int, precision: str) -> bool:
        """Whether the stack's job wraps its stages in FSDP2 (``fully_shard``) for a run over ``data_ranks``
        data-context ranks (dp x cp) at ZeRO ``zero``: the one rule the cost model (FSDP2's host time, the fp32
        accumulation of unsharded gradients) and ppplan's runtime (launch/runtime/build.py) both apply.

        - Where it shards: ZeRO >= 1 over more than one rank (torchtitan's ``dp_shard``; at ZeRO 0 it runs DDP).
        - ``fsdp_mixed_precision_always`` (ppplan's runtime): also at ZeRO 0 over more than one rank, as HSDP
          with one shard, and on every bf16 run, on a one-rank mesh where dp x cp = 1, for FSDP2's
          ``MixedPrecisionPolicy`` (launch/runtime/fsdp.py MIXED_PRECISION).

        - Never where the stack's data parallelism is not PyTorch FSDP (``runs_fsdp``): a Megatron stack's ZeRO >= 1
          is its distributed optimizer."""
        if not self.runs_fsdp:
            return False
        if self.fsdp_mixed_precision_always:
            return data_ranks > 1 or precision == "bf16"
        return data_ranks > 1 and zero >= 1

    def autocasts(self, precision: str) -> bool:
        """True where a ``precision`` run is torch.autocast over fp32 parameters (``autocast_fp32_params``: 16-bit
        precisions on such a stack)."""
        return self.autocast_fp32_params and precision in ("bf16", "fp16")

    def grad_reduce_bytes_per_param(self, precision: str) -> int:
        """Bytes per parameter a data-parallel gradient reduction moves: the parameters' 2 for fp16 (Megatron's
        default without accumulate_allreduce_grads_in_fp32), 4 for fp32, and for bf16 and fp8 runs 4 where the
        stack reduces in fp32 (``grad_reduce_fp32``, else where it accumulates in fp32), 2 where it reduces the
        bf16 gradients themselves (Megatron-Core with grad_reduce_in_fp32 False)."""
        if precision in ("fp16", "fp32"):
            return 2 if precision == "fp16" else 4
        in_fp32 = self.grad_accumulation_fp32 if self.grad_reduce_fp32 is None else self.grad_reduce_fp32
        return 4 if in_fp32 else 2

    def steps_overlap(self, schedule: str, precision: str) -> bool:
        """True where consecutive steps overlap: the optimizer step is post-validated (OptimizerPostValidation)."""
        post = self.optimizer_post_validation
        return post is not None and schedule in post.schedules and precision in post.precisions
