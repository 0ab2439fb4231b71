"""Rows of the corpus -> priceable configurations or listed skips (``planner.trust.published_runs``)."""

from __future__ import annotations

from collections import Counter

import pytest

from costmodels.memory import GIB, stage_params
from costmodels.params import model_parameters
from planner.trust.calibration import estimate_with
from planner.trust.corpus_rules import independent_source, padded_vocab
from planner.trust.published_runs import REQUIRED_COLUMNS, PublishedRow, SkippedRow, layout_stages, parse_row, read_published_runs
from planner.trust.validation import _as_run, _prior, comparable_memory_gib
from profiles.loader import load_gpu_families, load_stack

ZB_ROW = {c: "" for c in REQUIRED_COLUMNS} | {
    "source_id": "zero-bubble-iclr24", "run": "ZB 1.5B p=8 m=24 1F1B", "sweep": "zb_1.5B", "model_family": "gpt-like",
    "layers": "22", "hidden": "2304", "heads": "24", "kv_heads": "24", "ffn_hidden": "9216", "seq_len": "1024",
    "activation": "gelu", "gpu": "A100-80GB", "n_gpus": "8", "tp": "1", "pp": "8", "dp": "1", "cp": "1", "v": "1",
    "mbs": "6", "global_batch": "144", "schedule": "1f1b", "recompute": "none", "precision": "fp16",
    "stack": "megatron-core", "metric": "tokens_per_s_per_gpu", "value": "12083", "peak_memory_gib": "30",
    "derived": "GBS = mbs * m", "notes": "m=24 microbatches; first & last stage have one fewer layer; vocab not stated",
}


def _skip(**changes: str) -> SkippedRow:
    row = parse_row({**ZB_ROW, **changes})
    assert isinstance(row, SkippedRow), row
    return row


def test_a_complete_row_is_priced_with_its_assumptions() -> None:
    row = parse_row(ZB_ROW, line=7)
    assert isinstance(row, PublishedRow)
    assert row.id == "zero-bubble-iclr24:7" and row.source == "zero-bubble-iclr24" and row.category == "dense"
    assert row.config.stage_layers == [2, 3, 3, 3, 3, 3, 3, 2]  # the end stages hold one layer fewer
    assert row.config.num_microbatches == 24 and row.config.zero == 0 and row.cluster.name == "dgx-a100-80g"
    assert (row.metric, row.measured, row.measured_peak_memory_gib) == ("tokens_per_s_per_gpu", 12083.0, 30.0)
    assert row.model.vocab_size == 50_304  # GPT-2's 50,257 padded to a multiple of 128 (tp = 1)
    assert any("50,304" in a for a in row.assumptions)
    assert "corpus: GBS = mbs * m" in row.assumptions


def test_megatron_pads_the_vocabulary_to_128_tp() -> None:
    assert padded_vocab(50_257, 1) == 50_304 and padded_vocab(50_257, 8) == 51_200 and padded_vocab(51_200, 8) == 51_200


@pytest.mark.parametrize("field, text, reason", [
    ("tp", "x", "malformed tp 'x' (a positive integer)"),
    ("tp", "0", "malformed tp '0' (a positive integer)"),
    ("value", "fast", "malformed value 'fast' (a number)"),
    ("value", "nan", "malformed value 'nan' (a positive finite number)"),
    ("schedule", "pipedream", "malformed schedule 'pipedream'"),
    ("recompute", "some", "malformed recompute 'some'"),
    ("sequence_parallel", "maybe", "malformed sequence_parallel 'maybe'"),
    ("mbs", "", "not stated: mbs"),
    ("source_id", " ", "not stated: source_id"),  # the held-out fit leaves a row's source out: it needs one
    ("recompute", "not stated", "not stated: recompute"),
    ("gpu", "other", "no cluster preset for GPU 'other'"),
    ("stack", "other", "no stack preset for 'other'"),
    ("schedule", "dualpipe", "not modelled yet: DeepSeek's DualPipe"),
    ("global_batch", "145", "global batch 145 is not divisible by dp*mbs = 1*6"),
])
def test_a_malformed_or_incomplete_row_is_a_listed_skip(field: str, text: str, reason: str) -> None:
    assert reason in _skip(**{field: text}).reason


def test_every_reason_is_listed_once() -> None:
    skipped = _skip(mbs="", recompute="not stated", gpu="other")
    assert skipped.reason.count("not stated") == 1
    assert _skip(tp="x").reason.count("malformed tp 'x'") == 1
    assert "mbs" in skipped.reason and "recompute" in skipped.reason and "no cluster preset" in skipped.reason


def test_moe_and_context_parallel_rows_are_priced_as_their_category() -> None:
    moe = parse_row({**ZB_ROW, "num_experts": "8", "experts_per_token": "2", "moe_ffn_hidden": "4608", "shared_experts": "0",
                     "first_dense_layers": "0", "ep": "4", "pp": "1", "dp": "8", "n_gpus": "8", "schedule": "1f1b", "mbs": "2",
                     "zero": "1", "notes": "force-balanced routing; vocab not stated"})
    assert isinstance(moe, PublishedRow), moe
    assert moe.category == "moe" and moe.config.ep == 4 and moe.model.num_experts == 8 and moe.model.experts_per_token == 2
    assert moe.model.moe_ffn_hidden_size == 4608 and moe.model.num_shared_experts == 0
    assert moe.expert_imbalance == 1.0 and any("force-balanced" in a for a in moe.assumptions)
    long_context = parse_row({**ZB_ROW, "cp": "2", "dp": "1", "n_gpus": "16"})
    assert isinstance(long_context, PublishedRow), long_context
    assert long_context.category == "long-context" and long_context.config.cp == 2


def test_experts_padded_to_capacity_carry_the_capacity_factor_times_the_mean_load() -> None:
    """Megatron-Core's moe_pad_expert_input_to_capacity: every expert processes capacity = c x the mean
    tokens (overflow dropped, the rest padded), so the busiest expert-parallel rank carries c x the mean."""
    fields = {**ZB_ROW, "num_experts": "8", "experts_per_token": "2", "moe_ffn_hidden": "4608", "shared_experts": "0",
              "first_dense_layers": "0", "ep": "4", "pp": "1", "dp": "8", "n_gpus": "8", "schedule": "1f1b", "mbs": "2",
              "zero": "1"}
    for notes, factor in (("MoE capacity factor 1.0 with padding to capacity", 1.0),
                          ("moe capacity factor 1.25 with padding to capacity; tokenizer stated", 1.25)):
        row = parse_row({**fields, "notes": notes})
        assert isinstance(row, PublishedRow), row
        assert row.expert_imbalance == factor
        assert any(f"padded to capacity factor {factor:g}" in a for a in row.assumptions)
    unstated = parse_row({**fields, "notes": "capacity factor 1.0 (no padding stated)"})
    assert isinstance(unstated, PublishedRow) and unstated.expert_imbalance is None


def test_moe_rows_the_cost_model_does_not_price_are_listed_skips() -> None:
    moe = {"num_experts": "8", "experts_per_token": "2", "moe_ffn_hidden": "4608", "ep": "2", "tp": "2", "pp": "1",
           "dp": "4", "n_gpus": "8", "mbs": "2", "zero": "1"}
    assert "expert TP 2 with tp 4: ppplan prices expert TP = tp or 1" in _skip(**{**moe, "tp": "4", "dp": "2"}, etp="2").reason
    assert "gpt-oss: alternating sliding-window attention" in _skip(**moe, model_family="gpt-oss").reason
    assert "not stated: experts_per_token" in _skip(**{**moe, "experts_per_token": ""}).reason


def test_a_row_with_expert_tp_1_under_tp_is_priced_with_the_experts_folded() -> None:
    """Megatron-Core's parallel folding (NeMo's Qwen3-235B and DeepSeek-V3 rows: TP 2, ETP 1): the row's
    configuration keeps etp 1, so each expert is whole on its rank and ep divides tp x dp x cp (8 here,
    where dp x cp = 4 would not admit ep 8)."""
    fields = {**ZB_ROW, "num_experts": "8", "experts_per_token": "2", "moe_ffn_hidden": "4608", "shared_experts": "0",
              "first_dense_layers": "0", "tp": "2", "etp": "1", "ep": "8", "pp": "1", "dp": "4", "n_gpus": "8",
              "schedule": "1f1b", "mbs": "2", "zero": "1", "precision": "bf16", "sequence_parallel": "true"}
    row = parse_row(fields)
    assert isinstance(row, PublishedRow), row
    assert (row.config.etp, row.config.expert_tp, row.config.expert_data_ranks) == (1, 1, 1)
    same = parse_row({**fields, "etp": "2", "ep": "4"})
    assert isinstance(same, PublishedRow) and same.config.etp is None and same.config.expert_tp == 2


def test_end_stages_may_hold_the_embedding_or_the_head_alone() -> None:
    # ZB's 1F1B-I: one layer per chunk, the embedding and the head alone on theirs (22 + 2 = 24 slots)
    row = parse_row({**ZB_ROW, "schedule": "interleaved-1f1b", "v": "3", "mbs": "6"})
    assert isinstance(row, PublishedRow), row
    assert row.config.stage_layers == [0] + [1] * 22 + [0]
    # without the source's word for it, 22 layers do not fill 24 stages; with it, 25 slots do not divide
    skipped = _skip(schedule="interleaved-1f1b", v="3", mbs="6", notes="m=24 microbatches")
    assert "22 layers cannot fill pp*v = 24 stages" in skipped.reason
    skipped = _skip(schedule="interleaved-1f1b", v="3", mbs="6", layers="23")
    assert "needs layers + 2 divisible by pp*v: 23 + 2 on 24 stages" in skipped.reason
    # BigScience's Megatron-DeepSpeed: DeepSpeed's 'type:transformer|embedding' partition weighs each embedding copy
    # as a layer: 22 + 2 units on 8 stages, 3 each
    deepspeed = parse_row({**ZB_ROW, "notes": "pp partition 'type:transformer|embedding' (embeddings get own pipeline slots)"})
    assert isinstance(deepspeed, PublishedRow) and deepspeed.config.stage_layers == [2, 3, 3, 3, 3, 3, 3, 2]
    assert any("_partition_layers" in a for a in deepspeed.assumptions)


def test_out_of_memory_rows_are_priced_for_memory_only() -> None:
    row = parse_row({**ZB_ROW, "metric": "oom", "value": "1"})
    assert isinstance(row, PublishedRow) and row.oom and row.measured is None


def test_a_machine_whose_peak_its_source_does_not_know_is_priced_for_memory_only() -> None:
    """torchtitan's Grand Teton H100s run at 500 W: the report does not know their peak (footnote 2), so
    their throughput is not priced; memory does not depend on the clock. A row without a memory reading
    has nothing left to check."""
    titan = {**ZB_ROW, "source_id": "torchtitan-bench-2412", "gpu": "other", "stack": "torchtitan", "pp": "1",
             "dp": "8", "schedule": "none", "mbs": "2", "global_batch": "16", "zero": "3", "precision": "bf16",
             "notes": "memory = max over GPUs of the caching allocator's max_reserved (torchtitan train.py)"}
    row = parse_row(titan)
    assert isinstance(row, PublishedRow), row
    assert row.cluster.name == "grand-teton-h100-96g" and row.metric == "memory" and row.measured is None
    assert not row.has_metric and not row.oom and row.measured_peak_memory_gib == 30.0
    assert any("500 W H100" in a for a in row.assumptions)
    assert row.memory_is_allocator_reserved
    skipped = _skip(**{**titan, "peak_memory_gib": ""})
    assert "500 W H100" in skipped.reason and "no memory reading" in skipped.reason


LLAMA3_8B_TITAN = {**ZB_ROW, "source_id": "torchtitan-bench-2412", "model_family": "llama3", "layers": "32",
                   "hidden": "4096", "heads": "32", "kv_heads": "8", "ffn_hidden": "14336", "vocab": "128256",
                   "seq_len": "8192", "activation": "swiglu", "gpu": "other", "stack": "torchtitan", "pp": "1",
                   "dp": "8", "v": "", "schedule": "none", "mbs": "2", "global_batch": "16", "recompute": "selective",
                   "zero": "3", "precision": "bf16", "metric": "memory", "value": "", "peak_memory_gib": "77.0",
                   "notes": "technique: FSDP; memory = max over GPUs of the caching allocator's max_reserved"}


def _breakdown(row: dict[str, str]) -> dict[str, float]:
    parsed = parse_row(row)
    assert isinstance(parsed, PublishedRow), parsed
    return estimate_with(_as_run(parsed, 1.0), _prior(parsed)).memory_breakdown_gib[0]


@pytest.mark.parametrize("technique", ["FSDP + torch.compile", "3D+compile+Float8"])
def test_a_compiled_row_keeps_what_its_backward_reads(technique: str) -> None:
    """torchtitan's "FSDP + torch.compile": each Llama block's w2 output, which the eager policy keeps and
    nothing in the backward reads, is not saved: 32 layers x one microbatch x 2 B x s·b·h (8192 x 2 x 4096)
    = 4 GiB less."""
    compiled = parse_row({**LLAMA3_8B_TITAN, "notes": f"technique: {technique}"})
    assert isinstance(compiled, PublishedRow) and compiled.stack_spec.kernels.compiled_blocks
    assert not parse_row(LLAMA3_8B_TITAN).stack_spec.kernels.compiled_blocks
    eager = _breakdown(LLAMA3_8B_TITAN)
    assert eager["activations"] - _breakdown({**LLAMA3_8B_TITAN, "notes": f"technique: {technique}"})["activations"] == \
        pytest.approx(32 * 2 * 8192 * 2 * 4096 / GIB, abs=2e-4)  # the breakdown rounds to 1e-4 GiB


def test_a_row_whose_loss_ran_compiled_is_priced_with_a_fused_loss() -> None:
    """torchtitan e7c0cae compiles the loss under --training.compile: it keeps the bf16 logits (2 B per logit,
    not the fp32 log-softmax's 4) and writes one bf16 gradient beside them (not two fp32 tensors): over
    s·b·V = 16384 x 128256 logits, 2 B less kept and 6 B less beside."""
    notes = "torch.compile; torchtitan e7c0cae compiles the loss with the model"
    row = parse_row({**LLAMA3_8B_TITAN, "notes": notes})
    assert isinstance(row, PublishedRow) and row.stack_spec.kernels.fused_cross_entropy
    assert not parse_row(LLAMA3_8B_TITAN).stack_spec.kernels.fused_cross_entropy
    logits = 8192 * 2 * 128256 / GIB
    eager = _breakdown({**LLAMA3_8B_TITAN, "notes": "torch.compile"})
    fused = _breakdown({**LLAMA3_8B_TITAN, "notes": notes})
    assert eager["activations"] - fused["activations"] == pytest.approx(2 * logits, abs=2e-4)  # rounded to 1e-4 GiB
    assert (eager["transient"], fused["transient"]) == pytest.approx((8 * logits, 2 * logits), abs=1e-4)


def test_the_corpus_rows_that_ran_compiled() -> None:
    """Which priced rows carry torch.compile's saved set and a compiled loss: torchtitan's December 2024 report
    (16 of its 18 rows: all but Table 1's and Table 3's eager FSDP) and Trainy's two H200 rows; the compiled loss
    only on Trainy's (torchtitan e7c0cae) beside llm-foundry's flash-attn loss. "without torch.compile" is not
    compiled."""
    rows = [r for r in read_published_runs() if isinstance(r, PublishedRow)]
    compiled = Counter(r.source_id for r in rows if r.stack_spec.kernels.compiled_blocks)
    assert compiled == {"torchtitan-bench-2412": 16, "torchtitan-trainy-h200": 2}
    fused = Counter(r.source_id for r in rows if r.stack_spec.kernels.fused_cross_entropy)
    assert fused == {"torchtitan-trainy-h200": 2} | {s: n for s, n in fused.items() if s.startswith("llm-foundry")}
    assert sum(n for s, n in fused.items() if s.startswith("llm-foundry")) == 216
    negated = parse_row({**LLAMA3_8B_TITAN, "notes": "technique: FSDP without torch.compile"})
    assert isinstance(negated, PublishedRow) and not negated.stack_spec.kernels.compiled_blocks


def test_an_allocator_reading_is_compared_without_the_runtime_reservation() -> None:
    """The caching allocator's reserved peak holds no CUDA context or NCCL buffers: ZB's 1.5B on pp 8 x tp 1
    (dp 1, tied embeddings): 4 communicators on every rank x 688 MB, the default group, the pipeline group and
    two peers on a middle rank, one peer and the group tying the embedding to the head on an end rank."""
    plain = parse_row(ZB_ROW)
    allocator = parse_row({**ZB_ROW, "notes": ZB_ROW["notes"] + "; the caching allocator's max_reserved"})
    assert isinstance(plain, PublishedRow) and isinstance(allocator, PublishedRow)
    assert not plain.memory_is_allocator_reserved and allocator.memory_is_allocator_reserved
    est = estimate_with(_as_run(plain, 1.0), _prior(plain))
    reserved = plain.cluster.runtime_reserved_gib
    assert reserved > 0
    assert comparable_memory_gib(plain, est) == max(est.peak_memory_gib)
    nccl = [parts["nccl_buffers"] for parts in est.memory_breakdown_gib]
    assert plain.model.tie_embeddings and nccl == pytest.approx([4 * 688 / 1024] * 8)
    assert comparable_memory_gib(allocator, est) == pytest.approx(
        max(peak - reserved - n for peak, n in zip(est.peak_memory_gib, nccl)))


def test_an_allocated_reading_of_the_last_rank_is_compared_with_that_rank_less_what_no_tensor_allocates() -> None:
    """Megatron-LM logs torch's allocated peak of rank world_size - 1 (the last pipeline stage): the last pipeline
    rank's predicted peak less the allocator's share, the CUDA context and NCCL's buffers."""
    notes = "untied embeddings; memory: allocated peak of the last rank"
    row = parse_row({**ZB_ROW, "metric": "memory", "value": "", "notes": notes})
    assert isinstance(row, PublishedRow) and row.memory_reading == "allocated_last_rank" and not row.has_metric
    assert row.metric == "memory" and row.measured is None and not row.model.tie_embeddings
    est = estimate_with(_as_run(row, 1.0), _prior(row))
    last = est.memory_breakdown_gib[-1]
    assert last["fragmentation"] > 0 and last["runtime_reserved"] > 0 and last["nccl_buffers"] > 0
    expected = est.peak_memory_gib[-1] - last["fragmentation"] - last["runtime_reserved"] - last["nccl_buffers"]
    assert comparable_memory_gib(row, est) == pytest.approx(expected)
    assert est.peak_memory_gib[-1] != max(est.peak_memory_gib)  # the last rank, not the busiest
    # Megatron-Core's default dropout, which the row ran (TransformerConfig hidden_dropout 0.1), keeps its masks
    core = {**ZB_ROW, "source_id": "megatron-lm-tests", "metric": "memory", "value": ""}
    plain, dropout = (parse_row({**core, "notes": notes + extra}) for extra in ("", "; hidden_dropout 0.1"))
    assert isinstance(plain, PublishedRow) and isinstance(dropout, PublishedRow)
    assert plain.stack == "megatron-core" and dropout.stack_spec.kernels.dropout and not plain.stack_spec.kernels.dropout
    kept = [estimate_with(_as_run(r, 1.0), _prior(r)).memory_breakdown_gib[-1]["activations"] for r in (plain, dropout)]
    # one microbatch in flight on the last of 8 stages, its 2 layers (22 = 3 x 6 + 2 + 2), each two 1-byte masks of
    # s·b·h = 1024 x 6 x 2304 (tp 1): 2 x 2 x 14,155,776 B = 0.052734375 GiB
    assert kept[1] - kept[0] == pytest.approx(2 * 2 * 1024 * 6 * 2304 / 2**30, abs=1e-4)
    # a row names one memory reading
    both = parse_row({**core, "notes": notes + "; the caching allocator's max_reserved"})
    assert isinstance(both, SkippedRow) and "notes name two memory readings" in both.reason
    # a memory-only row needs its reading
    skipped = parse_row({**ZB_ROW, "metric": "memory", "value": "", "peak_memory_gib": "", "notes": notes})
    assert isinstance(skipped, SkippedRow) and "metric memory without a peak_memory_gib reading" in skipped.reason


def test_tflops_follow_the_source_convention() -> None:
    hardware = parse_row({**ZB_ROW, "metric": "tflops_per_gpu", "value": "117", "notes": "117 TFLOP/s (HFU-style)"})
    model = parse_row({**ZB_ROW, "metric": "tflops_per_gpu", "value": "117", "notes": ""})
    assert isinstance(hardware, PublishedRow) and hardware.metric == "hw_tflops_per_gpu"
    assert isinstance(model, PublishedRow) and model.metric == "model_tflops_per_gpu"


def test_stacks_without_a_preset_are_priced_as_the_closest_one_and_say_so() -> None:
    row = parse_row({**ZB_ROW, "source_id": "a-composer-source", "stack": "composer-fsdp", "pp": "1", "dp": "8",
                     "schedule": "none", "notes": "", "global_batch": "48", "zero": "3"})
    assert isinstance(row, PublishedRow) and row.config.stack == "torchtitan"
    assert any("Composer" in a for a in row.assumptions)


def test_blank_sequence_parallel_and_zero_follow_the_stack() -> None:
    core = parse_row({**ZB_ROW, "source_id": "nemo-perf-25.09", "tp": "2", "pp": "1", "dp": "4", "schedule": "none",
                      "notes": "", "global_batch": "48", "zero": "1"})
    assert isinstance(core, PublishedRow) and core.config.sequence_parallel
    old = parse_row({**ZB_ROW, "tp": "2", "pp": "1", "dp": "4", "schedule": "none", "notes": "", "global_batch": "48",
                     "stack": "megatron-lm-2021", "source_id": "bigscience-tr11"})
    assert isinstance(old, PublishedRow) and not old.config.sequence_parallel and old.config.zero == 1
    unknown_zero = _skip(pp="1", dp="8", schedule="none", notes="", global_batch="48")
    assert "not stated: zero" in unknown_zero.reason


def test_notes_the_cost_model_does_not_price_become_assumptions() -> None:
    row = parse_row({**ZB_ROW, "notes": "bnb 8-bit Adam; TP comm overlap=True"})
    assert isinstance(row, PublishedRow)
    assert any(a.startswith("bitsandbytes 8-bit Adam states") for a in row.assumptions)
    # offload is priced now, and Megatron-Core runs it without a pipeline only: such a row is a listed skip
    offload_in_pipeline = parse_row({**ZB_ROW, "source_id": "nemo-perf-25.09",  # Megatron-Core, which offloads
                                     "notes": "activation CPU offload 20 layers (recipe)"})
    assert isinstance(offload_in_pipeline, SkippedRow) and "pipeline" in offload_in_pipeline.reason


def test_a_row_that_ran_tp_comm_overlap_is_priced_with_it() -> None:
    """A row whose notes say it ran Transformer Engine's TP communication overlap is priced with the
    stack's ``overlapped`` TP communication, merged with its source's own changes (the zero-bubble
    source's unfused attention stays), and says so; without the note it stays the preset's."""
    row = parse_row({**ZB_ROW, "notes": "TP comm overlap=True (recipe)"})
    plain = parse_row(ZB_ROW)
    assert isinstance(row, PublishedRow) and isinstance(plain, PublishedRow)
    assert row.stack_spec.overlap.tp_comm == "overlapped" and plain.stack_spec.overlap.tp_comm == "exposed"
    assert row.stack_spec.kernels.attention == plain.stack_spec.kernels.attention == "unfused"
    assert any(a.startswith("TP communication overlap") and a.endswith("priced overlapped, as the row ran")
               for a in row.assumptions)
    assert not any(a.startswith("TP communication overlap") for a in plain.assumptions)


def test_a_row_that_ran_cuda_graphs_is_priced_with_the_graphs_it_ran() -> None:
    """Notes saying a row replayed the whole step as one graph (a full_iteration scope, full_cuda_graph set) price it
    with ``cuda_graphs`` full_iteration; "CUDA graphs on" otherwise, per_layer (both with emit none: the Megatron-LM job
    ppplan writes captures none); graphs of a few modules only (scope=['attn', ...]), graphs off and silence leave
    the preset's none."""
    fields = {**ZB_ROW, "stack": "megatron-core", "source_id": "nemo-perf-25.11", "zero": "1"}
    expected = {
        "cuda graphs scope=full_iteration; model TFLOP/s/GPU=1519": "full_iteration",
        "enable_cuda_graph true, cuda_graph_scope=full_iteration": "full_iteration",
        "CUDA graphs on (full_cuda_graph=1, mcore_cuda_graph=1 in config_common_cg.sh)": "full_iteration",
        "CUDA graphs on (config L3 sources config_common_cg.sh, whose L1 sets FULL_CUDA_GRAPH=True)": "full_iteration",
        "SP default True; CUDA graphs on; seq 2048": "per_layer",
        "CUDA graphs on (LAYER_CUDA_GRAPH=1)": "per_layer",
        "cuda graphs scope=['attn', 'moe_router']": "none",
        "CUDA graphs off (mcore_cuda_graph=false in config)": "none",
        "no CUDA graphs on this run": "none",
        "CUDA graphs on: scope=['attn']": "none",
        "cuda graphs one day": "none",
        "custom.yaml has no full_cuda_graph key": "none",
        "": "none",
    }
    for notes, graphs in expected.items():
        row = parse_row({**fields, "notes": notes})
        assert isinstance(row, PublishedRow), (notes, row)
        assert row.stack_spec.overlap.cuda_graphs == graphs, notes
        assert (row.stack_spec.emit == "none") == (graphs != "none"), notes
        said = [a for a in row.assumptions if "CUDA graph" in a]
        assert len(said) == (graphs != "none") and all(graphs in a for a in said), (notes, said)


def test_nemo2_recipes_tp_overlap_and_interleaved_p2p_overlap_are_priced_as_they_ran() -> None:
    """NeMo 2 and Megatron-Bridge recipes say ``tp_comm_overlap=True`` (MegatronCommOverlapCallback, CommOverlapConfig);
    with interleaving their overlap config also sets ``overlap_p2p_comm``: the row's stack hides TP collectives behind
    the GEMMs and its pipeline sends no longer hold the rank, each with its assumption."""
    fields = {**ZB_ROW, "tp": "2", "pp": "2", "v": "2", "dp": "2", "schedule": "interleaved-1f1b", "zero": "1"}
    row = parse_row({**fields, "notes": "MegatronCommOverlapCallback(tp_comm_overlap=True); overlap_p2p_comm: true (callback)"})
    plain = parse_row({**fields, "notes": ""})
    assert isinstance(row, PublishedRow) and isinstance(plain, PublishedRow), (row, plain)
    assert (row.stack_spec.overlap.tp_comm, row.stack_spec.overlap.p2p) == ("overlapped", "overlapped")
    assert (plain.stack_spec.overlap.tp_comm, plain.stack_spec.overlap.p2p) == ("exposed", "exposed")
    assert any(a.startswith("interleaved pipeline p2p overlapped") for a in row.assumptions)
    assert not any(a.startswith("interleaved pipeline p2p") for a in plain.assumptions)


def test_every_mlperf_row_is_priced_with_the_overlap_its_implementation_ran() -> None:
    """NVIDIA's MLPerf GPT-3 and Llama 3.1 405B implementations (v3.0-v5.1) run the interleaved schedule with
    ``overlap_p2p_comm`` on and ``batch_p2p_comm`` off (their run_and_time.sh or conf/custom.yaml defaults, which no
    config overrides): every shipped pipelined MLPerf row says so and is priced so; the Llama 3.1 8B rows run no
    pipeline. TP comm overlap as each row's config set it: off in v3.0's and in the University of Florida's v5.1
    405B configs (``#export TP_COMM_OVERLAP=True`` commented out, custom.yaml's default False) and in Cisco's 8B
    pretrain.py (its overlap callback commented out), which leaves the preset's asynchronous backward collectives;
    on elsewhere."""
    from planner.trust.published_runs import read_published_runs

    rows = [r for r in read_published_runs() if isinstance(r, PublishedRow) and r.source_id.startswith("mlperf")]
    assert len(rows) == 53, len(rows)
    pipelined = [r for r in rows if r.config.pp > 1]
    assert {r.run for r in rows if r.config.pp == 1} == {r.run for r in rows if "llama31_8b" in r.run}
    assert {r.run for r in pipelined if (r.config.schedule, r.stack_spec.overlap.p2p) != ("interleaved-1f1b", "overlapped")} == set()
    assert all(any(a.startswith("interleaved pipeline p2p overlapped") for a in r.assumptions) for r in pipelined)
    exposed_tp = {r.run for r in rows if r.config.tp > 1 and r.stack_spec.overlap.tp_comm != "overlapped"}
    uf_405b = {r.run for r in rows if r.source_id == "mlperf-v5.1" and "University-of-Florida llama31_405b" in r.run}
    cisco_tp2 = {"MLPerf v5.1 Cisco llama31_8b 128GPU"}  # its pretrain.py leaves the overlap callback commented out
    assert exposed_tp == {r.run for r in rows if r.source_id == "mlperf-v3.0"} | uf_405b | cisco_tp2, exposed_tp
    assert len(exposed_tp) == 8 and len(uf_405b) == 2


def test_a_row_whose_optimizer_kept_bf16_state_is_priced_with_it() -> None:
    """NeMo 1's distributed_fused_adam with dtype: bf16 and grad_sync_dtype: bf16 (dgxc's Nemotron-4 340B yaml): the
    row's stack keeps bf16 gradients (2 B) and 6 B of Adam state per updated parameter instead of Megatron's fp32
    gradients (4 B) and 12 B; the estimate's static memory follows, by hand from the stage's parameters."""
    fields = {**ZB_ROW, "tp": "1", "pp": "8", "dp": "2", "n_gpus": "16", "zero": "1", "precision": "bf16"}
    row = parse_row({**fields, "notes": "optim: distributed_fused_adam with dtype: bf16 and grad_sync_dtype: bf16 (yaml)"})
    plain = parse_row({**fields, "notes": ""})
    assert isinstance(row, PublishedRow) and isinstance(plain, PublishedRow), (row, plain)
    assert (row.stack_spec.optimizer_state_bf16, row.stack_spec.grad_accumulation_fp32) == (True, False)
    assert (plain.stack_spec.optimizer_state_bf16, plain.stack_spec.grad_accumulation_fp32) == (False, True)
    assert any(a.startswith("Adam's state in bf16") for a in row.assumptions)
    est = estimate_with(_as_run(row, 1.0), _prior(row))
    layers = (row.config.stage_layers or [])[1]
    params = stage_params(row.model, layers, False, False, 1)  # the second stage: no embedding or head
    memory = est.memory_breakdown_gib[1]
    assert (memory["gradients"], memory["optimizer"]) == pytest.approx((2 * params / GIB, 6 * params / 2 / GIB), rel=1e-3)


@pytest.mark.parametrize("source_id, run, bf16_grads", [
    ("mlperf-v4.1", "MLPerf v4.1 NVIDIA gpt3 256GPU", True),  # distributed_fused_adam, grad_sync_dtype: bf16
    ("mlperf-v5.0", "MLPerf v5.0 NVIDIA llama31_405b 512GPU", True),  # DistributedDataParallelConfig(grad_reduce_in_fp32=False)
    ("dgxc-bench-35a9aec", "nemotron4-15b bf16 16xH100-SXM", True),  # every yaml of the release sets bf16
    ("dgxc-bench-8f5cbb3", "llama3-70b bf16 64xH100-SXM", True),
    ("dgxc-bench-8f5cbb3", "nemotron4-15b bf16 16xH100-SXM", False),  # that release's 15B yaml sets no grad_sync_dtype
    ("nemo-perf-25.04", "LLAMA3-70B DGX-H100 FP8 64GPU", True),  # NeMo 2 performance mode
    ("nemo-perf-26.04.01", "LLAMA3_70B DGX-GB200 MXFP8 64GPU", True),  # Megatron-Bridge perf scripts
    ("nemo-perf-24.07", "LLAMA3-70B DGX-H100 FP8 64GPU", False),  # NeMo 24.07 launcher configs: grad_sync_dtype unset
])
def test_a_release_that_reduces_gradients_in_bf16_is_priced_with_them(source_id, run, bf16_grads) -> None:
    """The perf recipes of NeMo 2, Megatron-Bridge, the dgxc releases and MLPerf set grad_reduce_in_fp32 False (or
    grad_sync_dtype: bf16): the row's stack keeps a bf16 gradient buffer, 2 B per parameter held and reduced, where
    the megatron-core preset keeps Megatron-LM's fp32 one (4 B); Adam's state stays 12 B."""
    fields = {**ZB_ROW, "source_id": source_id, "run": run, "tp": "1", "pp": "8", "dp": "2", "n_gpus": "16", "zero": "1",
              "precision": "bf16", "notes": ""}
    row = parse_row(fields)
    assert isinstance(row, PublishedRow), row
    assert row.stack_spec.grad_accumulation_fp32 is not bf16_grads
    assert row.stack_spec.grad_reduce_bytes_per_param("bf16") == (2 if bf16_grads else 4)
    assert any(a.startswith("gradients reduced in bf16") for a in row.assumptions) is bf16_grads
    est = estimate_with(_as_run(row, 1.0), _prior(row))
    params = stage_params(row.model, (row.config.stage_layers or [])[1], False, False, 1)
    memory = est.memory_breakdown_gib[1]
    assert (memory["gradients"], memory["optimizer"]) == pytest.approx(
        ((2 if bf16_grads else 4) * params / GIB, 12 * params / 2 / GIB), rel=1e-3)


def test_a_row_whose_recipe_overlaps_the_all_to_all_is_priced_with_it() -> None:
    """Megatron-Bridge's moe_a2a_overlap (Megatron-Core --overlap-moe-expert-parallel-comm): the row's stack
    hides the expert all-to-alls under another microbatch's compute, and says so; "false" keeps them exposed."""
    fields = {**ZB_ROW, "num_experts": "8", "experts_per_token": "2", "moe_ffn_hidden": "4608", "shared_experts": "0",
              "first_dense_layers": "0", "ep": "8", "pp": "1", "dp": "8", "n_gpus": "8", "schedule": "1f1b", "mbs": "2",
              "zero": "1", "precision": "bf16"}
    row = parse_row({**fields, "notes": "moe_a2a_overlap: true (recipe)"})
    plain = parse_row({**fields, "notes": "moe_a2a_overlap: false (recipe)"})
    assert isinstance(row, PublishedRow) and isinstance(plain, PublishedRow)
    assert (row.stack_spec.overlap.ep_comm, plain.stack_spec.overlap.ep_comm) == ("overlapped", "exposed")
    assert any(a.startswith("expert all-to-all overlap") for a in row.assumptions)
    assert not any(a.startswith("expert all-to-all overlap") for a in plain.assumptions)
    # with interleaving it ran Megatron-Core's combined 1F1B: priced as that schedule, the stack's overlap kept exposed
    interleaved = parse_row({**fields, "notes": "moe_a2a_overlap: true (recipe)", "pp": "2", "v": "2", "dp": "4", "ep": "4",
                             "schedule": "interleaved-1f1b"})
    assert isinstance(interleaved, PublishedRow), interleaved
    assert (interleaved.config.schedule, interleaved.stack_spec.overlap.ep_comm) == ("combined-1f1b", "exposed")
    assert any("combined 1F1B" in a for a in interleaved.assumptions)


def test_independent_sources_and_gpu_families() -> None:
    assert independent_source("nemo-perf-25.09") == independent_source("nemo-longctx") == "nemo-perf"
    assert independent_source("mlperf-v4.1") == "mlperf-training"
    assert independent_source("korthikanti22") == "korthikanti22"
    families = load_gpu_families()
    names = ("A100-SXM4-80GB", "H200-SXM-141GB", "H800", "GB200", "B200-180GB", "V100-SXM2-32GB", "cpu", "MI300X")
    assert [families.family_of(g).name for g in names] == ["A100", "H100", "H100", "B200", "B200", "V100", "cpu", "generic"]


def test_a_source_whose_code_shows_other_kernels_is_priced_with_them() -> None:
    """The zero-bubble scripts of the paper's time run the legacy Megatron-LM model without
    --use-flash-attn and with Megatron's default dropout (megatron-lm-2021's kernels), on the paper's fork,
    which post-validates the optimizer step of its zero-bubble schedules in fp16 alone: the
    zero-bubble-megatron stack."""
    row = parse_row(ZB_ROW)
    assert isinstance(row, PublishedRow)
    assert row.stack == row.config.stack == "zero-bubble-megatron"
    assert row.stack_spec.kernels.attention == "unfused" and row.stack_spec.kernels.dropout
    assert row.stack_spec.grad_accumulation == "fused"
    assert any("use-flash-attn" in a for a in row.assumptions)
    assert any("post-validation" in a for a in row.assumptions)
    steps_overlap = row.stack_spec.steps_overlap
    assert steps_overlap("zb-h2", "fp16") and steps_overlap("zb-h1", "fp16")
    assert not steps_overlap("1f1b", "fp16") and not steps_overlap("interleaved-1f1b", "fp16")
    assert not steps_overlap("zb-h2", "bf16")  # the fork asserts fp16 for post-validation



def test_the_zero_bubble_rows_vocabulary_gives_the_papers_model_sizes() -> None:
    """The paper states its models' sizes, not their vocabulary, and its script's SentencePiece model is not
    published. The shipped rows' 32,000 pieces give all four sizes to the paper's 0.1 B (``model_parameters``: tied
    embeddings, learned positions); GPT-2's 50,304 would give three of them wrong (6.25, 14.74, 28.41 B)."""
    rows = [r for r in read_published_runs() if isinstance(r, PublishedRow) and r.source == "zero-bubble-iclr24"]
    models = {float(r.run.split()[1].removesuffix("B")): r.model for r in rows}
    assert len(rows) == 48 and sorted(models) == [1.5, 6.2, 14.6, 28.3]
    assert all(r.model.vocab_size == 32_000 and any("32,000-piece" in a for a in r.assumptions) for r in rows)
    sizes = {b: round(model_parameters(m).total / 1e9, 1) for b, m in models.items()}
    assert sizes == {1.5: 1.5, 6.2: 6.2, 14.6: 14.6, 28.3: 28.3}
    gpt2 = {b: round(model_parameters(m.model_copy(update={"vocab_size": 50_304})).total / 1e9, 1) for b, m in models.items()}
    assert [b for b in sorted(models) if gpt2[b] != b] == [6.2, 14.6, 28.3]


def test_source_overrides_of_kernels_overlaps_and_clusters() -> None:
    foundry = parse_row({**ZB_ROW, "source_id": "llm-foundry", "stack": "composer-fsdp", "gpu": "H100-SXM", "pp": "1",
                         "dp": "8", "zero": "3", "mbs": "2", "global_batch": "32", "notes": ""})
    assert isinstance(foundry, PublishedRow) and foundry.stack == "torchtitan"
    assert foundry.stack_spec.kernels.flash_generation == "triton" and foundry.stack_spec.overlap.tp_comm == "exposed"
    korthikanti = parse_row({**ZB_ROW, "source_id": "korthikanti22", "stack": "megatron-lm-2021", "tp": "8", "pp": "1",
                             "heads": "24", "notes": ""})
    assert isinstance(korthikanti, PublishedRow)
    assert korthikanti.stack_spec.overlap.tp_comm == "backward_overlapped" and korthikanti.stack_spec.kernels.attention == "unfused"
    bloom = parse_row({**ZB_ROW, "source_id": "bigscience-tr11", "stack": "megatron-lm-2021", "zero": "1", "notes": ""})
    assert isinstance(bloom, PublishedRow) and bloom.cluster.name == "jean-zay-a100-80g"
    assert (bloom.cluster.nics_per_node, bloom.cluster.nic_bandwidth_gbit_s) == (4, 100)
    assert parse_row({**ZB_ROW, "source_id": "mlperf-v4.0", "notes": ""}).cluster.name == "dgx-a100-80g"
    neox = parse_row({**ZB_ROW, "source_id": "gpt-neox-20b", "gpu": "A100-40GB", "stack": "deepspeed", "notes": ""})
    assert isinstance(neox, PublishedRow) and neox.cluster.name == "eleuther-a100-40g"  # four HCAs per node
    assert (neox.cluster.nics_per_node, neox.cluster.nic_bandwidth_gbit_s) == (4, 200)


def test_bigscience_bf16_rows_keep_deepspeeds_bf16_gradients_beside_the_fp32_ones() -> None:
    """DeepSpeed's BF16_Optimizer (bf16, ZeRO-1) keeps each bf16 gradient (2 B) beside its full-size fp32
    accumulation (4 B): the stage's gradients are 6 B per parameter, unsharded; fp16 rows keep 2 B."""
    bf16 = parse_row({**ZB_ROW, "source_id": "bigscience-tr11", "stack": "megatron-lm-2021", "precision": "bf16",
                      "dp": "1", "pp": "8", "notes": ""})
    assert isinstance(bf16, PublishedRow) and bf16.stack_spec.bf16_grads_kept_beside_fp32
    assert any("BF16_Optimizer" in a for a in bf16.assumptions)
    assert not load_stack("megatron-lm-2021").bf16_grads_kept_beside_fp32  # the preset itself is unchanged
    est = estimate_with(_as_run(bf16, 1.0), _prior(bf16))
    params = stage_params(bf16.model, 3, False, False, 1)  # a middle stage: 3 layers, tp 1
    assert est.memory_breakdown_gib[1]["gradients"] == pytest.approx(6 * params / GIB, abs=1e-4)
    assert est.memory_breakdown_gib[1]["weights"] == pytest.approx(2 * params / GIB, abs=1e-4)
    fp16 = parse_row({**ZB_ROW, "source_id": "bigscience-tr11", "stack": "megatron-lm-2021", "dp": "1", "pp": "8",
                      "notes": ""})
    assert isinstance(fp16, PublishedRow)
    fp16_est = estimate_with(_as_run(fp16, 1.0), _prior(fp16))
    assert fp16_est.memory_breakdown_gib[1]["gradients"] == pytest.approx(2 * params / GIB, abs=1e-4)


def test_bigscience_rows_keep_deepspeeds_stage_outputs_until_their_backward() -> None:
    """DeepSpeed's PipelineEngine keeps each microbatch's stage output (s·b·h fp16, no sequence parallelism) in
    pipe_buffers['outputs'] until that microbatch's backward, on every stage but the last (whose output is the loss):
    ZB's 1.5B shape at pp 8, 1F1B, mbs 6, seq 1024 holds 8 - r outputs of 6 x 1,024 x 2,304 x 2 B on rank r, and the
    head stage none; the same row on the megatron-lm-2021 preset (Megatron's engine) none."""
    ds = parse_row({**ZB_ROW, "source_id": "bigscience-tr11", "stack": "megatron-lm-2021", "dp": "1", "pp": "8",
                    "notes": ""})
    plain = parse_row({**ZB_ROW, "stack": "megatron-lm-2021", "dp": "1", "pp": "8", "notes": ""})
    assert isinstance(ds, PublishedRow) and isinstance(plain, PublishedRow)
    assert ds.stack_spec.pipeline_keeps_stage_outputs and not plain.stack_spec.pipeline_keeps_stage_outputs
    assert any("PipelineEngine" in a for a in ds.assumptions)
    kept, without = estimate_with(_as_run(ds, 1.0), _prior(ds)), estimate_with(_as_run(plain, 1.0), _prior(plain))
    output = 6 * 1024 * 2304 * 2
    for rank in (0, 3):
        extra = kept.memory_breakdown_gib[rank]["activations"] - without.memory_breakdown_gib[rank]["activations"]
        assert extra == pytest.approx((8 - rank) * output / GIB, abs=2e-4)  # the breakdown is rounded to 1e-4 GiB
    assert kept.memory_breakdown_gib[7]["activations"] == pytest.approx(without.memory_breakdown_gib[7]["activations"])


def test_a_row_without_the_alltoall_dispatchers_host_sync_is_priced_without_the_host_floor() -> None:
    """megatron-core prices a host floor on MoE layers because its dropless alltoall dispatcher synchronizes the
    host in every layer; a row that ran the HybridEP flex dispatcher, or dropped and padded tokens to capacity
    (static split sizes, no sync), is priced without it and says so; DeepEP's dispatch keeps it."""
    fields = {**ZB_ROW, "num_experts": "8", "experts_per_token": "2", "moe_ffn_hidden": "4608", "shared_experts": "0",
              "first_dense_layers": "0", "ep": "8", "pp": "1", "dp": "8", "n_gpus": "8", "schedule": "1f1b", "mbs": "2",
              "zero": "1", "precision": "bf16", "stack": "megatron-core", "source_id": "nemo-perf-26.04"}
    floor = load_stack("megatron-core").overlap.moe_host_s_per_operator
    assert floor > 0
    for notes, expected in (("moe_flex_dispatcher_backend hybridep (not modelled)", 0.0),
                            ("MoE capacity factor 1.25 with padding to capacity", 0.0),
                            ("table variant: tokendrop", 0.0), ("moe_flex_dispatcher_backend deepep", floor),
                            ("MoE benchmark: force-balanced routing, dropless", floor)):
        row = parse_row({**fields, "notes": notes})
        assert isinstance(row, PublishedRow), row
        assert row.stack_spec.overlap.moe_host_s_per_operator == expected, notes
        assert any("host floor" in a or "host synchronization" in a for a in row.assumptions) == (expected == 0.0), notes
        assert not row.stack_fit_row


def test_a_row_that_offloads_activations_is_priced_offloading_them() -> None:
    """Notes saying 'activation CPU offload N layers' (Megatron-Bridge's cpu_offloading_num_layers) price the row with
    ``offload_layers`` N (``costmodels.offload``); a row without them offloads nothing."""
    bridge = {**ZB_ROW, "source_id": "nemo-perf-25.09", "pp": "1", "dp": "8", "n_gpus": "8", "schedule": "1f1b",
              "recompute": "none", "zero": "1"}  # Megatron-Bridge's recipes offload, on Megatron-Core
    row = parse_row({**bridge, "notes": "Megatron-FSDP; activation CPU offload 20 layers (recipe)"})
    assert isinstance(row, PublishedRow), row
    assert row.config.offload_layers == 20
    plain = parse_row({**ZB_ROW, "pp": "1", "dp": "8", "n_gpus": "8", "schedule": "1f1b", "recompute": "none", "zero": "1",
                       "notes": "Megatron-FSDP"})
    assert isinstance(plain, PublishedRow), plain
    assert plain.config.offload_layers == 0
    # more layers than the model has: a listed skip, by the rule evaluate applies (costmodels.rules.offload_violations)
    too_many = parse_row({**bridge, "notes": "Megatron-FSDP; activation CPU offload 999 layers (recipe)"})
    assert isinstance(too_many, SkippedRow) and f"offload_layers 999: at most {int(ZB_ROW['layers']) - 1}" in too_many.reason


def test_megatron_pipeline_layout_strings_expand_to_their_stages() -> None:
    """Megatron-Core's --pipeline-model-parallel-layout: '|' splits stages, "(...)*n" and "t*n" repeat."""
    assert layout_stages("Et|(tt|)*2mL") == ["Et", "tt", "tt", "mL"]
    assert layout_stages("Et*3|t*4|tL") == ["Ettt", "tttt", "tL"]
    assert layout_stages("Et||tL") == ["Et", "", "tL"]  # read as written; the row check refuses the empty stage
    assert [s.count("t") for s in layout_stages("Et|(tt|)*30mL")] == [1] + [2] * 30 + [0]
    for bad in ("Et|(tx|)*2", "Et|(tt|)", "Et|(tt|*6tL", ""):
        with pytest.raises(ValueError, match="unreadable pipeline layout"):
            layout_stages(bad)


def test_a_stated_pipeline_layout_sets_the_stage_layers() -> None:
    """The zero-bubble row (8 stages, 22 layers) stating its layout gets the stages it states."""
    row = parse_row({**ZB_ROW, "notes": "m=24 microbatches; layout Et*2|(ttt|)*6t*2L; vocab not stated"})
    assert isinstance(row, PublishedRow)
    assert row.config.stage_layers == [2, 3, 3, 3, 3, 3, 3, 2]
    assert any("stated pipeline layout 'Et*2|(ttt|)*6t*2L'" in a for a in row.assumptions)
    moved = parse_row({**ZB_ROW, "notes": "layout Ettt|(ttt|)*6tL"})
    assert isinstance(moved, PublishedRow) and moved.config.stage_layers == [3, 3, 3, 3, 3, 3, 3, 1]
    said = parse_row({**ZB_ROW, "notes": "layout matches the recipe"})  # prose, not a layout string
    assert isinstance(said, PublishedRow) and said.config.stage_layers == [3, 3, 3, 3, 3, 3, 2, 2]


@pytest.mark.parametrize("layout, reason", [
    ("Et|(ttt|)*6tL", "has 8 stages of 20 layers; the row has pp*v = 8 stages of 22 layers"),
    ("Ettt|(ttt|)*5|ttttL", "stage_layers [3, 3, 3, 3, 3, 3, 0, 4]: only the first stage (the embedding) and the last"),
    ("Ett|(ttt|)*5tm|ttttL", "puts the multi-token prediction module before the last stage"),
    ("Et|(tt|*6tL", "unreadable pipeline layout"),
    ("Et|t*99999999999999999999|L", "expands past 100,000 characters"),  # an int past an index: no OverflowError
    ("E|" + "(" * 200 + "t" + ")*2" * 200 + "|L", "expands past 100,000 characters"),  # 2^200 layers: no memory blow-up
])
def test_a_stated_layout_that_does_not_fit_the_row_is_a_listed_skip(layout: str, reason: str) -> None:
    assert reason in _skip(notes=f"layout {layout}").reason
