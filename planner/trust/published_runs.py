"""Rows of ``profiles/calibration/public_runs.csv`` turned into priceable configurations.

A row is priced only when its source states the whole configuration: shape
(layers, hidden, heads, seq), GPU and count, tp/pp/dp, micro-batch size, global
batch, schedule, recompute, and a measured metric. A field the source leaves
out is filled only where a neutral default exists (the GPT-2 vocabulary, a
4·h FFN, bf16 on a GPU whose bf16 and fp16 peaks are equal); each such fill is
listed in the row's ``assumptions``. Everything else is skipped with the
reason (what is missing or what ppplan does not model). The columns are
described in ``profiles/calibration/README.md``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from costmodels.layout import uniform_split
from costmodels.rules import structural_violations
from profiles.errors import PlanError
from profiles.loader import PUBLIC_RUNS_CSV, load_cluster
from profiles.schema import ClusterSpec, ModelSpec, ParallelConfig, TrainSpec

DEFAULT_RUNS_CSV = PUBLIC_RUNS_CSV
GPT2_PADDED_VOCAB = 51_200  # GPT-2 BPE (50,257) padded as in Megatron-LM SC21 (Narayanan et al. 2021, Table 1)
# (substrings of the row's GPU description, cluster preset); first match wins.
GPU_PRESETS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("A100", "80"), "dgx-a100-80g"),
    (("A100", "40"), "dgx-a100-40g"),
    (("H100",), "dgx-h100"),
    (("H200",), "dgx-h200"),
    (("B200",), "dgx-b200"),
)
SCHEDULE_NAMES: tuple[tuple[str, str], ...] = (
    ("zb-1p", "zb-h1"),
    ("zb-2p", "zb-h2"),
    ("1f1b-i", "interleaved-1f1b"),
    ("interleaved", "interleaved-1f1b"),
    ("1f1b", "1f1b"),
    ("dp only", "1f1b"),
)
STEP_TIME_KEYS = ("median_train_step_timing_s", "iteration_time_s", "step_time_s")
FEWER_END_LAYERS = ("first & last stage have one fewer layer", "first/last stage one fewer layer")


@dataclass(frozen=True)
class PublishedRow:
    """A priceable row: the exact configuration and the metric its source reports."""

    run: str
    source: str
    model: ModelSpec
    cluster: ClusterSpec
    train: TrainSpec
    config: ParallelConfig
    metric: str
    measured: float
    assumptions: tuple[str, ...]


@dataclass(frozen=True)
class SkippedRow:
    run: str
    reason: str


def source_label(source: str) -> str:
    """Short name of a source: the first GitHub ``owner/repo`` it cites, else its words up
    to the first table/section reference."""
    repo = re.search(r"(?<![\w/.])([A-Za-z][\w-]*/[A-Za-z][\w.-]*)", source)
    if repo:
        return repo.group(1).rstrip(".")
    words = re.split(r"\s+(?:arXiv|Table|Tables|Sec|Secs)\b", source)[0]
    return words.strip()[:40]


def _int(text: str) -> int | None:
    """An integer, optionally followed by a parenthetical remark: '12 (default)' -> 12."""
    m = re.fullmatch(r"\s*(\d+)\s*(\(.*\))?\s*", text or "")
    return int(m.group(1)) if m else None


def _leading_int(text: str) -> int | None:
    m = re.match(r"\s*(\d+)(?=\s|$)", text or "")
    return int(m.group(1)) if m else None


def _float(text: str) -> float | None:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(\(.*\))?\s*", text or "")
    return float(m.group(1)) if m else None


def _other_metrics(text: str) -> dict[str, float]:
    """``key=value`` pairs of the other_metric column (values with a leading number)."""
    out = {}
    for part in (text or "").split(";"):
        key, _, value = part.partition("=")
        m = re.match(r"\s*(\d+(?:\.\d+)?)", value)
        if key.strip() and m:
            out[key.strip()] = float(m.group(1))
    return out


def cluster_for_gpu(gpu: str) -> str | None:
    for needles, preset in GPU_PRESETS:
        if all(n in gpu for n in needles):
            return preset
    return None


def schedule_for(text: str) -> str | None:
    lowered = (text or "").strip().lower()
    if not lowered or lowered.startswith("not stated"):
        return None
    for needle, name in SCHEDULE_NAMES:
        if needle in lowered:
            return name
    return None


def _recompute(text: str) -> tuple[str | None, str | None]:
    """(kind, problem): 'none stated' and 'none set' read as none; partial recompute is not expressible."""
    lowered = (text or "").strip().lower()
    if not lowered or lowered.startswith("not stated"):
        return None, None
    for kind in ("none", "full", "selective"):
        if lowered.startswith(kind):
            return kind, None
    return None, f"recompute '{text.strip()}' (per-layer checkpointing) cannot be expressed per stage"


def _text(row: dict[str, str]) -> str:
    return " ".join(row.get(k) or "" for k in ("schedule", "recompute", "other_metric", "notes")).lower()


def _precision(row: dict[str, str], assumptions: list[str]) -> str:
    text = _text(row)
    for name in ("fp8", "bf16", "fp16"):
        if name in text:
            return name
    assumptions.append("precision not stated: bf16 assumed")
    return "bf16"


def _vocab(text: str, assumptions: list[str]) -> int:
    padded = re.search(r"(\d+)\s+padded", text or "")
    if padded:
        return int(padded.group(1))
    value = _int(text)
    if value is not None and "unconfirmed" not in (text or "").lower():
        return value
    assumptions.append(f"vocab '{(text or '').strip() or 'not stated'}': GPT-2 BPE padded to {GPT2_PADDED_VOCAB:,} assumed")
    return GPT2_PADDED_VOCAB


def _metric(row: dict[str, str], recompute: str) -> tuple[str, float] | None:
    """The metric the source measured, most direct first: step time, tokens/s per GPU,
    TFLOP/s per GPU (hardware FLOPs when recomputation ran), MFU."""
    other = _other_metrics(row.get("other_metric", ""))
    for key in STEP_TIME_KEYS:
        if key in other:
            return "step_time_s", other[key]
    if "tokens_per_GPU_per_s" in other:
        return "tokens_per_gpu_per_s", other["tokens_per_GPU_per_s"]
    tflops = _float(row.get("measured_tflops_per_gpu", ""))
    if tflops is not None:
        return ("hw_tflops_per_gpu" if recompute != "none" else "model_tflops_per_gpu"), tflops
    mfu = _float(row.get("mfu_pct", ""))
    if mfu is not None:
        return "mfu_pct", mfu
    return None


def _unsupported(row: dict[str, str], schedule: str | None) -> list[str]:
    problems = []
    cp = _int(row.get("cp", ""))
    if cp and cp > 1:
        problems.append(f"context parallelism (cp={cp}) is not modelled")
    if "moe" in (row.get("ffn_hidden", "") + row.get("run", "")).lower():
        problems.append("mixture-of-experts layers are not modelled")
    if "dualpipe" in (row.get("schedule", "") or "").lower():
        problems.append("DeepSeek's bidirectional DualPipe is not a ppplan schedule")
    if "layer per chunk" in (row.get("vpp(v)", "") or "").lower():
        problems.append("'1 layer per chunk' puts the embedding and the head on chunks without a transformer "
                        "layer; stage_layers needs at least one layer per virtual stage")
    return problems


REQUIRED = ("layers", "hidden", "heads", "seq_len", "n_gpus", "tp", "pp", "dp", "micro_batch_size")


def _stage_layers(row: dict[str, str], layers: int, stages: int, assumptions: list[str]) -> list[int] | str:
    text = ((row.get("notes") or "") + " " + (row.get("schedule") or "")).lower()
    if any(phrase in text for phrase in FEWER_END_LAYERS) and stages > 1:
        per, rest = divmod(layers + 2, stages)
        if rest or per < 2:
            return f"'first and last stage one fewer layer' does not fit {layers} layers on {stages} stages"
        return [per - 1] + [per] * (stages - 2) + [per - 1]
    return uniform_split(layers, stages)


@dataclass(frozen=True)
class _Fields:
    """What a complete row states, parsed."""

    run: str
    preset: str
    schedule: str
    recompute: str
    ints: dict[str, int]
    global_batch: int
    metric: tuple[str, float]


def _fields(row: dict[str, str]) -> _Fields | SkippedRow:
    """The row's stated configuration, or every reason it cannot be priced."""
    run = (row.get("run") or "").strip()
    preset = cluster_for_gpu(row.get("gpu", ""))
    schedule = schedule_for(row.get("schedule", ""))
    recompute, recompute_problem = _recompute(row.get("recompute", ""))
    problems = [] if preset else [f"no cluster preset for GPU '{(row.get('gpu') or '?').strip()}'"]
    problems += _unsupported(row, schedule) + ([recompute_problem] if recompute_problem else [])
    ints = {k: _int(row.get(k, "")) for k in REQUIRED}
    global_batch = _leading_int(row.get("global_batch", ""))
    missing = [k for k, v in ints.items() if v is None]
    missing += [] if global_batch else ["global_batch"]
    missing += [] if schedule else ["schedule"]
    vpp = row.get("vpp(v)") or ""
    if schedule == "interleaved-1f1b" and _int(vpp) is None and "layer per chunk" not in vpp:
        missing.append("vpp(v)")
    missing += [] if recompute or recompute_problem else ["recompute"]
    if missing:
        problems.append("missing or not stated: " + ", ".join(missing))
    metric = _metric(row, recompute or "none")
    if metric is None:
        problems.append("no measured metric (step time, tokens/s per GPU, TFLOP/s per GPU or MFU)")
    if problems:
        return SkippedRow(run, "; ".join(problems))
    return _Fields(run, preset, schedule, recompute, ints, global_batch, metric)


def parse_row(row: dict[str, str]) -> PublishedRow | SkippedRow:
    """One CSV row -> a priceable configuration, or the reason it cannot be priced."""
    fields = _fields(row)
    if isinstance(fields, SkippedRow):
        return fields
    try:
        return _priced(row, fields)
    except (PlanError, ValueError) as exc:  # pydantic's errors are ValueErrors
        return SkippedRow(fields.run, str(exc).splitlines()[0])


def _model(row: dict[str, str], f: _Fields, assumptions: list[str]) -> ModelSpec:
    kv = re.search(r"(\d+)\s*KV", row.get("heads", ""))
    ffn = _int(row.get("ffn_hidden", ""))
    if ffn is None:
        assumptions.append("ffn_hidden not stated: 4·hidden assumed")
    notes = (row.get("notes") or "").lower()
    if "parallel residual" in notes:
        assumptions.append("parallel residual priced as a sequential block (same FLOPs)")
    return ModelSpec(
        name=f.run, num_layers=f.ints["layers"], hidden_size=f.ints["hidden"],
        num_attention_heads=f.ints["heads"], num_key_value_heads=int(kv.group(1)) if kv else None,
        ffn_hidden_size=ffn, vocab_size=_vocab(row.get("vocab", ""), assumptions),
        seq_len=f.ints["seq_len"], activation="swiglu" if "llama" in f.run.lower() else "gelu",
        position_embedding="rope" if "rotary" in notes else None,
    )


def _config(row: dict[str, str], f: _Fields, assumptions: list[str]) -> ParallelConfig:
    v = 1 if f.schedule != "interleaved-1f1b" else int(_int(row.get("vpp(v)", "")) or 1)
    layers = _stage_layers(row, f.ints["layers"], f.ints["pp"] * v, assumptions)
    if isinstance(layers, str):
        raise PlanError(layers)
    dp, mbs = f.ints["dp"], f.ints["micro_batch_size"]
    if f.global_batch % (dp * mbs):
        raise PlanError(f"global batch {f.global_batch} is not divisible by dp*mbs = {dp}*{mbs}")
    if f.recompute == "none" and "none stated" in (row.get("recompute") or "").lower():
        assumptions.append("recompute 'none stated': no recomputation assumed")
    text = _text(row)
    return ParallelConfig(
        tp=f.ints["tp"], pp=f.ints["pp"], dp=dp, v=v, mbs=mbs, num_microbatches=f.global_batch // (dp * mbs),
        schedule=f.schedule, recompute=f.recompute, sequence_parallel="sequence_parallel=true" in text,
        zero=1 if dp > 1 and ("zero-1" in text or "distributed optimizer" in text) else 0,
        stage_layers=layers,
    )


def _priced(row: dict[str, str], f: _Fields) -> PublishedRow:
    assumptions: list[str] = []
    if (batch_text := (row.get("global_batch") or "").strip()) != str(f.global_batch):
        assumptions.append(f"global batch {f.global_batch} read from '{batch_text}'")
    model = _model(row, f, assumptions)
    precision = _precision(row, assumptions)
    cfg = _config(row, f, assumptions)
    train = TrainSpec(global_batch=f.global_batch, seq_len=f.ints["seq_len"], precision=precision)
    problems = structural_violations(model, train, f.ints["n_gpus"], cfg)
    if problems:
        raise PlanError(problems[0])
    assumptions.append(f"cluster preset {f.preset} for '{row['gpu'].strip()}'")
    return PublishedRow(f.run, source_label(row.get("source", "")), model, load_cluster(f.preset), train, cfg,
                        f.metric[0], f.metric[1], tuple(assumptions))


def read_published_runs(path: Path = DEFAULT_RUNS_CSV) -> list[PublishedRow | SkippedRow]:
    """Every row of the CSV, parsed (``PlanError`` when the file is missing or malformed)."""
    if not path.is_file():
        raise PlanError(f"file not found: {path}")
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise PlanError(f"cannot read published runs from {path}: {exc}") from None
    if not rows or "run" not in rows[0] or "source" not in rows[0]:
        raise PlanError(f"{path}: expected the public_runs.csv columns (source, run, layers, …)")
    return [parse_row(row) for row in rows]
