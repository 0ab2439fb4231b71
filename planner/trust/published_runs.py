"""Rows of ``profiles/calibration/public_runs.csv`` turned into priceable configurations.

The columns and the sources are described in ``profiles/calibration/README.md``.
A row is priced when its source states the configuration the cost model needs
(shape, GPU and count, degrees, micro-batch, global batch, schedule, recompute,
precision, a metric); a field the source leaves out is filled only by an
assumption that source supports (``corpus_rules``), listed in the row's
``assumptions``. Every other row is a ``SkippedRow`` with all its reasons:
missing or malformed fields, or what ppplan does not model (DualPipe, gpt-oss's
attention sinks, expert TP other than tp). Mixture-of-experts and context-parallel rows
keep their ``category`` (``corpus_rules.category_of``): ``validate`` reports their error
apart and fits no constant on them.

Parsing errors of a row's own text become skips with the reason; nothing else
is caught: an error of the cost model or of ppplan's own code fails loudly.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from costmodels.layout import end_slot_split, uniform_split
from costmodels.rules import offload_violations, structural_violations
from planner.trust.corpus_fields import RowFields, read_choice, read_metric, read_schedule
from planner.trust.corpus_rules import (
    ALLOCATED_LAST_RANK_NOTE,
    ALLOCATOR_MEMORY_NOTE,
    DEEPSEEK_V3_NO_MTP_RUN,
    DEEPSEEK_V3_RECIPE_LAYOUTS,
    DEEPSEEK_V3_RECIPE_MTP_LAYERS,
    DEEPSEEK_V3_RECIPE_SOURCE,
    MEMORY_ONLY_CLUSTERS,
    UNSUPPORTED_FAMILIES,
    UNTIED_EMBEDDINGS_NOTE,
    UNTIED_FAMILIES,
    category_of,
    cluster_of_row,
    default_sequence_parallel,
    default_vocab,
    default_zero,
    independent_source,
    merged_stack_changes,
    note_assumptions,
    note_stack_changes,
    release_stack_changes,
    stack_of_row,
)
from profiles.errors import PlanError
from profiles.files import extra_fields_problem
from profiles.loader import PUBLIC_RUNS_CSV, load_cluster, load_model, load_stack
from profiles.schema import ClusterSpec, ModelSpec, ParallelConfig, TrainSpec
from profiles.stack_schema import StackSpec

DEFAULT_RUNS_CSV = PUBLIC_RUNS_CSV
REQUIRED_COLUMNS = (
    "source_id", "run", "sweep", "model_family", "layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "seq_len",
    "activation", "num_experts", "gpu", "n_gpus", "tp", "pp", "dp", "cp", "v", "mbs", "global_batch", "schedule",
    "recompute", "sequence_parallel", "zero", "precision", "stack", "metric", "value", "peak_memory_gib",
    "derived", "notes",
)
SHAPE_COLUMNS = ("layers", "hidden", "heads", "seq_len", "n_gpus", "tp", "pp", "dp", "mbs", "global_batch")
FEWER_END_LAYERS = "first & last stage have one fewer layer"
# DeepSpeed's PipelineModule partition over the layers whose class matches (Megatron-DeepSpeed
# --pp-partition-method): the tied embedding's two copies count as a layer each, as Megatron-LM's account-for split
EMBEDDING_SLOTS = "pp partition 'type:transformer|embedding'"
MLA_FIELDS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


# What a row's memory reading counts: the device's (nvidia-smi), the caching allocator's reserved peak, or its
# allocated peak of the last pipeline rank (Megatron-LM's log).
MemoryReadingKind = Literal["device", "allocator_reserved", "allocated_last_rank"]


@dataclass(frozen=True)
class PublishedRow:
    """A priceable row: the exact configuration and what its source measured.

    ``metric`` is one of ``step_time_s``, ``tokens_per_s_per_gpu``, ``hw_tflops_per_gpu``,
    ``model_tflops_per_gpu``, ``mfu_pct`` (``measured`` in that unit), ``oom`` (the run ran
    out of memory) or ``memory`` (its metric cannot be priced, its memory can:
    ``corpus_rules.MEMORY_ONLY_CLUSTERS``, or a row that gives a memory reading only); for the last two
    ``measured`` is None and only the memory check uses the row. ``memory_reading``: what the memory reading
    counts (``MemoryReadingKind``): the whole device (nvidia-smi), the caching allocator's reserved peak
    (``corpus_rules.ALLOCATOR_MEMORY_NOTE``), compared with the prediction less what a rank holds outside the
    allocator, or the allocated peak of the last pipeline rank (``corpus_rules.ALLOCATED_LAST_RANK_NOTE``)."""

    id: str
    run: str
    source_id: str
    source: str
    sweep: str | None
    category: str
    stack: str
    stack_spec: StackSpec
    model: ModelSpec
    cluster: ClusterSpec
    train: TrainSpec
    config: ParallelConfig
    metric: str
    measured: float | None
    measured_peak_memory_gib: float | None
    assumptions: tuple[str, ...]
    expert_imbalance: float | None = None
    memory_reading: MemoryReadingKind = "device"

    @property
    def memory_is_allocator_reserved(self) -> bool:
        return self.memory_reading == "allocator_reserved"

    @property
    def stack_fit_row(self) -> bool:
        """A constant of the row's stack was fitted on it (``StackOverlap.moe_host_fit_rows``): in sample,
        reported apart from the held-out figures."""
        return f"{self.source_id}: {self.run}" in self.stack_spec.overlap.moe_host_fit_rows

    @property
    def allocator_fit_row(self) -> bool:
        """The row's memory reading is one its stack's caching-allocator share was fitted on
        (``StackSpec.allocator_fit_sources``): ``validate`` prices it at the share fitted without its sweep."""
        return self.measured_peak_memory_gib is not None and self.source_id in self.stack_spec.allocator_fit_sources

    @property
    def gpus(self) -> int:
        return self.config.world_size

    @property
    def oom(self) -> bool:
        return self.metric == "oom"

    @property
    def has_metric(self) -> bool:
        """False for rows checked for memory only: out of memory, or a metric the cost model cannot
        price (``corpus_rules.MEMORY_ONLY_CLUSTERS``)."""
        return self.measured is not None


@dataclass(frozen=True)
class SkippedRow:
    id: str
    run: str
    source_id: str
    source: str
    category: str
    reason: str


@dataclass(frozen=True)
class _Parsed:
    ints: dict[str, int]
    schedule: str
    recompute: str
    precision: str
    metric: tuple[str, float | None]
    cluster_preset: str
    stack: str


def _unmodelled(f: RowFields) -> list[str]:
    """Kinds of run the cost model does not price (kept in the corpus, skipped)."""
    out = []
    family = f.text("model_family")
    if family in UNSUPPORTED_FAMILIES:
        out.append(UNSUPPORTED_FAMILIES[family])
    # read, not checked: a malformed tp or ep is reported once, where the configuration reads it
    etp, tp, ep = (f.text(k) for k in ("etp", "tp", "ep"))
    degrees = (etp, tp, ep)
    if all(d.isdigit() and len(d) <= 18 for d in degrees) and int(ep) > 1 and int(etp) not in (1, int(tp)):
        out.append(f"expert TP {etp} with tp {tp}: ppplan prices expert TP = tp or 1")
    if "INCONSISTENT" in f.text("notes") + f.text("derived"):
        out.append("the source's degrees are inconsistent (flagged INCONSISTENT in the corpus)")
    return out


def _parse(f: RowFields) -> _Parsed | None:
    problems = _unmodelled(f)
    extra = extra_fields_problem(f.row)
    if extra:
        problems.append(extra)
    f.integer("gpus_per_node", required=False)  # not priced (the cluster preset's), but a malformed one is not a row
    if not f.text("source_id"):  # the held-out fit leaves out a row's source: a row needs one
        f.missing.append("source_id")
    ints = {k: f.integer(k) for k in SHAPE_COLUMNS}
    gpu = f.text("gpu")
    preset = cluster_of_row(independent_source(f.text("source_id")), gpu)
    if preset is None:
        problems.append(f"no cluster preset for GPU '{gpu or '?'}'")
    stack = stack_of_row(independent_source(f.text("source_id")), f.text("stack"))
    if stack is None:
        problems.append(f"no stack preset for '{f.text('stack') or '?'}'")
    schedule = read_schedule(f, ints["pp"])
    recompute = read_choice(f, "recompute", ("none", "selective", "full"))
    precision = read_choice(f, "precision", ("fp32", "fp16", "bf16", "fp8"))
    metric = read_metric(f)
    f.problems = problems + f.problems
    if f.reasons() or None in ints.values() or None in (schedule, recompute, precision, metric, preset, stack):
        return None
    return _Parsed({k: int(v) for k, v in ints.items() if v is not None}, str(schedule), str(recompute),
                   str(precision), metric, str(preset), str(stack[0]))


# A row's notes may state Megatron-Core's pipeline layout (--pipeline-model-parallel-layout, the string the run
# passed): stages split by '|', each a run of E (embedding), t (transformer layer), m (multi-token prediction), L
# (loss); "(...)*n" and "t*n" repeat (megatron/core/transformer/pipeline_parallel_layer_layout.py, from_str).
STATED_LAYOUT = re.compile(r"\blayout ([EtmL|()*0-9]*\|[EtmL|()*0-9]*[EtmL|)])(?![A-Za-z0-9])")
_LAYOUT_GROUP = re.compile(r"\(([^()]*)\)\*(\d+)")
_LAYOUT_REPEAT = re.compile(r"([EtmL])\*(\d+)")
LAYOUT_MAX_CHARS = 100_000  # far above any real layout (a stage per layer of a 1,000-layer model): bounds the expansion


def _expanded(layout: str, text: str, pattern: re.Pattern[str]) -> str:
    """``text`` with every match of ``pattern`` (a unit and its count) repeated, in one pass; ValueError where the
    result would pass ``LAYOUT_MAX_CHARS`` (checked before it is built)."""
    matches = list(pattern.finditer(text))
    if len(text) + sum(len(m.group(1)) * int(m.group(2)) - len(m.group(0)) for m in matches) > LAYOUT_MAX_CHARS:
        raise ValueError(f"pipeline layout '{layout[:80]}' expands past {LAYOUT_MAX_CHARS:,} characters")
    return pattern.sub(lambda m: m.group(1) * int(m.group(2)), text)


def layout_stages(layout: str) -> list[str]:
    """The virtual stages of a Megatron-Core pipeline layout string (``STATED_LAYOUT``), repetitions expanded:
    ``"Et|(tt|)*2mL"`` is ``["Et", "tt", "tt", "mL"]``. ValueError for a string it cannot read, or one whose
    repetitions expand past ``LAYOUT_MAX_CHARS`` (nested repeats grow exponentially). Groups expand innermost
    first, then the ``t*n`` repeats in one pass (``t*2*3`` stays unreadable)."""
    text = layout
    while _LAYOUT_GROUP.search(text):
        text = _expanded(layout, text, _LAYOUT_GROUP)
    text = _expanded(layout, text, _LAYOUT_REPEAT)
    if not text or set(text) - set("EtmL|"):
        raise ValueError(f"unreadable pipeline layout '{layout}' (stages of E, t, m, L split by '|')")
    return text.split("|")


def _stated_layout(f: RowFields, layers: int, stages: int, assumptions: list[str]) -> list[int] | None:
    """The decoder layers per virtual stage the row's notes state as its pipeline layout, or None where they
    state none. A layout that does not fit the row is a problem of the row: other stage or layer counts, or the
    multi-token prediction module before the last stage (where the cost model places it); an empty stage between
    others is ``ParallelConfig``'s own refusal (``_config``)."""
    stated = STATED_LAYOUT.search(f.text("notes"))
    if stated is None:
        return None
    layout = stated.group(1)
    try:
        parts = layout_stages(layout)
    except ValueError as exc:
        f.problems.append(str(exc))
        return None
    split = [part.count("t") for part in parts]
    if len(split) != stages or sum(split) != layers:
        f.problems.append(f"pipeline layout '{layout}' has {len(split)} stages of {sum(split)} layers; the row has "
                          f"pp*v = {stages} stages of {layers} layers")
        return None
    if any("m" in part for part in parts[:-1]):
        f.problems.append(f"pipeline layout '{layout}' puts the multi-token prediction module before the last stage, "
                          "where the cost model does not place it")
        return None
    assumptions.append(f"stage layers {split}: the row's stated pipeline layout '{layout}'")
    return split


def _stage_layers(f: RowFields, layers: int, stages: int) -> list[int] | None:
    """Uniform, or ``[k−1, k, …, k, k−1]`` where the source says the end stages hold one layer
    fewer or that the embeddings take pipeline slots (Megatron-LM's embedding and loss, DeepSpeed's two
    embedding copies, counted as a layer each: ``costmodels.layout.end_slot_split``;
    with k = 1 the end stages hold the embedding or the head alone); None when that split cannot be made."""
    said = next((phrase for phrase in (FEWER_END_LAYERS, EMBEDDING_SLOTS) if phrase in f.text("notes")), None)
    if said and stages > 1:
        split = end_slot_split(layers, stages)
        if split is None:
            f.problems.append(f"'{said}' needs layers + 2 divisible by pp*v: {layers} + 2 on {stages} stages")
        return split
    if layers < stages:
        f.problems.append(f"{layers} layers cannot fill pp*v = {stages} stages")
        return None
    return uniform_split(layers, stages)


def _model(f: RowFields, p: _Parsed, assumptions: list[str]) -> ModelSpec | None:
    kv = f.integer("kv_heads", required=False)
    ffn = f.integer("ffn_hidden")
    vocab = f.integer("vocab", required=False)
    if vocab is None and not f.problems:
        vocab, why = default_vocab(f.text("model_family"), p.ints["tp"], f.text("source_id"))
        if vocab is None:
            f.missing.append("vocab")
        else:
            assumptions.append(why)
    activation = read_choice(f, "activation", ("gelu", "swiglu"))
    if f.reasons():
        return None
    notes = f.text("notes").lower()
    if "parallel attention+ffn residual" in notes or "parallel residual" in notes:
        assumptions.append("parallel attention and MLP residual priced as a sequential block (same FLOPs and bytes)")
    if "squared-relu" in notes:
        assumptions.append("squared-ReLU MLP priced as GELU (two FFN GEMMs, one element-wise activation)")
    position = "rope" if "rotary" in notes else None
    family = f.text("model_family")
    tied = UNTIED_EMBEDDINGS_NOTE not in notes and family not in UNTIED_FAMILIES
    if family in UNTIED_FAMILIES and UNTIED_EMBEDDINGS_NOTE not in notes:
        assumptions.append(UNTIED_FAMILIES[family])
    extra = _moe_fields(f, assumptions)
    head_dim = re.search(r"head_dim (\d+)", f.text("notes"))
    if head_dim:
        extra["head_dim"] = int(head_dim.group(1))
    if f.reasons():
        return None
    try:
        return ModelSpec(
            name=f.text("run"), num_layers=p.ints["layers"], hidden_size=p.ints["hidden"],
            num_attention_heads=p.ints["heads"], num_key_value_heads=kv, ffn_hidden_size=ffn, vocab_size=vocab,
            seq_len=p.ints["seq_len"], activation=activation, position_embedding=position, tie_embeddings=tied, **extra,
        )
    except ValidationError as exc:  # the row's shape is inconsistent (e.g. heads not dividing hidden)
        f.problems.append(f"malformed model shape: {exc.errors()[0]['msg']}")
        return None


def _moe_fields(f: RowFields, assumptions: list[str]) -> dict[str, object]:
    """A mixture-of-experts row's expert fields (``ModelSpec``), and DeepSeek-V3's multi-head latent
    attention shape from its preset (the corpus has no MLA columns), as an assumption."""
    if f.text("num_experts") in ("", "0", "1"):
        return {}
    fields: dict[str, object] = {
        "num_experts": f.integer("num_experts"), "experts_per_token": f.integer("experts_per_token"),
        "moe_ffn_hidden_size": f.integer("moe_ffn_hidden"),
        "num_shared_experts": _count_or_zero(f, "shared_experts"),
        "first_dense_layers": _count_or_zero(f, "first_dense_layers"),
    }
    if f.text("model_family") == "deepseek-v3":
        preset = load_model("deepseek-v3")
        fields.update({k: getattr(preset, k) for k in MLA_FIELDS})
        assumptions.append("MLA shape of the deepseek-v3 preset (DeepSeek-V3 config.json)")
        if f.text("stack") == "megatron-core" and DEEPSEEK_V3_NO_MTP_RUN not in f.text("run").lower():
            fields["mtp_layers"] = DEEPSEEK_V3_RECIPE_MTP_LAYERS
            assumptions.append(f"{DEEPSEEK_V3_RECIPE_MTP_LAYERS} multi-token prediction module on the last stage, the "
                               f"recipes' default ({DEEPSEEK_V3_RECIPE_SOURCE}: mtp_num_layers = 1; the run is not "
                               "named 'w/o MTP')")
    return fields


def _deepseek_v3_layout(f: RowFields, pp: int, v: int, assumptions: list[str]) -> list[int] | None:
    """The decoder layers per virtual stage of Megatron-Bridge's DeepSeek-V3 recipes for (pp, v), or None."""
    if f.text("model_family") != "deepseek-v3" or f.text("stack") != "megatron-core":
        return None
    layout = DEEPSEEK_V3_RECIPE_LAYOUTS.get((pp, v))
    if layout is not None:
        assumptions.append(f"stage layers {layout} of the recipes' pipeline layout for pp {pp} x v {v} "
                           f"({DEEPSEEK_V3_RECIPE_SOURCE}, _get_deepseek_v3_pipeline_layout)")
    return layout


def _count_or_zero(f: RowFields, key: str) -> int:
    """A count that may be 0 or left out (0)."""
    return 0 if f.text(key) in ("", "0") else int(f.integer(key) or 0)


CAPACITY_PADDING = re.compile(r"capacity factor ([0-9]+(?:\.[0-9]+)?) with padding to capacity")


def expert_imbalance_of(notes: str) -> tuple[float, str] | None:
    """The busiest expert-parallel rank's load over the mean where the source states its routing, and the
    assumption that says so (``costmodels.experts``). "force-balanced" routing gives every rank the mean
    load. Padding every expert's input to its capacity (Megatron-Core ``moe_pad_expert_input_to_capacity``
    with ``moe_expert_capacity_factor`` c; Fedus et al. 2021, Switch Transformers, Sec. 2.2) makes every
    expert process c times the mean, whatever the router chose: tokens over capacity are dropped."""
    if "force-balanced" in notes:
        return 1.0, "force-balanced routing: the busiest expert-parallel rank carries the mean load"
    padded = CAPACITY_PADDING.search(notes.lower())
    factor = float(padded.group(1)) if padded else 0.0
    if factor > 0:  # a factor of 0 states no capacity
        return factor, (f"expert inputs padded to capacity factor {factor:g}: every expert-parallel rank carries "
                        f"{factor:g} x the mean load")
    return None


def _config(f: RowFields, p: _Parsed, assumptions: list[str]) -> ParallelConfig | None:
    source = independent_source(f.text("source_id"))
    v = f.integer("v", required=p.schedule == "interleaved-1f1b") or 1
    dp, mbs, tp = p.ints["dp"], p.ints["mbs"], p.ints["tp"]
    sp_text = f.text("sequence_parallel").lower()
    if sp_text in ("true", "false"):
        sequence_parallel = sp_text == "true"
    elif sp_text:
        f.problems.append(f"malformed sequence_parallel '{sp_text}' (true or false)")
        sequence_parallel = False
    else:
        sequence_parallel, why = default_sequence_parallel(p.stack, tp, f.text("stack"))
        if why:
            assumptions.append(why)
    zero_text = f.text("zero")
    if zero_text:
        zero = f.integer("zero") if zero_text != "0" else 0
    else:
        zero, why = default_zero(source, dp)
        if zero is None:
            f.missing.append("zero")
        elif why:
            assumptions.append(why)
    layers = (_stated_layout(f, p.ints["layers"], p.ints["pp"] * v, assumptions)
              or _deepseek_v3_layout(f, p.ints["pp"], v, assumptions)
              or _stage_layers(f, p.ints["layers"], p.ints["pp"] * v))
    if p.ints["global_batch"] % (dp * mbs):
        f.problems.append(f"global batch {p.ints['global_batch']} is not divisible by dp*mbs = {dp}*{mbs}")
    offload = _offload_layers(f.text("notes"))
    if f.reasons() or layers is None or zero is None or zero > 3:
        if zero is not None and zero > 3:
            f.problems.append(f"malformed zero '{zero}' (0-3)")
        return None
    etp = f.integer("etp", required=False)
    try:
        return ParallelConfig(
            stack=p.stack, tp=tp, cp=f.integer("cp", required=False) or 1, ep=f.integer("ep", required=False) or 1,
            etp=1 if etp == 1 and tp > 1 else None, pp=p.ints["pp"], dp=dp, v=v, mbs=mbs,
            num_microbatches=p.ints["global_batch"] // (dp * mbs), schedule=p.schedule,
            recompute=_recompute(p.recompute, f.text("notes"), assumptions),
            sequence_parallel=sequence_parallel, zero=zero, stage_layers=layers,
            offload_layers=offload,
        )
    except ValidationError as exc:  # what ParallelConfig refuses (e.g. a stated layout with an empty middle stage)
        f.problems.append(f"malformed parallel configuration: {exc.errors()[0]['msg']}")
        return None


def _offload_layers(notes: str) -> int:
    """The layers a row's notes say it offloads (``activation CPU offload N layers``: Megatron-Bridge's
    cpu_offloading_num_layers), priced as it ran (``costmodels.offload``)."""
    said = re.search(r"activation cpu offload (\d+) layers", notes.lower())
    return int(said.group(1)) if said else 0


def _recompute(recompute: str, notes: str, assumptions: list[str]) -> str:
    """Selective recomputation of element-wise modules only (Megatron-Core's ``--recompute-modules``
    without ``core_attn``) frees no attention core: priced as no recomputation, said."""
    modules = re.search(r"recompute modules=([\w+]+)", notes)
    if recompute == "selective" and modules and "core_attn" not in modules.group(1):
        assumptions.append(f"recomputed modules {modules.group(1)} (element-wise) priced as no recompute")
        return "none"
    return recompute


@lru_cache(maxsize=16)
def _preset(name: str) -> StackSpec:
    return load_stack(name)


def row_stack(preset: str, changes: dict[str, object]) -> StackSpec:
    """The stack preset a row is priced on, with the kernels and overlaps its source ran where they
    differ (``corpus_rules.STACK_OF_SOURCE``), validated as the schema validates a stack file."""
    return _preset(preset).with_changes(changes)


def row_id(source_id: str, line: int) -> str:
    """A row's unique name: run names repeat (a source measured one configuration twice)."""
    return f"{source_id}:{line}"


def parse_row(row: dict[str, str], line: int = 2) -> PublishedRow | SkippedRow:
    """One CSV row (``line``: its line in the file) -> a priceable configuration, or every
    reason it cannot be priced."""
    f = RowFields(row)
    run, source_id = f.text("run"), f.text("source_id")
    ident = row_id(source_id, line)
    source, category = independent_source(source_id), category_of(row)

    def skipped() -> SkippedRow:
        return SkippedRow(ident, run, source_id, source, category, "; ".join(f.reasons()))

    parsed = _parse(f)
    if parsed is None:
        return skipped()
    assumptions: list[str] = []
    _, stack_changes, stack_note = stack_of_row(source, f.text("stack"))
    if stack_note:
        assumptions.append(stack_note)
    release_changes, released = release_stack_changes(source_id, run)
    assumptions += released
    assumptions += note_assumptions(f.text("notes"))
    noted_changes, noted = note_stack_changes(f.text("notes"))
    parsed, noted_changes, noted = _combined_1f1b(parsed, noted_changes, noted)
    assumptions += noted
    stack_changes = merged_stack_changes(stack_changes, release_changes, noted_changes)
    if f.text("derived"):
        assumptions.append(f"corpus: {f.text('derived')}")
    model = _model(f, parsed, assumptions)
    config = _config(f, parsed, assumptions) if model is not None else None
    peak = f.number("peak_memory_gib")
    if model is None or config is None or f.reasons():
        return skipped()
    train = TrainSpec(global_batch=parsed.ints["global_batch"], seq_len=parsed.ints["seq_len"], precision=parsed.precision)
    stack_spec = row_stack(parsed.stack, stack_changes)
    violations = (structural_violations(model, train, parsed.ints["n_gpus"], config)
                  + offload_violations(config.offload_layers, model.num_layers, config.pp, config.recompute, stack_spec))
    if violations:
        f.problems.append(violations[0])
        return skipped()
    cluster = load_cluster(parsed.cluster_preset)
    if getattr(cluster.gpu.peak_tflops, parsed.precision) is None:
        f.problems.append(f"cluster preset {parsed.cluster_preset} has no {parsed.precision} peak")
        return skipped()
    assumptions.append(f"cluster preset {parsed.cluster_preset} for '{f.text('gpu')}'")
    routing = expert_imbalance_of(f.text("notes")) if model.is_moe else None
    if routing is not None:
        assumptions.append(routing[1])
    metric, measured = parsed.metric
    if metric == "memory" and peak is None:
        f.problems.append("metric memory without a peak_memory_gib reading")
        return skipped()
    memory_only = MEMORY_ONLY_CLUSTERS.get(parsed.cluster_preset)
    if memory_only is not None:
        if peak is None:
            f.problems.append(f"{memory_only}; the row has no memory reading")
            return skipped()
        assumptions.append(memory_only)
        metric, measured = "memory", None
    reading = _memory_reading(f, peak, cluster.runtime_reserved_gib, assumptions)
    if reading is None:
        return skipped()
    return PublishedRow(
        id=ident, run=run, source_id=source_id, source=source, sweep=f.text("sweep") or None, category=category,
        stack=parsed.stack, stack_spec=stack_spec, model=model, cluster=cluster, train=train,
        config=config, metric=metric, measured=measured, measured_peak_memory_gib=peak, assumptions=tuple(assumptions),
        expert_imbalance=routing[0] if routing else None, memory_reading=reading,
    )


def _memory_reading(f: RowFields, peak: float | None, runtime_reserved_gib: float,
                    assumptions: list[str]) -> MemoryReadingKind | None:
    """What the row's memory reading counts, from its notes (``MemoryReadingKind``), said where it is not the
    device's; None (a problem on ``f``) where the notes name two."""
    notes = f.text("notes")
    named = [kind for kind, marker in (("allocator_reserved", ALLOCATOR_MEMORY_NOTE),
                                       ("allocated_last_rank", ALLOCATED_LAST_RANK_NOTE)) if marker in notes]
    if len(named) > 1:
        f.problems.append("notes name two memory readings: the allocator's reserved peak and its allocated peak")
        return None
    kind: MemoryReadingKind = named[0] if named else "device"
    if peak is not None and kind == "allocator_reserved":
        assumptions.append("memory is the caching allocator's reserved peak: compared with the prediction less what "
                           f"a rank holds outside it (the CUDA context, {runtime_reserved_gib:g} GiB, and NCCL's buffers)")
    if peak is not None and kind == "allocated_last_rank":
        assumptions.append("memory is the caching allocator's allocated peak of the last pipeline rank: compared with that "
                           "rank's prediction less what no tensor allocates (the allocator's share, the CUDA context, "
                           "NCCL's buffers)")
    return kind


def _combined_1f1b(parsed: _Parsed, changes: dict[str, dict[str, object]], noted: list[str]
                   ) -> tuple[_Parsed, dict[str, dict[str, object]], list[str]]:
    """An interleaved row that ran the expert all-to-all overlap ran Megatron-Core's combined 1F1B: priced as
    that schedule (its warm-up forwards and cool-down backwards alone, one more warm-up forward), not as a
    stack that hides every pass's all-to-alls; without a pipeline the stack's overlap stays."""
    overlap = changes.get("overlap", {})
    if overlap.get("ep_comm") != "overlapped" or parsed.schedule != "interleaved-1f1b":
        return parsed, changes, noted
    rest = {k: v for k, v in overlap.items() if k != "ep_comm"}
    changes = {**{k: v for k, v in changes.items() if k != "overlap"}, **({"overlap": rest} if rest else {})}
    noted = [n for n in noted if not n.startswith("expert all-to-all overlap")]
    noted.append("expert all-to-all overlap (--overlap-moe-expert-parallel-comm, the recipe's moe_a2a_overlap) with "
                 "interleaving: priced as Megatron-Core's combined 1F1B (combined-1f1b), as the row ran")
    return replace(parsed, schedule="combined-1f1b"), changes, noted


def read_published_runs(path: Path = DEFAULT_RUNS_CSV) -> list[PublishedRow | SkippedRow]:
    """Every row of the CSV, parsed (``PlanError`` when the file is missing, unreadable or lacks
    the corpus columns)."""
    if not path.is_file():
        raise PlanError(f"file not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows, columns = list(reader), reader.fieldnames or []
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise PlanError(f"cannot read published runs from {path}: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise PlanError(f"{path}: not a published-runs CSV (missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing[:5])}); columns: profiles/calibration/README.md")
    if not rows:
        raise PlanError(f"{path}: the header and no rows: add the runs to validate against")
    return [parse_row(row, line) for line, row in enumerate(rows, start=2)]
