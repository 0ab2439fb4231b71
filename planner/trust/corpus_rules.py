"""How the published-runs corpus maps onto ppplan: which rows come from one independent
source, which cluster preset and stack price a row, which GPU family fits its constants,
and the few assumptions a source supports for a field it leaves out.

Independent sources. The corpus names each publication (``source_id``: one NeMo
release's table, one MLPerf round, …). Releases of the same table repeat the same
layouts on the same software family, and every MLPerf GPT-3 / Llama 3.1 submission
runs NVIDIA's NeMo implementation, so leaving one release out while keeping its
sibling would leak the answer into the fit. A source here is the *measurement
campaign*: publications by the same team, with the same software, on the same kind
of benchmark, are one source (``SOURCE_FAMILIES``); every other ``source_id`` is its
own source. Held-out error is leave-one-*source*-out in this sense.
"""

from __future__ import annotations

import re

# (source_id prefix, independent source). Anything else is its own source.
SOURCE_FAMILIES: tuple[tuple[str, str], ...] = (
    ("nemo-perf-", "nemo-perf"),  # NVIDIA NeMo / Megatron-Bridge performance summaries, every release
    ("nemo-longctx", "nemo-perf"),  # the same team's long-sequence table
    ("dgxc-bench-", "dgxc-benchmarking"),  # NVIDIA DGX Cloud benchmarking recipes, every release
    ("mlperf-", "mlperf-training"),  # MLCommons Training rounds v3.0-v5.1 (NeMo-based submissions)
    ("bigscience-", "bigscience"),  # BigScience tr8 and tr11 on Jean Zay (Megatron-DeepSpeed)
    ("torchtitan-", "torchtitan"),  # pytorch/torchtitan benchmark reports
)

# GPU column -> cluster preset (profiles/clusters/). Rows with another GPU ("other": L4, a machine
# without a preset; H800) are skipped with the reason, unless their source names the machine below.
CLUSTER_OF_GPU: dict[str, str] = {
    "V100-32GB": "v100-32g-4gpu",
    "A100-40GB": "dgx-a100-40g",
    "A100-80GB": "dgx-a100-80g",
    "H100-SXM": "dgx-h100",
    "H200": "dgx-h200",
    "B200": "dgx-b200",
    "GB200": "gb200-nvl72",
}

# (independent source, GPU column) -> the cluster preset of the machine the source names, where it is not
# the GPU's default preset above.
CLUSTER_OF_SOURCE_GPU: dict[tuple[str, str], str] = {
    # BLOOM paper Sec. 3.4.1: Jean Zay, 4 Omni-Path 100 Gbps links per 8-GPU node (not a DGX's 8 HDR cards)
    ("bigscience", "A100-80GB"): "jean-zay-a100-80g",
    # torchtitan's 2024-12 and 2025-06 reports: Grand Teton hosts, H100 96 GB HBM2e at 500 W (report, "Hardware")
    ("torchtitan", "other"): "grand-teton-h100-96g",
    # GPT-NeoX-20B paper Sec. 3: four ConnectX-6 HDR HCAs per 8-GPU node (not a DGX's eight)
    ("gpt-neox-20b", "A100-40GB"): "eleuther-a100-40g",
}

# Cluster presets whose compute peak the source itself does not know: their rows are priced for memory
# only (memory does not depend on the clock), with this reason; a row without a memory reading is skipped.
MEMORY_ONLY_CLUSTERS: dict[str, str] = {
    "grand-teton-h100-96g": "500 W H100: its peak is 'between SXM and NVL, and we don't know its exact value' "
    "(torchtitan report, footnote 2): throughput not priced, memory only",
}

# Notes that say the memory reading is the caching allocator's reserved peak
# (``torch.cuda.max_memory_reserved``), which holds no CUDA context or NCCL buffers: it is compared with
# the prediction less what the rank holds outside the allocator (``costmodels.communicators.outside_allocator_gib``).
ALLOCATOR_MEMORY_NOTE = "caching allocator's max_reserved"
# Notes that say the reading is the caching allocator's allocated peak of the last rank
# (``torch.cuda.memory_stats()["allocated_bytes.all.peak"]`` as Megatron-LM logs it, from rank world_size - 1
# only: the last pipeline stage): compared with the last pipeline rank's prediction less what no tensor allocates
# (``costmodels.rank_memory.NOT_ALLOCATED_PARTS``); no allocator share is fitted on it (``allocator_fit.row_reading``).
ALLOCATED_LAST_RANK_NOTE = "allocated peak of the last rank"
# Notes that say the run unties the input embedding from the output layer (Megatron-LM
# --untie-embeddings-and-output-weights): two vocabulary-sized weights.
UNTIED_EMBEDDINGS_NOTE = "untied embeddings"
# Model families whose input embedding and output layer are two weights, as their sources' configs define them
# (a row's notes may say so too, UNTIED_EMBEDDINGS_NOTE); every other family ties them (Megatron-LM's GPT default,
# share_embeddings_and_output_weights True; BLOOM, MPT, OPT). Until 2026-12-07 every row was priced tied unless
# its notes said otherwise, against ppplan's own presets of these models.
UNTIED_FAMILIES: dict[str, str] = {
    "llama2": "Llama 2 unties its output layer (HF meta-llama/Llama-2-* config.json: tie_word_embeddings false)",
    "llama3": "Llama 3 unties its output layer (NVIDIA/dgxc-benchmarking 35a9aec llama3.1/llama3.1_8b.yaml L88, "
              "_70b.yaml L87, _405b.yaml L89: share_embeddings_and_output_weights false; profiles/models/llama3-*.yaml)",
    "nemotron": "Nemotron-4 unties its output layer (NVIDIA/dgxc-benchmarking 35a9aec nemotron/nemotron4-15b-synth.yaml "
                "L105, nemotron4-340b-synth.yaml L109: share_embeddings_and_output_weights false)",
    "grok1": "Grok-1 as DGXC runs it unties its output layer (NVIDIA/dgxc-benchmarking 35a9aec grok1/grok1_314b.yaml L96: "
             "share_embeddings_and_output_weights false)",
    "mixtral": "Mixtral unties its output layer (HF mistralai/Mixtral-8x* config.json: tie_word_embeddings false; "
               "profiles/models/mixtral-*.yaml)",
    "qwen3-moe": "Qwen3's MoE models untie their output layer (HF Qwen/Qwen3-30B-A3B, Qwen3-235B-A22B config.json: "
                 "tie_word_embeddings false; profiles/models/qwen3-30b-a3b.yaml)",
    "deepseek-v3": "DeepSeek-V3 unties its output layer (HF deepseek-ai/DeepSeek-V3 config.json: tie_word_embeddings "
                   "false; profiles/models/deepseek-v3.yaml)",
    "gpt-neox": "GPT-NeoX-20B unties its output layer (embed_out beside embed_in; HF EleutherAI/gpt-neox-20b "
                "config.json: tie_word_embeddings false)",
}


def cluster_of_row(source: str, gpu: str) -> str | None:
    """The cluster preset that prices a row's GPU column for its source (None: no preset)."""
    return CLUSTER_OF_SOURCE_GPU.get((source, gpu), CLUSTER_OF_GPU.get(gpu))


# stack column -> (stack preset, the assumption when it is not the row's own stack)
STACK_OF_ROW: dict[str, tuple[str, str | None]] = {
    "megatron-core": ("megatron-core", None),
    "megatron-lm-2021": ("megatron-lm-2021", None),
    "torchtitan": ("torchtitan", None),
    "composer-fsdp": ("torchtitan", "llm-foundry's Composer (PyTorch FSDP, flash attention, no TP/PP) priced as the "
                      "torchtitan stack, the preset with FSDP and flash attention"),
    "deepspeed": ("megatron-deepspeed", "GPT-NeoX's DeepSpeed pipeline engine and ZeRO-1 (Megatron-style TP, gradients "
                  "reduced after the backward) priced as the megatron-deepspeed stack, the engine BigScience's fork runs"),
}

# Sources whose runs are priced on another stack preset than their stack column names, or with other
# kernels or overlaps than the preset's, because the source's own code shows what ran: (the preset, the
# preset's fields it replaces ({"kernels": StackKernels fields, "overlap": StackOverlap fields}, or a StackSpec
# field with its value), the assumption with its evidence).
STACK_OF_SOURCE: dict[str, tuple[str, dict[str, object], str]] = {
    "bigscience": (
        "megatron-deepspeed", {},
        "BigScience's Megatron-DeepSpeed priced as the megatron-deepspeed stack (profiles/stacks/megatron-deepspeed.yaml: "
        "DeepSpeed's PipelineEngine keeps each microbatch's stage output until its backward, BF16_Optimizer keeps "
        "the bf16 gradients beside the fp32 accumulation, autograd accumulates fp16 gradients; its caching-allocator "
        "share was fitted on the tr11 readings, which validate reports in sample)",
    ),
    "korthikanti22": (
        "megatron-lm-2021", {"overlap": {"tp_comm": "backward_overlapped"}},
        "Megatron-LM of the paper's time (2022 main) runs the backward's TP collectives asynchronously beside the "
        "dgrad and wgrad GEMMs (megatron/mpu/layers.py LinearWithGradAccumulationAndAsyncCommunication: the "
        "input-gradient all-reduce, or with sequence parallelism the all-gather and reduce-scatter); the stack preset's "
        "v2.6 and Megatron-DeepSpeed (megatron/mpu/layers.py: a synchronous copy_to_tensor_model_parallel_region) do not",
    ),
    "llm-foundry": (
        "torchtitan", {"kernels": {"flash_generation": "triton", "fused_cross_entropy": True,
                                   "train_metric_cross_entropies": 2, "fsdp_copies": False},
                       "overlap": {"backward_gather": "after_gradients"}, "emit": "none",
                       "allocator_fragmentation": None, "allocator_fit_sources": []},
        "llm-foundry's Composer (PyTorch FSDP, no TP/PP) priced as the torchtitan stack with the Triton flash-attention "
        "kernel: the benchmark sweep (mosaicml/llm-foundry scripts/train/benchmarking/sweep.sh: image "
        "mosaicml/pytorch 1.13.1_cu117 @ 300cc5c58 for the tables of 2023-05, 2.1.0_cu121 @ b2a43a147 for those of "
        "2023-10 on) runs submit_benchmarks.py with its default attn_impl 'triton'; and with "
        "flash-attn's fused cross-entropy, which keeps the bf16 logits instead of an fp32 copy: the MPT yamls set no "
        "loss_fn and ComposerMPTCausalLM defaults to 'fused_crossentropy' (llmfoundry/models/mpt/modeling_mpt.py @ "
        "5e85bd62d, flash_attn.losses.cross_entropy.CrossEntropyLoss from setup.py's xentropy-cuda-lib v1.0.9); and "
        "with two training-metric cross-entropies over the logits after every microbatch's backward (the MPT model's "
        "use_train_metrics defaults to true: LanguageCrossEntropy and LanguagePerplexity, which Composer's "
        "Trainer._eval_train_metrics updates per microbatch, mosaicml/composer composer/trainer/trainer.py 2023-10); "
        "and with FSDP1's flat parameters (torch 2.1), which gather into the flat parameter itself and cast the "
        "gradient to the reduce dtype on the post-backward stream: none of FSDP2's copies on the compute stream; and "
        "with FSDP1's BackwardPrefetch.BACKWARD_POST, Composer's default (composer/trainer/dist_strategy.py "
        "set_fsdp_default @ v0.13.4 and v0.16.4: backward_prefetch 'BACKWARD_POST'; the MPT yamls and "
        "submit_benchmarks.py set limit_all_gathers but no prefetch), which gathers the next unit's parameters only "
        "after the current unit's gradients ('overlaps the current reduce-scatter and the next gradient computation', "
        "torch/distributed/fsdp/api.py): every backward all-gather is priced on the critical path; and with the "
        "clusters' a-priori caching-allocator share, not torchtitan's (fitted on torchtitan's own FSDP2 readings; "
        "llm-foundry publishes no memory)",
    ),
    "zero-bubble-iclr24": (
        "zero-bubble-megatron", {},
        "the paper's fork priced as the zero-bubble-megatron stack (sail-sg/zero-bubble-pipeline-parallelism arxiv "
        "branch f68d3879): its example script examples/pretrain_zero_bubble.sh passes --fp16 and "
        "--enable-optimizer-post-validation, which the fork keeps for the zero-bubble schedules alone, so the ZB-1p "
        "and ZB-2p rows' steps overlap and the 1F1B and 1F1B-I rows' do not; no --use-flash-attn, so attention is "
        "unfused (s^2 scores in HBM), and Megatron's default dropout 0.1 (set to 0 only for the exact-numeric-match "
        "tests); no --no-gradient-accumulation-fusion, so the weight-gradient GEMM accumulates into the main grads "
        "(NVIDIA/Megatron-LM 07916bf245, 2022-09-27, fp16 included)",
    ),
}


# Releases whose recipes reduce gradients in bf16 (Megatron-Core grad_reduce_in_fp32 False, or NeMo 1's
# distributed_fused_adam / mcore_distributed_optim with grad_sync_dtype: bf16), where the megatron-core preset
# keeps Megatron-LM's fp32 gradient buffer: (source_id prefix, a regular expression on the lower-cased run name of
# the rows it leaves out or None, the stack fields they replace, the assumption with its evidence). The gradient
# buffer and the data-parallel reduction are then 2 B per parameter, not 4 (StackSpec.grad_reduce_bytes_per_param).
# Adam's state stays fp32 unless a row's notes say otherwise. Releases not listed (NeMo 24.07's launcher configs,
# the long-sequence tables) keep the preset's fp32 buffer: their configs leave grad_sync_dtype unset or unread.
BF16_GRADS = {"grad_accumulation_fp32": False}
NEMO2_PERF_BF16_GRADS = (
    "gradients reduced in bf16, as NeMo 2's performance scripts run them: pretrain_recipe(performance_mode=True) sets "
    "recipe.trainer.plugins.grad_reduce_in_fp32 = False, and the plugin overrides the DDP config (NVIDIA/NeMo "
    "nemo/collections/llm/recipes/*.py pretrain_performance_optimizations, scripts/performance/helpers.py "
    "@ v2.2.0-v2.4.0; MegatronStrategy.connect update_config_with_dtype_overrides); Adam's state fp32")
BRIDGE_PERF_BF16_GRADS = (
    "gradients reduced in bf16, as Megatron-Bridge's performance scripts run them: they set "
    "mixed_precision.grad_reduce_in_fp32 and ddp.grad_reduce_in_fp32 False (NVIDIA-NeMo/Megatron-Bridge "
    "scripts/performance @ r0.1.0-v0.6.0); Adam's state fp32 (DeepSeek's recipes keep its moments in bf16: not priced)")
RELEASE_STACK_CHANGES: tuple[tuple[str, str | None, dict[str, object], str], ...] = (
    ("mlperf-", None, BF16_GRADS,
     "gradients reduced in bf16, as every MLPerf GPT-3, Llama 3.1 405B and Llama 3.1 8B submission ran them: NeMo 1's "
     "distributed_fused_adam with grad_sync_dtype: bf16 (training_results_v3.0 NVIDIA/benchmarks/gpt3/"
     "implementations/pytorch/conf/megatron_gpt_config.yaml; v3.1, v4.0 and v4.1 conf/optim/"
     "distributed_fused_adam.yaml, Oracle's and smc's logged configs) and Megatron-Core's grad_reduce_in_fp32=False "
     "(training_results_v5.0 llama31_405b pretrain.py DistributedDataParallelConfig; Nebius's logged config; "
     "training_results_v5.1 llama31_405b and llama31_8b pretrain.py, hard-coded in DistributedDataParallelConfig and "
     "MegatronMixedPrecision); Adam's "
     "state fp32"),
    ("dgxc-bench-35a9aec", None, BF16_GRADS,
     "gradients reduced in bf16, as the release's configs set: every recipe launches megatron_gpt_pretraining.py on "
     "the release's yaml, and each sets grad_sync_dtype: bf16 (NVIDIA/dgxc-benchmarking @35a9aec llama3.1/"
     "llama3.1_{8b,70b,405b}.yaml, nemotron/nemotron4-{15b,340b}-synth.yaml, grok1/grok1_314b.yaml, "
     "nemo_megatron/gpt3_175b_hydra.yaml); Adam's state fp32 except where the row's notes say bf16"),
    ("dgxc-bench-8f5cbb3", r"^nemotron4-15b", BF16_GRADS,
     "gradients reduced in bf16, as the release's NeMo 1 yaml sets grad_sync_dtype: bf16 (NVIDIA/dgxc-benchmarking "
     "@8f5cbb3: llama3.1, gpt3-175b and nemotron4-340b on distributed_fused_adam, grok1 on mcore_distributed_optim; "
     "its nemotron4-15b yaml sets none, so those rows keep fp32); Adam's state fp32 except where the row's notes say bf16"),
    ("dgxc-bench-1f6d9f4", None, BF16_GRADS,
     "gradients reduced in bf16: the release runs NeMo 2's scripts/performance/llm/pretrain_*.py (branch "
     "llmb-nemo-r2.3.0) in performance mode, which sets grad_reduce_in_fp32 False (pretrain_grok1_314b.py, "
     "scripts/performance/utils.py); Adam's state fp32"),
    ("nemo-perf-25.02", None, BF16_GRADS, NEMO2_PERF_BF16_GRADS),
    ("nemo-perf-25.04", None, BF16_GRADS, NEMO2_PERF_BF16_GRADS),
    ("nemo-perf-25.07", None, BF16_GRADS, NEMO2_PERF_BF16_GRADS),
    ("nemo-perf-25.09", None, BF16_GRADS, BRIDGE_PERF_BF16_GRADS),
    ("nemo-perf-25.11", None, BF16_GRADS, BRIDGE_PERF_BF16_GRADS),
    ("nemo-perf-26.", None, BF16_GRADS, BRIDGE_PERF_BF16_GRADS),
)


def release_stack_changes(source_id: str, run: str) -> tuple[dict[str, object], list[str]]:
    """The stack fields a row's release ran otherwise than its preset (``RELEASE_STACK_CHANGES``), merged, and
    their assumptions."""
    return _merged_rules([(fields, assumption) for prefix, unless, fields, assumption in RELEASE_STACK_CHANGES
                          if source_id.startswith(prefix) and not (unless and re.search(unless, run.lower()))])


def stack_of_row(source: str, stack_column: str) -> tuple[str, dict[str, object], str | None] | None:
    """(stack preset, its kernels and overlaps the row's source replaces, the assumption when it is
    not the row's own stack as it ran) for a row, or None when no preset prices its stack."""
    preset = STACK_OF_ROW.get(stack_column)
    if preset is None:
        return None
    return STACK_OF_SOURCE.get(source, (preset[0], {}, preset[1]))


# torchtitan's reports: "FSDP + torch.compile", "3D+compile+Float8" (not "without torch.compile")
TORCH_COMPILE_NOTE = r"(?<!without )torch\.compile|\+compile\b"

# What a row's notes say that the cost model does not price, as (regular expression on the
# lower-cased notes, the assumption it becomes).
NOTE_ASSUMPTIONS: tuple[tuple[str, str], ...] = (
    (r"bnb 8-bit", "bitsandbytes 8-bit Adam states priced as 16 B/param mixed-precision Adam (memory over-predicted)"),
    (r"partition 'type:transformer\|embedding'", "DeepSpeed's partition 'type:transformer|embedding' priced as it "
     "splits: each copy of the tied embedding weighs as a transformer layer (deepspeed/runtime/pipe/module.py "
     "_partition_layers: partition_balanced over 0/1 weights), so the first and last stage hold one layer fewer"),
    (r"mxfp8|blockwise", "MXFP8 / blockwise FP8 priced as FP8 (same fp8 peak)"),
    (TORCH_COMPILE_NOTE, "torch.compile fusions not modelled (element-wise work priced unfused)"),
    (r"fp8_params true|fp8_param_gather true", "FP8 weights (Transformer Engine's fp8_params, fp8_param_gather: the "
     "weights' working copy in FP8, all-gathered in FP8 by the distributed optimizer) not modelled: the weights held and "
     "gathered are priced at 2 B per parameter, so their memory and the parameter all-gather are priced high"),
    (r"recompute_modules [a-z_ ,]*\bmlp\b", "Megatron-Core's recompute_modules (mla_up_proj: MLA's up-projections in "
     "every layer; mlp: the dense layers' MLP, MoE layers skip it) not modelled: priced as selective recompute (the "
     "attention core), so the step is priced somewhat too fast"),
)

# Notes saying a row replayed the whole step as one CUDA graph: a full_iteration scope however spelt ("cuda graphs
# scope=full_iteration", Megatron's cuda_graph_scope, "cuda graph full_iteration") or full_cuda_graph set (MLPerf's
# FULL_CUDA_GRAPH=True, full_cuda_graph=1).
FULL_ITERATION_GRAPH_NOTE = r"cuda[ _]graphs?[ _](?:scope=\[?'?)?full_iteration|full_cuda_graph ?= ?(?:1|true)"
# Notes saying a row replayed each layer's passes as CUDA graphs: "CUDA graphs on" (not "no CUDA graphs on", nor
# followed by a partial scope such as "scope=['attn', ...]"), in notes that name no full-iteration graph.
PER_LAYER_GRAPH_NOTE = (r"(?s)^(?!.*(?:" + FULL_ITERATION_GRAPH_NOTE + r")).*?(?<!no )cuda graphs on(?![^;)]{0,12}scope=\[)"
                        r"(?=[\s;:,.()]|$)")

# What a row's notes say ran that a stack preset can price but its own emitted job does not run, as (regular
# expression on the lower-cased notes, the preset's fields it replaces, the assumption it becomes): the row is
# priced as it ran.
NOTE_STACK_CHANGES: tuple[tuple[str, dict[str, dict[str, object]], str], ...] = (
    (r"tp comm overlap=true|--tp-comm-overlap|ub_tp_comm_overlap: true|tp_comm_overlap=true", {"overlap": {"tp_comm": "overlapped"}},
     "TP communication overlap (--tp-comm-overlap, Transformer Engine userbuffers) priced overlapped, as the row ran"),
    (FULL_ITERATION_GRAPH_NOTE, {"overlap": {"cuda_graphs": "full_iteration"}, "emit": "none"},
     "the whole step replayed as one CUDA graph, as the row ran: no per-action host cost (StackOverlap.cuda_graphs "
     "full_iteration); the emitted Megatron-LM job captures none"),
    (PER_LAYER_GRAPH_NOTE, {"overlap": {"cuda_graphs": "per_layer"}, "emit": "none"},
     "each layer's passes replayed as CUDA graphs, as the row ran: the schedule, p2p and gradient hooks still run "
     "from the host, priced with the per-action cost (StackOverlap.cuda_graphs per_layer); the emitted Megatron-LM "
     "job captures none"),
    (r"overlap_p2p_comm: true", {"overlap": {"p2p": "overlapped"}},
     "interleaved pipeline p2p overlapped with compute (Megatron-Core overlap_p2p_comm, batch_p2p_comm off) priced "
     "overlapped, as the row ran: the sends and receives delay the next stage but do not hold the rank"),
    (r"distributed_fused_adam with dtype: bf16 and grad_sync_dtype: bf16", {"optimizer_state_bf16": True,
                                                                            "grad_accumulation_fp32": False},
     "Adam's state in bf16 and bf16 gradient buffers (NeMo 1's distributed_fused_adam with dtype: bf16 and "
     "grad_sync_dtype: bf16, Apex's DistributedFusedAdam): 2 B of gradients and 6 B of optimizer state per parameter, "
     "as the row ran"),
    (r"distributed_fused_adam with grad_sync_dtype: bf16 and fp32 state", {"grad_accumulation_fp32": False},
     "gradients in bf16 (NeMo 1's distributed_fused_adam with grad_sync_dtype: bf16, Apex's DistributedFusedAdam: its "
     "contiguous gradient buffer and the reduce in bf16), Adam's state fp32, as the row ran"),
    (r"moe_a2a_overlap: true|--overlap-moe-expert-parallel-comm", {"overlap": {"ep_comm": "overlapped"}},
     "expert all-to-all overlap (--overlap-moe-expert-parallel-comm, the recipe's moe_a2a_overlap) priced overlapped "
     "on every pass, as the row ran without a pipeline (Megatron-Core's combined_1f1b_schedule_for_no_pipelining; "
     "interleaved rows are priced as combined-1f1b instead)"),
    (r"moe_flex_dispatcher_backend hybridep", {"overlap": {"moe_host_s_per_operator": 0.0}},
     "flex token dispatcher with the HybridEP backend priced without the alltoall dispatcher's per-layer host "
     "synchronization (moe_host_s_per_operator 0): not read in code; these rows' throughput shows no host floor "
     "(DeepEP's normal dispatch does synchronize: it returns the per-expert counts as a host list, and keeps the floor)"),
    (TORCH_COMPILE_NOTE, {"kernels": {"compiled_blocks": True}, "emit": "none"},
     "transformer blocks under torch.compile, as the row ran: per-op selective recompute keeps only the outputs the "
     "backward reads (the partitioner's saved set, costmodels.selective_ac.unread_saved_bytes); the emitted torchtitan "
     "job runs eager"),
    (r"compiles the loss", {"kernels": {"fused_cross_entropy": True}, "emit": "none"},
     "the loss compiled with the model, as the row ran (torchtitan components/loss.py build_cross_entropy_loss under "
     "training.compile): inductor's cross-entropy keeps the bf16 logits and the log-sum-exp and writes their gradient "
     "once, in bf16 (measured on CPU, torch 2.13: saved tensors and the generated code's buffers), priced as a fused "
     "loss kernel"),
    (r"hidden_dropout 0\.1", {"kernels": {"dropout": True}},
     "dropout on, as the row ran: Megatron-Core's TransformerConfig defaults hidden_dropout and attention_dropout to 0.1 "
     "(megatron/core/transformer/transformer_config.py), which the row's config does not override: the residual "
     "dropouts keep their masks (Korthikanti et al. 2022, Sec. 4.1)"),
    (r"precision=amp_bf16, mp mode=default", {"kernels": {"full_recompute_early_stop": True}},
     "activation checkpointing as torch 2.1 runs it: the MP mode DEFAULT (amp_*) rows are the llm-foundry tables of "
     "2023-10 and later, whose sweep ran the mosaicml/pytorch 2.1.0_cu121 image (scripts/train/benchmarking/sweep.sh @ "
     "b2a43a147; the MP mode PURE rows are the 2023-05 tables, image 1.13.1_cu117 @ 300cc5c58); the MPT yamls set "
     "activation_checkpointing_reentrant: false, so Composer wraps each MPTBlock in torch's non-reentrant checkpoint "
     "(composer/trainer/dist_strategy.py @ v0.16.4, CheckpointImpl.NO_REENTRANT), which since torch 2.1.0 stops the "
     "re-run forward once the last saved tensor, the down projection's input, is packed again "
     "(torch/utils/checkpoint.py: 'Non-reentrant checkpoint stops recomputation as soon as all needed intermediate "
     "activations have been recomputed'): in bf16 the down projection (torch's nn.Linear) does not run again; the "
     "amp_fp8 rows' Transformer Engine linears are autograd Functions that save their inputs after their GEMM has "
     "run, so theirs re-run whole"),
    (r"mp mode=pure", {"grad_reduce_fp32": False},
     "Composer's FSDP mixed_precision PURE reduces the gradients in the run's precision, bf16: 2 B per parameter "
     "(composer get_mixed_precision @ v0.13.4 and v0.16.4: PURE sets param_dtype, reduce_dtype and buffer_dtype to "
     "the precision)"),
    (r"tokendrop|token dropping|padding to capacity", {"overlap": {"moe_host_s_per_operator": 0.0}},
     "token dropping pads every expert to its capacity (moe_pad_expert_input_to_capacity): the alltoall "
     "dispatcher's split sizes are static and it does not synchronize the host (token_dispatcher.py preprocess, "
     "drop_and_pad), so no host floor is priced"),
)

GPT2_VOCAB = 50_257  # GPT-2 BPE (Radford et al. 2019), the tokenizer of Megatron-LM's GPT examples
MEGATRON_VOCAB_DIVISOR = 128  # Megatron-LM --make-vocab-size-divisible-by default (padded to a multiple of 128 x tp)
GPT2_TOKENIZER_FAMILIES = ("gpt3", "gpt-like")


def note_assumptions(notes: str) -> list[str]:
    """The assumptions a row's notes imply (``NOTE_ASSUMPTIONS``)."""
    text = notes.lower()
    return [assumption for pattern, assumption in NOTE_ASSUMPTIONS if re.search(pattern, text)]


def merged_stack_changes(*changes: dict[str, object]) -> dict[str, object]:
    """Stack-field changes ({"kernels": {...}, "overlap": {...}}, or a stack field's own value) merged part by
    part, later ones winning."""
    out: dict[str, object] = {}
    for change in changes:
        for part, values in change.items():
            earlier = out.get(part)
            out[part] = earlier | values if isinstance(earlier, dict) and isinstance(values, dict) else values
    return out


def note_stack_changes(notes: str) -> tuple[dict[str, object], list[str]]:
    """The stack fields a row's notes say ran (``NOTE_STACK_CHANGES``), merged, and their assumptions."""
    text = notes.lower()
    return _merged_rules([(fields, assumption) for pattern, fields, assumption in NOTE_STACK_CHANGES
                          if re.search(pattern, text)])


def _merged_rules(found: list[tuple[dict[str, object], str]]) -> tuple[dict[str, object], list[str]]:
    """(stack-field changes, assumption) rules that apply to a row: their changes merged, and their assumptions."""
    return merged_stack_changes(*(fields for fields, _ in found)), [assumption for _, assumption in found]


def independent_source(source_id: str) -> str:
    """The measurement campaign a ``source_id`` belongs to (see the module docstring)."""
    for prefix, family in SOURCE_FAMILIES:
        if source_id.startswith(prefix):
            return family
    return source_id


# Architectures whose attention or experts the cost model does not have.
UNSUPPORTED_FAMILIES = {"gpt-oss": "gpt-oss: alternating sliding-window attention, attention sinks and biased experts"}


def category_of(row: dict[str, str]) -> str:
    """dense, moe (with or without cp) or long-context (cp > 1): the groups whose error is reported apart."""
    if (row.get("num_experts") or "").strip() not in ("", "0", "1"):
        return "moe"
    cp = (row.get("cp") or "").strip()
    if cp.isdigit() and int(cp) > 1:
        return "long-context"
    return "dense"


def padded_vocab(vocab: int, tp: int) -> int:
    """Megatron-LM pads the vocabulary to a multiple of 128·tp (``_vocab_size_with_padding``)."""
    step = MEGATRON_VOCAB_DIVISOR * tp
    return -(-vocab // step) * step


def default_vocab(model_family: str, tp: int, source_id: str = "") -> tuple[int | None, str]:
    """A vocabulary for a GPT-3-style row that does not state one: GPT-2's BPE as Megatron-LM
    pads it (the Megatron GPT examples and the GPT-3 175B recipes use a ~50k vocabulary). A row whose
    source shows another tokenizer states its vocabulary and the derivation in ``derived`` instead (the
    zero-bubble paper's: 32,000, the SentencePiece size its four model sizes need)."""
    if model_family not in GPT2_TOKENIZER_FAMILIES:
        return None, ""
    vocab = padded_vocab(GPT2_VOCAB, tp)
    return vocab, (f"vocab not stated: GPT-2 BPE ({GPT2_VOCAB:,}) padded to a multiple of "
                   f"{MEGATRON_VOCAB_DIVISOR}·tp = {vocab:,} assumed (Megatron-LM's default)")


def default_sequence_parallel(stack: str, tp: int, row_stack: str) -> tuple[bool, str]:
    """Sequence parallelism where the row leaves it blank: no TP, none; Megatron-Core recipes
    (NeMo / Megatron-Bridge performance configs) and torchtitan's TP plan turn it on with TP;
    the 2021-22 Megatron-LM / Megatron-DeepSpeed runs predate it (Korthikanti et al. 2022)."""
    if tp == 1:
        return False, ""
    if stack == "megatron-core":
        return True, "sequence parallel not stated: on with tp > 1, as the NeMo/Megatron-Bridge performance recipes set it"
    if stack == "torchtitan" and row_stack == "torchtitan":
        return True, "sequence parallel not stated: on with tp > 1 (torchtitan's TP plan shards norms over the sequence)"
    return False, f"sequence parallel not stated: off ({row_stack} runs of this era had none)"


def default_zero(source: str, dp: int) -> tuple[int | None, str]:
    """ZeRO stage where the row leaves it blank: irrelevant without data parallelism; BigScience's
    Megatron-DeepSpeed runs used ZeRO-1 (tr11 chronicles; assumed for tr8 too)."""
    if dp == 1:
        return 0, ""
    if source == "bigscience":
        return 1, "ZeRO stage not stated: ZeRO-1 assumed (BigScience's Megatron-DeepSpeed runs shard optimizer states)"
    return None, ""


# DeepSeek-V3 in Megatron-Bridge's recipes (NVIDIA-NeMo/Megatron-Bridge src/megatron/bridge/recipes/deepseek/h100/
# deepseek_v3.py @067f987df, _get_deepseek_v3_pipeline_layout, which the B200 and GB200 perf recipes call too): the
# decoder layers of each virtual stage for (pp, v), the embedding on the first and the MTP module and loss on the
# last; and one MTP module (mtp_num_layers = 1, read by the model bridge from config.json's num_nextn_predict_layers)
# unless the run is named without it.
DEEPSEEK_V3_RECIPE_LAYOUTS: dict[tuple[int, int], list[int]] = {
    (4, 1): [16, 16, 16, 13],
    (8, 1): [8] * 7 + [5],
    (4, 2): [8] * 7 + [5],
    (16, 1): [4] * 15 + [1],
    (8, 2): [4] * 15 + [1],
    (4, 4): [4] * 15 + [1],
}
DEEPSEEK_V3_RECIPE_SOURCE = "Megatron-Bridge recipes/deepseek/h100/deepseek_v3.py @067f987df"
DEEPSEEK_V3_RECIPE_MTP_LAYERS = 1
DEEPSEEK_V3_NO_MTP_RUN = "w/o mtp"
