"""Inputs and output of ``ppplan calibrate``.

Runs come from two kinds of file:

- ``ppplan launch`` metrics (``*.jsonl``): one line per step from each pipeline
  stage's first rank (DESIGN.md metrics line). The configuration is the plan
  the run executed, given with ``--plan`` (one plan for every metrics file, or
  one per metrics file in the same order). The measured step time is the
  median over steps of the slowest stage's ``step_time_s``, leaving out step 0
  (warm-up) when there are more; the measured memory is the largest
  ``peak_memory_gib``.
- External runs (``*.csv``), one row per run. Required columns: ``run, model,
  global_batch, seq_len, tp, pp, dp, mbs, step_time_s``; optional: ``precision``
  (default: bf16 if the cluster lists it, else fp32), ``v`` (1), ``schedule``
  (1f1b, or interleaved-1f1b when v > 1), ``recompute`` (none),
  ``sequence_parallel`` (false), ``zero`` (0), ``offload_layers`` (0: activation CPU offload, as
  ``ppplan evaluate --offload-layers``), ``stage_layers`` (uniform;
  layers per virtual stage separated by spaces or ``;``), ``peak_memory_gib``,
  ``gpus`` (checked against tp·pp·dp), ``cluster`` (informational), ``stack``
  (the software the run ran on, default ppplan-torch: the row is priced on it and
  checked against its rules, as ``evaluate --stack`` does). ``model`` and ``stack``
  are preset names or paths (relative paths are tried next to the CSV). A metrics
  file's run is priced on its plan's stack (``profiles.loader.plan_stack``).

The calibrated cluster is written as YAML with a ``provenance`` block, through a
temporary file and an atomic rename.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from pathlib import Path

import yaml

from costmodels.compute import default_precision, peak_flops
from costmodels.layout import uniform_split
from costmodels.rules import check_plan, config_violations
from planner.trust.calibration import MeasuredRun
from profiles.errors import PlanError
from profiles.files import extra_fields_problem, metrics_plan_problem, read_metrics_jsonl, read_text, unreadable_value
from profiles.hf_config import _first_error
from profiles.limits import MIN_STEP_TIME_S
from profiles.loader import DEFAULT_STACK, load_model, load_plan, load_stack, plan_stack
from profiles.schema import ClusterSpec, ParallelConfig, TrainSpec
from profiles.stack_schema import StackSpec

CSV_REQUIRED = ("run", "model", "global_batch", "seq_len", "tp", "pp", "dp", "mbs", "step_time_s")
TRUE_WORDS = frozenset({"1", "true", "yes", "y"})
CSV_COLUMNS = frozenset(CSV_REQUIRED) | {"precision", "v", "schedule", "recompute", "sequence_parallel", "zero",
                                         "offload_layers", "stage_layers", "peak_memory_gib", "gpus", "cluster", "stack"}


def read_metrics_lines(path: Path) -> list[dict]:
    return read_metrics_jsonl(path, ("step", "step_time_s"))


def measured_step_time_s(records: list[dict]) -> float:
    """Median over steps (step 0 left out when later steps exist) of the slowest stage."""
    per_step: dict[int, float] = {}
    for rec in records:
        per_step[int(rec["step"])] = max(per_step.get(int(rec["step"]), 0.0), float(rec["step_time_s"]))
    steps = sorted(per_step)
    kept = steps[1:] if len(steps) > 1 else steps
    return statistics.median(per_step[s] for s in kept)


def metrics_run(path: Path, plan_path: Path, cluster: ClusterSpec) -> tuple[MeasuredRun, list[str]]:
    """One launch run: its metrics file and the plan it ran."""
    records = read_metrics_lines(path)
    plan = load_plan(plan_path)
    stack = plan_stack(plan)
    try:
        check_plan(plan, stack)  # the rules compare, explain and launch apply
    except PlanError as exc:  # several --plan files: say which
        raise PlanError(f"{plan_path}: {exc}") from None
    problem = metrics_plan_problem(records, plan.config.pp, plan.config.world_size)
    if problem:
        raise PlanError(f"{path}: {problem} ({plan_path}): give the plan that was launched")
    warnings = []
    if plan.cluster.name != cluster.name:
        warnings.append(f"{path}: plan was made for cluster '{plan.cluster.name}', fitted as '{cluster.name}'")
    memory = [float(r["peak_memory_gib"]) for r in records if r.get("peak_memory_gib") is not None]
    step_time_s = measured_step_time_s(records)
    if step_time_s < MIN_STEP_TIME_S:
        raise PlanError(f"{path}: the median step time is {step_time_s:g} s, under {MIN_STEP_TIME_S:g} s: "
                        "a step takes time (are these metrics a run's?)")
    run = MeasuredRun(
        run=path.stem, group=path.stem, model=plan.model, cluster=cluster, train=plan.train,
        config=plan.config, step_time_s=step_time_s,
        peak_memory_gib=max(memory) if memory else None, stack=stack,
    )
    return run, warnings


def _cell(row: dict[str, str], key: str, default: str = "") -> str:
    return (row.get(key) or default).strip()


def _model_for(spec: str, csv_dir: Path):
    beside = csv_dir / spec
    return load_model(str(beside) if not Path(spec).is_absolute() and beside.exists() else spec)


def _stack_for(spec: str, csv_dir: Path) -> StackSpec:
    """The ``stack`` column: a preset name, or a stack file (relative paths are tried next to the CSV, as models)."""
    beside = csv_dir / spec
    return load_stack(str(beside) if not Path(spec).is_absolute() and beside.is_file() else spec)


def in_columns(message: str) -> str:
    """A rule's hint as a runs CSV row can follow it: the options it names (``--precision``,
    ``--sequence-parallel``) become the row's columns (``precision``, ``sequence_parallel``)."""
    def column(option: re.Match[str]) -> str:
        name = option.group(1).replace("-", "_")
        return name if name in CSV_COLUMNS else option.group(0)

    named = re.sub(r"--([a-z][a-z-]*)", column, message)
    return named if named == message else f"{named} (columns of the row)"


def _csv_run(row: dict[str, str], where: str, csv_dir: Path, cluster: ClusterSpec) -> MeasuredRun:
    missing = [k for k in CSV_REQUIRED if not _cell(row, k)]
    if missing:
        raise PlanError(f"{where}: missing column value(s) {', '.join(missing)}")
    try:
        ints = {k: int(_cell(row, k)) for k in ("global_batch", "seq_len", "tp", "pp", "dp", "mbs")}
        v, zero = int(_cell(row, "v", "1")), int(_cell(row, "zero", "0"))
        offload = int(_cell(row, "offload_layers", "0"))
        step = float(_cell(row, "step_time_s"))
        memory = float(_cell(row, "peak_memory_gib")) if _cell(row, "peak_memory_gib") else None
        layers_text = _cell(row, "stage_layers").replace(";", " ").split()
        stage_layers = [int(x) for x in layers_text]
    except ValueError as exc:
        raise PlanError(f"{where}: {unreadable_value(exc)}") from None
    if not math.isfinite(step) or (memory is not None and not math.isfinite(memory)):
        raise PlanError(f"{where}: step_time_s and peak_memory_gib must be finite numbers")
    if memory is not None and memory < 0:
        raise PlanError(f"{where}: peak_memory_gib must not be negative")
    small = [k for k, n in (*ints.items(), ("v", v)) if n < 1]
    if small:  # before the microbatch count divides by dp x mbs
        raise PlanError(f"{where}: {small[0]} must be a positive integer, got {ints.get(small[0], v)}")
    model = _model_for(_cell(row, "model"), csv_dir)
    stack = _stack_for(_cell(row, "stack", DEFAULT_STACK), csv_dir)
    num_stages = ints["pp"] * v
    cfg = ParallelConfig(
        stack=stack.name, tp=ints["tp"], pp=ints["pp"], dp=ints["dp"], v=v, mbs=ints["mbs"],
        num_microbatches=max(1, ints["global_batch"] // (ints["dp"] * ints["mbs"])),
        schedule=_cell(row, "schedule", "interleaved-1f1b" if v > 1 else "1f1b"),
        recompute=_cell(row, "recompute", "none"),
        sequence_parallel=_cell(row, "sequence_parallel", "false").lower() in TRUE_WORDS,
        zero=zero, offload_layers=offload, stage_layers=stage_layers or uniform_split(model.num_layers, num_stages),
    )
    train = TrainSpec(global_batch=ints["global_batch"], seq_len=ints["seq_len"],
                      precision=_cell(row, "precision", default_precision(cluster)))
    gpus = int(_cell(row, "gpus", str(ints["tp"] * ints["pp"] * ints["dp"])))
    problems = config_violations(model, train, gpus, cfg, stack)  # the rules of the stack the run ran on
    try:
        peak_flops(cluster, train.precision)  # raises naming the precisions the cluster's GPU has
    except PlanError as exc:
        problems.append(str(exc))
    if problems:
        raise PlanError(f"{where}: {in_columns(problems[0])}")
    if step < MIN_STEP_TIME_S:
        raise PlanError(f"{where}: step_time_s must be at least {MIN_STEP_TIME_S:g} s, got {step:g}")
    return MeasuredRun(_cell(row, "run"), _cell(row, "run"), model, cluster, train, cfg, step, memory, stack=stack)


def csv_runs(path: Path, cluster: ClusterSpec) -> tuple[list[MeasuredRun], list[str]]:
    try:
        rows = list(csv.DictReader(io.StringIO(read_text(path, "runs CSV"), newline="")))
    except csv.Error as exc:
        raise PlanError(f"{path}: not a CSV file ({exc})") from None
    if not rows:
        raise PlanError(f"{path}: no runs in it: give a header and one row per run ({', '.join(CSV_REQUIRED)}, ...)")
    runs, warnings = [], []
    for number, row in enumerate(rows, start=2):
        where = f"{path}:{number}"
        problem = extra_fields_problem(row)
        if problem:
            raise PlanError(f"{where}: {problem}")
        try:
            runs.append(_csv_run(row, where, path.parent, cluster))
        except (ValueError, TypeError) as exc:  # pydantic errors are ValueErrors
            message = str(exc) if isinstance(exc, PlanError) else _first_error(exc)
            raise PlanError(message if message.startswith(where) else f"{where}: {message}") from None
        named = _cell(row, "cluster")
        if named and named != cluster.name:
            warnings.append(f"{where}: run on cluster '{named}', fitted as '{cluster.name}'")
    return runs, warnings


def read_runs(paths: list[Path], plans: list[Path], cluster: ClusterSpec) -> tuple[list[MeasuredRun], list[str]]:
    """Every run in ``paths`` (CSV files, or metrics JSONL files paired with ``plans``)."""
    folder = next((p for p in paths if p.is_dir()), None)
    if folder is not None:
        raise PlanError(f"{folder} is a directory: give the runs CSV or metrics JSONL files in it")
    metrics = [p for p in paths if p.suffix.lower() != ".csv"]
    if metrics and len(plans) not in (1, len(metrics)):
        raise PlanError(f"{len(metrics)} metrics file(s) need one --plan for all or one --plan each (got {len(plans)})")
    runs, warnings = [], []
    for path in paths:
        if path.suffix.lower() == ".csv":
            more, notes = csv_runs(path, cluster)
            runs += more
        else:
            plan = plans[0] if len(plans) == 1 else plans[metrics.index(path)]
            run, notes = metrics_run(path, plan, cluster)
            runs.append(run)
        warnings += notes
    names = [r.run for r in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PlanError(f"run names must be unique; repeated: {', '.join(duplicates)}")
    if not runs:
        raise PlanError("no runs to calibrate from")
    return runs, warnings


def cluster_yaml(cluster: ClusterSpec) -> str:
    body = yaml.safe_dump(cluster.model_dump(mode="json", exclude_none=True), sort_keys=False, width=100)
    return f"# Written by `ppplan calibrate`; the provenance block says from which runs.\n{body}"


