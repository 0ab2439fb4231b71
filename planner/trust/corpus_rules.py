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
    ("mlperf-", "mlperf-training"),  # MLCommons Training rounds v3.0-v5.0 (NeMo-based submissions)
    ("bigscience-", "bigscience"),  # BigScience tr8 and tr11 on Jean Zay (Megatron-DeepSpeed)
    ("torchtitan-", "torchtitan"),  # pytorch/torchtitan benchmark reports
)

# GPU column -> cluster preset (profiles/clusters/). Rows with another GPU ("other": Grand Teton
# 96 GB H100 at 500 W, L4; H800) are skipped with the reason.
CLUSTER_OF_GPU: dict[str, str] = {
    "V100-32GB": "v100-32g-4gpu",
    "A100-40GB": "dgx-a100-40g",
    "A100-80GB": "dgx-a100-80g",
    "H100-SXM": "dgx-h100",
    "H200": "dgx-h200",
    "B200": "dgx-b200",
    "GB200": "gb200-nvl72",
}

# GPU family by architecture: one set of fitted constants each (tensor cores and memory system
# are the architecture's; H200 is H100's compute with more HBM, GB200 is B200's in an NVL72 rack).
FAMILY_OF_GPU_PREFIX: tuple[tuple[str, str], ...] = (
    ("V100", "volta"),
    ("A100", "ampere"),
    ("H100", "hopper"),
    ("H200", "hopper"),
    ("H800", "hopper"),
    ("GB200", "blackwell"),
    ("B200", "blackwell"),
    ("cpu", "cpu"),
)

# stack column -> (stack preset, the assumption when it is not the row's own stack)
STACK_OF_ROW: dict[str, tuple[str, str | None]] = {
    "megatron-core": ("megatron-core", None),
    "megatron-lm-2021": ("megatron-lm-2021", None),
    "torchtitan": ("torchtitan", None),
    "composer-fsdp": ("torchtitan", "llm-foundry's Composer (PyTorch FSDP, flash attention, no TP/PP) priced as the "
                      "torchtitan stack, the preset with FSDP and flash attention"),
    "deepspeed": ("megatron-lm-2021", "GPT-NeoX's DeepSpeed pipeline engine (Megatron-style TP, gradients reduced after "
                  "the backward) priced as the megatron-lm-2021 stack"),
}

# What a row's notes say that the cost model does not price, as (regular expression on the
# lower-cased notes, the assumption it becomes).
NOTE_ASSUMPTIONS: tuple[tuple[str, str], ...] = (
    (r"activation cpu offload \d+ layers", "activation CPU offload (recipe) not modelled: activation memory over-predicted, "
     "offload traffic not priced"),
    (r"bnb 8-bit", "bitsandbytes 8-bit Adam states priced as 16 B/param mixed-precision Adam (memory over-predicted)"),
    (r"tp comm overlap=true|--tp-comm-overlap", "TP communication overlap (--tp-comm-overlap) priced exposed, as the stack "
     "preset runs it"),
    (r"partition 'type:transformer\|embedding'", "DeepSpeed's partition giving the embeddings their own pipeline slots "
     "priced as a uniform split of the transformer layers"),
    (r"mxfp8|blockwise", "MXFP8 / blockwise FP8 priced as FP8 (same fp8 peak)"),
    (r"torch\.compile", "torch.compile fusions not modelled (element-wise work priced unfused)"),
)

GPT2_VOCAB = 50_257  # GPT-2 BPE (Radford et al. 2019), the tokenizer of Megatron-LM's GPT examples
MEGATRON_VOCAB_DIVISOR = 128  # Megatron-LM --make-vocab-size-divisible-by default (padded to a multiple of 128 x tp)
GPT2_TOKENIZER_FAMILIES = ("gpt3", "gpt-like")


def note_assumptions(notes: str) -> list[str]:
    """The assumptions a row's notes imply (``NOTE_ASSUMPTIONS``)."""
    text = notes.lower()
    return [assumption for pattern, assumption in NOTE_ASSUMPTIONS if re.search(pattern, text)]


def independent_source(source_id: str) -> str:
    """The measurement campaign a ``source_id`` belongs to (see the module docstring)."""
    for prefix, family in SOURCE_FAMILIES:
        if source_id.startswith(prefix):
            return family
    return source_id


def gpu_family(gpu_name: str) -> str | None:
    """Architecture family of a GPU name (a cluster preset's ``gpu.name`` or the corpus' GPU column)."""
    for prefix, family in FAMILY_OF_GPU_PREFIX:
        if gpu_name.startswith(prefix):
            return family
    return None


def category_of(row: dict[str, str]) -> str:
    """dense, moe or long-context (cp > 1): the groups whose error is reported apart."""
    if (row.get("num_experts") or "").strip():
        return "moe"
    cp = (row.get("cp") or "").strip()
    if cp.isdigit() and int(cp) > 1:
        return "long-context"
    return "dense"


def padded_vocab(vocab: int, tp: int) -> int:
    """Megatron-LM pads the vocabulary to a multiple of 128·tp (``_vocab_size_with_padding``)."""
    step = MEGATRON_VOCAB_DIVISOR * tp
    return -(-vocab // step) * step


def default_vocab(model_family: str, tp: int) -> tuple[int | None, str]:
    """A vocabulary for a GPT-3-style row that does not state one: GPT-2's BPE as Megatron-LM
    pads it (the Megatron GPT examples and the GPT-3 175B recipes use a ~50k vocabulary)."""
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
