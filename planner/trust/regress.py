"""``ppplan regress``: golden plans per (model, cluster) guard the search's choices.

Each file in ``profiles/regression/`` names one case (model, cluster, GPUs,
global batch, sequence length, optional precision, schedules, stack and fixed degrees) and its
golden result: the chosen configuration, predicted step time, MFU and peak
memory per pipeline rank, with tolerances. Files are named by configuration
and hardware, as Megatron-LM names its golden values
(``<model>_n<gpus>_gbs<batch>_seq<len>__<cluster>.yaml``).

A case fails when the chosen configuration changes in any field, or when a
figure moves beyond its relative tolerance; ``--update`` rewrites the golden
block (atomically) from the current cost model and search.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from planner.search.branch_and_bound import infeasible_message, search
from planner.search.space import DEFAULT_SCHEDULES, DegreeFilter, schedule_name_problems
from planner.trust.processes import process_map, usable_cores
from profiles.errors import InfeasibleError, PlanError
from profiles.files import write_atomic
from profiles.loader import DEFAULT_STACK, REGRESSION_DIR, load_cluster, load_model, load_stack, read_document, validate_as
from profiles.schema import Estimate, ParallelConfig, Precision, StrictModel, TrainSpec

DEFAULT_SUITE = REGRESSION_DIR
CONFIG_FIELDS = ("tp", "cp", "ep", "etp", "pp", "dp", "v", "mbs", "num_microbatches", "schedule", "recompute",
                 "sequence_parallel", "sp_regather", "zero", "stage_layers")
CONFIG_DEFAULTS = {"sp_regather": False}  # written only where a plan sets it, so that goldens without it stay as they are


class RegressionCase(StrictModel):
    name: str
    model: str
    cluster: str
    gpus: PositiveInt
    global_batch: PositiveInt
    seq_len: PositiveInt
    precision: Precision = "bf16"
    schedules: list[str] | None = None
    stack: str | None = None  # None: the default stack (``profiles.loader.DEFAULT_STACK``)
    # degrees the case fixes, as ``ppplan search --ep 2,4,8`` does (``DegreeFilter``): a case that guards a kind of
    # plan (expert parallel, context parallel) keeps guarding it when another kind wins the open search
    degrees: dict[Literal["tp", "cp", "ep", "pp", "etp"], list[PositiveInt]] | None = None

    @field_validator("schedules")
    @classmethod
    def _searched_schedules(cls, names: list[str] | None) -> list[str] | None:
        """Names the search runs (``ppplan search --schedules``): a misspelt one would leave the case no
        plan, and read as "no feasible plan"."""
        problems = schedule_name_problems(names or [])
        if problems:
            raise ValueError(problems[0])
        return names

    def degree_filter(self) -> DegreeFilter | None:
        if not self.degrees:
            return None
        return DegreeFilter(**{name: frozenset(values) for name, values in self.degrees.items()})


class Tolerance(StrictModel):
    """Relative tolerances (fractions) of the golden figures."""

    step_time_rel: float = Field(default=0.01, ge=0)
    mfu_rel: float = Field(default=0.01, ge=0)
    peak_memory_rel: float = Field(default=0.01, ge=0)


class Golden(StrictModel):
    config: dict[str, Any]
    step_time_s: PositiveFloat  # compare() states each change in % of the golden figure
    mfu: PositiveFloat
    peak_memory_gib: list[PositiveFloat]

    @field_validator("config")
    @classmethod
    def _a_configuration(cls, config: dict[str, Any]) -> dict[str, Any]:
        """A configuration as ``ParallelConfig`` reads it (a misspelt key or a string degree is a bad case file,
        not a regression); kept as written, since the comparison is key by key."""
        ParallelConfig.model_validate(config)
        return config


class RegressionFile(StrictModel):
    case: RegressionCase
    tolerance: Tolerance = Tolerance()
    golden: Golden | None = None


@dataclass
class CaseResult:
    name: str
    path: Path
    status: str  # "pass", "fail", "updated"
    diffs: list[str] = field(default_factory=list)
    golden: Golden | None = None
    current: Golden | None = None
    seconds: float = 0.0
    rewrite: str | None = None  # the case file's new text under --update, written once every case has run


def case_files(suite: Path, pattern: str | None = None) -> list[Path]:
    if not suite.is_dir():
        raise PlanError(f"regression suite folder not found: {suite}")
    files = sorted(suite.glob("*.yaml"))
    if pattern:
        files = [f for f in files if fnmatch.fnmatch(f.stem, pattern) or fnmatch.fnmatch(f.stem, f"*{pattern}*")]
    if not files:
        raise PlanError(f"no regression cases in {suite}" + (f" matching '{pattern}'" if pattern else ""))
    return files


def run_case(case: RegressionCase) -> Golden:
    """Search the case exactly as ``ppplan search`` would and keep the winner's figures."""
    model, cluster = load_model(case.model), load_cluster(case.cluster)
    train = TrainSpec(global_batch=case.global_batch, seq_len=case.seq_len, precision=case.precision)
    schedules = tuple(case.schedules) if case.schedules else DEFAULT_SCHEDULES
    result = search(model, cluster, train, case.gpus, top_k=1, schedules=schedules, stack=load_stack(case.stack or DEFAULT_STACK),
                    degrees=case.degree_filter())
    if not result.best:  # well-formed but infeasible (DESIGN.md: exit 1 with the closest plan and why)
        raise InfeasibleError(f"case {case.name}: {infeasible_message(result.closest, model, case.gpus, case.global_batch)}")
    best = result.best[0]
    return golden_of(best.config, best.estimate)


def golden_of(cfg: ParallelConfig, est: Estimate) -> Golden:
    config = cfg.model_dump(mode="json")
    return Golden(
        config={k: config[k] for k in CONFIG_FIELDS  # etp None: expert TP = tp
                if config[k] is not None and (k not in CONFIG_DEFAULTS or config[k] != CONFIG_DEFAULTS[k])},
        step_time_s=round(est.step_time_s, 6),
        mfu=round(est.mfu, 6),
        peak_memory_gib=[round(x, 4) for x in est.peak_memory_gib],
    )


def _rel(old: float, new: float) -> float:
    return abs(new - old) / abs(old) if old else abs(new - old)


def compare(golden: Golden, current: Golden, tol: Tolerance) -> list[str]:
    """Readable differences: every changed config field, every figure beyond tolerance."""
    def field(g: Golden, key: str) -> object:
        return g.config.get(key, CONFIG_DEFAULTS.get(key))

    diffs = [f"config.{key}: {field(golden, key)!r} -> {field(current, key)!r}"
             for key in CONFIG_FIELDS if field(golden, key) != field(current, key)]
    figures = (("step_time_s", golden.step_time_s, current.step_time_s, tol.step_time_rel),
               ("mfu", golden.mfu, current.mfu, tol.mfu_rel))
    for name, old, new, limit in figures:
        if _rel(old, new) > limit:
            diffs.append(f"{name}: {old:.6g} -> {new:.6g} ({100 * (new - old) / old:+.2f}%, tolerance ±{100 * limit:g}%)")
    if len(golden.peak_memory_gib) != len(current.peak_memory_gib):
        diffs.append(f"peak_memory_gib: {len(golden.peak_memory_gib)} ranks -> {len(current.peak_memory_gib)} ranks")
    else:
        for rank, (old, new) in enumerate(zip(golden.peak_memory_gib, current.peak_memory_gib)):
            if _rel(old, new) > tol.peak_memory_rel:
                diffs.append(f"peak_memory_gib[{rank}]: {old:.4f} -> {new:.4f} "
                             f"({100 * (new - old) / old:+.2f}%, tolerance ±{100 * tol.peak_memory_rel:g}%)")
    return diffs


def _header(case: RegressionCase) -> str:
    schedules = ", ".join(case.schedules) if case.schedules else "search default"
    fixed = case.degree_filter()
    degrees = f", degrees: {fixed.describe()}" if fixed else ""
    return (
        f"# Regression case {case.name}: {case.model} on {case.gpus} {case.cluster} GPUs, global batch "
        f"{case.global_batch}, seq {case.seq_len}, {case.precision}, stack {case.stack or DEFAULT_STACK}, schedules: {schedules}"
        f"{degrees}.\n"
        "# The golden block is generated: regenerate with `ppplan regress --update` after a deliberate\n"
        "# cost-model or search change, and review the diff.\n"
    )


def file_text(doc: RegressionFile) -> str:
    data = doc.model_dump(mode="json", exclude_none=True)
    if data["case"].get("precision") == "bf16":
        data["case"].pop("precision")
    body = yaml.safe_dump(data, sort_keys=False, width=120, default_flow_style=None)
    return _header(doc.case) + body


def load_case_file(path: Path) -> RegressionFile:
    return validate_as(RegressionFile, read_document(path), str(path))


def regress_file(path: Path, update: bool) -> CaseResult:
    doc = load_case_file(path)
    start = time.perf_counter()
    try:
        current = run_case(doc.case)
    except (PlanError, InfeasibleError) as exc:  # name the case: the suite runs many
        raise type(exc)(f"{path}: {exc}") from None
    seconds = time.perf_counter() - start
    result = CaseResult(doc.case.name, path, "pass", golden=doc.golden, current=current, seconds=seconds)
    if doc.golden is None:
        result.diffs = ["no golden values yet" + ("" if update else ": run `ppplan regress --update`")]
    else:
        result.diffs = compare(doc.golden, current, doc.tolerance)
    if update and current != doc.golden:
        # rewrite whenever anything moved, within tolerance or not, so goldens stay exact
        result.rewrite = file_text(doc.model_copy(update={"golden": current}))
        result.status = "updated"
    elif result.diffs and not update:
        result.status = "fail"
    return result


def regress(suite: Path = DEFAULT_SUITE, update: bool = False, pattern: str | None = None) -> list[CaseResult]:
    """Every case of ``suite`` (matching ``pattern``), one search per usable core."""
    files = case_files(suite, pattern)
    with process_map(min(usable_cores(), len(files))) as mapper:
        results = list(mapper(partial(regress_file, update=update), files))
    for result in results:  # after every case ran: a case that fails leaves the suite's files as they were
        if result.rewrite is not None:
            write_atomic(result.path, result.rewrite)
    return results
