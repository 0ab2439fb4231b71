"""``ppplan search`` and ``ppplan evaluate``, and the options and defaults they share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, Progress, TextColumn

from costmodels.compute import default_precision, peak_flops
from costmodels.estimate import estimate
from costmodels.layer_costs import LayerTimes
from costmodels.layout import default_split, end_stage_floors, min_layers_for
from costmodels.profile_times import layer_times_for
from costmodels.rules import check_config, precision_violations
from planner.cli.app import app, comma_list, err, note, out, output_option, small_int, warn
from planner.cli.render import json_document, memory_table, plan_json, plans_table
from planner.search.branch_and_bound import RANKED_AT_LEAST, Scored, SearchResult, infeasible_message, search
from planner.search.explain import binding_constraints, kernel_warnings, nearest_alternatives, rationale, waste_warnings
from planner.search.space import DEFAULT_SCHEDULES, RECOMPUTE_KINDS, DegreeFilter, schedule_name_problems
from planner.trust.error_bands import with_error_band
from profiles.errors import InfeasibleError, PlanError, quoted
from profiles.files import check_outputs, write_atomic
from profiles.limits import MAX_GLOBAL_BATCH, MAX_GPUS, MAX_LAYERS, MAX_SEQ_LEN, MAX_TOP_K
from profiles.loader import (
    DEFAULT_STACK,
    carried_stack,
    is_hf_config,
    load_cluster,
    load_model,
    load_stack,
    preset_names,
    read_comm_profile,
    read_profile,
    validate_as,
)
from profiles.schema import SCHEDULE_NAMES, ClusterSpec, Estimate, ModelSpec, ParallelConfig, Plan, TrainSpec
from profiles.stack_schema import StackSpec

PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp32", "fp8")
# A Hugging Face config's max_position_embeddings is the longest context the model accepts, not a
# training length (Llama-3.1: 131072): without --seq-len, 4096 (Llama 2's and 3's pretraining
# context) or that limit if shorter.
HF_DEFAULT_SEQ_LEN = 4096

ModelOpt = typer.Option(..., "--model", help="preset name (profiles/models/), our YAML/JSON, or a Hugging Face config.json")
ClusterOpt = typer.Option(..., "--cluster", help="preset name (profiles/clusters/) or YAML")
GpusOpt = typer.Option(..., "--gpus", min=1, max=MAX_GPUS, help="total GPUs")
BatchOpt = typer.Option(..., "--global-batch", min=1, max=MAX_GLOBAL_BATCH, help="sequences per step")
SeqOpt = typer.Option(None, "--seq-len", min=1, max=MAX_SEQ_LEN,
                      help=f"default: the model's seq_len; for a Hugging Face config min({HF_DEFAULT_SEQ_LEN}, max_position_embeddings)")
PrecisionOpt = typer.Option(None, "--precision", help=f"one of {', '.join(PRECISIONS)} (default bf16 if the GPU has it, else fp32)")
ProfileOpt = typer.Option(None, "--profile", help="measured layer profile (ppplan profile)")
CommProfileOpt = typer.Option(None, "--comm-profile", help="measured collectives (ppplan profile-comm)")
MismatchOpt = typer.Option(False, "--allow-mismatch", help="use a profile taken for another shape or device")
OutOpt = output_option(None, "--out", help="write the plan file here")
StackOpt = typer.Option(DEFAULT_STACK, "--stack", help=f"the software the plan runs on: one of {', '.join(preset_names('stacks'))} "
                        "(profiles/stacks/) or a stack YAML")
JsonOpt = typer.Option(False, "--json", help="one JSON document on stdout")
RECOMPUTE_HELP = f"one of {', '.join(RECOMPUTE_KINDS)}, or one per stage, comma separated"


def resolve_train(
    model: ModelSpec, cluster: ClusterSpec, global_batch: int, seq_len: int | None, precision: str | None,
    stack: StackSpec | None = None, hf_config: bool = False,
) -> TrainSpec:
    """Defaults of DESIGN.md: the model's seq_len (for a Hugging Face config, whose
    max_position_embeddings is a limit rather than a training length, min(4096, it), stated as an
    assumption on stderr); bf16 if the cluster lists it, else fp32; a precision the stack does not run
    is bad input."""
    if precision is None:
        precision = default_precision(cluster)
    if precision not in PRECISIONS:
        raise PlanError(f"unknown precision '{precision}': use {', '.join(PRECISIONS)}")
    peak_flops(cluster, precision)  # raises PlanError naming the precisions the GPU has
    problems = precision_violations(precision, stack) if stack else []
    if problems:
        raise PlanError(problems[0])
    if seq_len is None and hf_config:
        seq_len = min(HF_DEFAULT_SEQ_LEN, model.seq_len)
        note(f"assuming --seq-len {seq_len} = min({HF_DEFAULT_SEQ_LEN}, max_position_embeddings {model.seq_len}) "
             "for a Hugging Face config; pass --seq-len to choose")
    return TrainSpec(global_batch=global_batch, seq_len=seq_len or model.seq_len, precision=precision)


def load_layers(profile: Optional[Path], comm_profile: Optional[Path], model: ModelSpec, cluster: ClusterSpec,
                train: TrainSpec, allow_mismatch: bool, stack: StackSpec) -> LayerTimes | None:
    """Measured layer times (and/or a measured link) replace the roofline when given."""
    if profile is None and comm_profile is None:
        return None
    comm = read_comm_profile(comm_profile) if comm_profile else None
    measured = read_profile(profile) if profile else None
    return layer_times_for(measured, comm, model, cluster, train, allow_mismatch, warn=warn, stack=stack)


def parse_schedules(text: str | None) -> tuple[str, ...]:
    if text is None:
        return DEFAULT_SCHEDULES
    names = tuple(comma_list(text, "--schedules"))
    problems = schedule_name_problems(names)
    if problems:
        raise PlanError(problems[0])
    return names


def _parse_degrees(**lists: str | None) -> DegreeFilter | None:
    """``--tp 4,8`` and the like: positive integers up to the GPU cap, or no filter when none is given."""
    fixed: dict[str, frozenset[int]] = {}
    for name, text in lists.items():
        if text is None:
            continue
        values = set()
        for entry in comma_list(text, f"--{name}"):
            if not entry.isdigit() or len(entry) > len(str(MAX_GPUS)) or not 1 <= int(entry) <= MAX_GPUS:
                raise PlanError(f"--{name} '{quoted(entry, 12)}' is not a degree: give integers from 1 to {MAX_GPUS}")
            values.add(int(entry))
        fixed[name] = frozenset(values)
    return DegreeFilter(**fixed) if fixed else None


def _progress():
    return Progress(TextColumn("searching"), BarColumn(), TextColumn("{task.completed}/{task.total} candidates"),
                    console=err, transient=True, disable=not err.is_terminal)


def _banded(est: Estimate, stack: str, cluster: ClusterSpec, profile: Optional[Path]) -> Estimate:
    """The estimate with the error band of its stack and GPU family (``ppplan validate``,
    ``planner.trust.error_bands``); a measured profile replaces the roofline the band describes,
    so it gets none."""
    return est if profile is not None else with_error_band(est, stack, cluster)


def _plans(model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, result: SearchResult,
           profile: Optional[Path] = None, degrees: DegreeFilter | None = None,
           schedules: tuple[str, ...] | None = None, cross_node_tp: bool = False) -> list[Plan]:
    """The plans of ``--json`` and ``--out``, best first: the best one carries the rationale and its
    nearest rejected alternatives; each runner-up says how far behind it is. Each estimate carries
    its error band."""
    best = result.best[0]
    alternatives = nearest_alternatives(result.searcher, best, degrees=degrees, schedules=schedules, cross_node_tp=cross_node_tp,
                                        ranked=result.ranked)
    runner_up = result.ranked[1] if len(result.ranked) > 1 else None  # the same line whatever k (RANKED_AT_LEAST)
    carried = carried_stack(result.searcher.stack)
    plans = [Plan(model=model, cluster=cluster, train=train, config=best.config,
                  estimate=_banded(best.estimate, best.config.stack, cluster, profile),
                  rationale=rationale(best, runner_up, alternatives), alternatives=alternatives, stack_spec=carried)]
    for rank, scored in enumerate(result.best[1:], start=2):
        gap = 100 * (scored.estimate.step_time_s / best.estimate.step_time_s - 1)
        lines = [f"#{rank} of the search: {gap:.2g}% slower than #1" if gap >= 0.005 else
                 f"#{rank} of the search: ties with #1 on step time"]
        plans.append(Plan(model=model, cluster=cluster, train=train, config=scored.config,
                          estimate=_banded(scored.estimate, scored.config.stack, cluster, profile), rationale=lines,
                          stack_spec=carried))
    return plans


def _title(model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, gpus: int, stack: StackSpec) -> str:
    return (f"{model.name} on {gpus} x {cluster.gpu.name}, global batch {train.global_batch}, seq {train.seq_len}, "
            f"{train.precision}, stack {stack.name}")


@app.command("search")
def search_cmd(
    model: str = ModelOpt, cluster: str = ClusterOpt, gpus: int = GpusOpt, global_batch: int = BatchOpt,
    seq_len: Optional[int] = SeqOpt, precision: Optional[str] = PrecisionOpt,
    top_k: int = typer.Option(RANKED_AT_LEAST, "--top-k", min=1, max=MAX_TOP_K, help="plans to return"),
    schedules: Optional[str] = typer.Option(None, "--schedules", help=f"comma list of {', '.join(DEFAULT_SCHEDULES)} "
                                            "(default: all the stack runs)"),
    allow_cross_node_tp: bool = typer.Option(False, "--allow-cross-node-tp", help="also try TP groups larger than a node"),
    profile: Optional[Path] = ProfileOpt, comm_profile: Optional[Path] = CommProfileOpt, allow_mismatch: bool = MismatchOpt,
    tp: Optional[str] = typer.Option(None, "--tp", help="comma list: search only these tensor-parallel degrees"),
    pp: Optional[str] = typer.Option(None, "--pp", help="comma list: only these pipeline degrees"),
    cp: Optional[str] = typer.Option(None, "--cp", help="comma list: only these context-parallel degrees"),
    ep: Optional[str] = typer.Option(None, "--ep", help="comma list: only these expert-parallel degrees"),
    etp: Optional[str] = typer.Option(None, "--etp", help="comma list: only these expert-TP degrees (tp, or 1 on "
                                      "megatron-core: whole experts)"),
    out_path: Optional[Path] = OutOpt, as_json: bool = JsonOpt, stack: str = StackOpt,
) -> None:
    """Find the fastest plans that fit in memory (exact under the simulated price, within 0.5 %)."""
    check_outputs(out_path, inputs=(model, cluster, stack, profile, comm_profile))
    degrees = _parse_degrees(tp=tp, pp=pp, cp=cp, ep=ep, etp=etp)
    model_spec, cluster_spec, stack_spec = load_model(model), load_cluster(cluster), load_stack(stack)
    train = resolve_train(model_spec, cluster_spec, global_batch, seq_len, precision, stack_spec, is_hf_config(model))
    names = parse_schedules(schedules)
    layers = load_layers(profile, comm_profile, model_spec, cluster_spec, train, allow_mismatch, stack_spec)
    with _progress() as bar:
        task = bar.add_task("search", total=None)
        result = search(model_spec, cluster_spec, train, gpus, top_k, names, allow_cross_node_tp, layers,
                        progress=lambda done, total: bar.update(task, completed=done, total=total), stack=stack_spec,
                        degrees=degrees)
    if not result.best:
        _report_infeasible(result.closest, model_spec, cluster_spec, train, gpus, as_json, result.searcher.stack, profile)
    plans = _plans(model_spec, cluster_spec, train, result, profile, degrees, names if schedules is not None else None,
                   allow_cross_node_tp)
    best = plans[0].config
    for warning in (waste_warnings(best, plans[0].estimate, global_batch, stack_spec.steps_overlap(best.schedule, train.precision))
                    + kernel_warnings(model_spec, stack_spec, train.precision)):
        warn(warning)
    if out_path:
        write_atomic(out_path, plan_json(plans[0]))
    if as_json:
        out.print_json(json_document([json.loads(plan_json(p)) for p in plans]))
        return
    title = (f"{_title(model_spec, cluster_spec, train, gpus, stack_spec)}: {result.candidates} candidates, "
             f"{result.evaluated} simulated, the rest excluded by bounds")
    out.print(title, markup=False, soft_wrap=False, overflow="fold")
    out.print(plans_table([(p.config, p.estimate) for p in plans], None, out.width))
    _print_overlap_footnote(stack_spec, train.precision, [p.config.schedule for p in plans])
    for line in plans[0].rationale:
        out.print(f"  {line}", markup=False, overflow="fold")
    if out_path:
        out.print(f"wrote {out_path}", markup=False)


def _print_overlap_footnote(stack: StackSpec, precision: str, schedules: list[str]) -> None:
    """Under the table: which of its schedules run with overlapped steps on ``stack`` (a post-validated
    optimizer step: ``costmodels.steady_state``), whose step is the period while ``bubble %`` is DESIGN's
    one-step ``bubble_fraction``."""
    overlapped = sorted({s for s in schedules if stack.steps_overlap(s, precision)})
    if overlapped:
        out.print(f"  {', '.join(overlapped)} on {stack.name} ({precision}): consecutive steps overlap (post-validated "
                  "optimizer step), so the step is their steady-state period; bubble % is one step's", markup=False,
                  overflow="fold")


def _report_infeasible(closest: Scored | None, model: ModelSpec, cluster: ClusterSpec, train: TrainSpec,
                       gpus: int, as_json: bool, stack: StackSpec, profile: Optional[Path] = None) -> None:
    if closest is None:
        if as_json:  # stdout is one JSON document: the list of plans, none here
            out.print_json("[]")
        raise InfeasibleError(infeasible_message(closest, model, gpus, train.global_batch))
    est = _banded(closest.estimate, closest.config.stack, cluster, profile)
    if as_json:
        plan = Plan(model=model, cluster=cluster, train=train, config=closest.config, estimate=est,
                    rationale=binding_constraints(est), stack_spec=carried_stack(stack))
        out.print_json(json_document([json.loads(plan_json(plan))]))
    else:
        out.print(plans_table([(closest.config, est)], "No plan fits; the closest one:", out.width))
        out.print(memory_table(est))
    raise InfeasibleError(infeasible_message(closest, model, gpus, train.global_batch))


def _parse_recompute(text: str, stages: int) -> str | list[str]:
    kinds = [k.strip() for k in text.split(",")]
    for k in kinds:
        if k not in {"none", "selective", "full"}:
            raise PlanError(f"unknown recompute '{k}': use {RECOMPUTE_HELP}")
    if len(kinds) == 1:
        return kinds[0]
    if len(kinds) != stages:
        raise PlanError(f"--recompute lists {len(kinds)} stages but pp*v = {stages}")
    return kinds


def _parse_stage_layers(text: str | None, num_layers: int, stages: int) -> list[int]:
    if text is not None and not text.strip():
        raise PlanError("--stage-layers '' is empty: give layers per virtual stage (e.g. 5,6,6,5), or drop it for a uniform split")
    if text is None:
        split = default_split(num_layers, stages)
        if split is None:
            raise PlanError(f"{num_layers} layers cannot fill pp*v = {stages} stages (at least {min_layers_for(stages)}: "
                            "the end stages may hold only the embedding or the head): lower --pp or --v")
        return split
    try:
        layers = [small_int(x) for x in text.split(",")]
    except ValueError:
        raise PlanError(f"--stage-layers must be comma-separated integers, got '{quoted(text)}'") from None
    if any(n < floor for n, floor in zip(layers, end_stage_floors(len(layers)))):
        raise PlanError("--stage-layers entries must be >= 1 (the first and last may be 0: the embedding or the head alone)")
    return layers


@app.command("evaluate")
def evaluate_cmd(
    model: str = ModelOpt, cluster: str = ClusterOpt, gpus: int = GpusOpt, global_batch: int = BatchOpt,
    tp: int = typer.Option(..., "--tp", min=1, max=MAX_GPUS), pp: int = typer.Option(..., "--pp", min=1, max=MAX_GPUS),
    mbs: int = typer.Option(..., "--mbs", min=1, max=MAX_GLOBAL_BATCH), v: int = typer.Option(1, "--v", min=1, max=MAX_LAYERS),
    cp: int = typer.Option(1, "--cp", min=1, max=MAX_GPUS, help="context parallel: the sequence split over cp ranks"),
    ep: int = typer.Option(1, "--ep", min=1, max=MAX_GPUS, help="expert parallel: the experts split over ep of the dp x cp ranks"),
    etp: Optional[int] = typer.Option(None, "--etp", min=1, max=MAX_GPUS,
                                      help="expert TP: tp (the default) or 1 (megatron-core's parallel folding: whole "
                                      "experts, ep out of the tp x dp x cp ranks)"),
    schedule: str = typer.Option("1f1b", "--schedule", help=f"one of {', '.join(SCHEDULE_NAMES)}"),
    recompute: str = typer.Option("none", "--recompute", help=RECOMPUTE_HELP),
    sequence_parallel: bool = typer.Option(False, "--sequence-parallel"),
    sp_regather: bool = typer.Option(False, "--sp-regather", help="keep the sequence-parallel blocks' inputs as shards "
                                     "and gather them again in the backward (ppplan-torch; Megatron-LM always does)"),
    zero: int = typer.Option(0, "--zero", min=0, max=3, help="ZeRO stage: 0, 1, 2 or 3"),
    offload_layers: int = typer.Option(0, "--offload-layers", min=0, max=MAX_LAYERS,
                                       help="activation CPU offload of the first N layers (megatron-core, pp 1, no recompute)"),
    stage_layers: Optional[str] = typer.Option(None, "--stage-layers", help="layers per virtual stage, e.g. 5,6,6,5 (ends may be 0)"),
    seq_len: Optional[int] = SeqOpt, precision: Optional[str] = PrecisionOpt,
    profile: Optional[Path] = ProfileOpt, comm_profile: Optional[Path] = CommProfileOpt, allow_mismatch: bool = MismatchOpt,
    out_path: Optional[Path] = OutOpt, as_json: bool = JsonOpt, stack: str = StackOpt,
) -> None:
    """Price one fixed configuration (uniform cut points unless --stage-layers)."""
    check_outputs(out_path, inputs=(model, cluster, stack, profile, comm_profile))
    model_spec, cluster_spec, stack_spec = load_model(model), load_cluster(cluster), load_stack(stack)
    train = resolve_train(model_spec, cluster_spec, global_batch, seq_len, precision, stack_spec, is_hf_config(model))
    if schedule not in SCHEDULE_NAMES:
        raise PlanError(f"unknown schedule '{schedule}': choose from {', '.join(SCHEDULE_NAMES)}")
    if gpus % (tp * cp * pp):
        raise PlanError(f"--gpus {gpus} is not divisible by tp*cp*pp = {tp * cp * pp}: pick degrees whose product divides the GPUs")
    dp = gpus // (tp * cp * pp)
    if global_batch % (dp * mbs):
        raise PlanError(f"global batch {global_batch} is not divisible by dp*mbs = {dp}*{mbs}: change the batch, --mbs or the degrees")
    cfg = validate_as(ParallelConfig, dict(
        stack=stack_spec.name, tp=tp, cp=cp, ep=ep, etp=None if etp == tp else etp, pp=pp, dp=dp, v=v, mbs=mbs, num_microbatches=global_batch // (dp * mbs),
        schedule=schedule,
        recompute=_parse_recompute(recompute, pp * v), sequence_parallel=sequence_parallel, sp_regather=sp_regather,
        zero=zero, offload_layers=offload_layers,
        stage_layers=_parse_stage_layers(stage_layers, model_spec.num_layers, pp * v),
    ), "the configuration")  # fmt: skip
    check_config(model_spec, train, gpus, cfg, stack_spec)
    layers = load_layers(profile, comm_profile, model_spec, cluster_spec, train, allow_mismatch, stack_spec)
    est = _banded(estimate(model_spec, cluster_spec, train, cfg, layers, stack=stack_spec),
                  cfg.stack, cluster_spec, profile)
    plan = Plan(model=model_spec, cluster=cluster_spec, train=train, config=cfg, estimate=est,
                rationale=binding_constraints(est), stack_spec=carried_stack(stack_spec))
    if out_path:
        write_atomic(out_path, plan_json(plan))
    if as_json:
        out.print_json(json_document({"config": json.loads(cfg.model_dump_json()), "estimate": json.loads(est.model_dump_json())}))
        return
    for warning in (waste_warnings(cfg, est, global_batch, stack_spec.steps_overlap(cfg.schedule, train.precision))
                    + kernel_warnings(model_spec, stack_spec, train.precision)):
        warn(warning)
    out.print(_title(model_spec, cluster_spec, train, gpus, stack_spec), markup=False, overflow="fold")
    out.print(plans_table([(cfg, est)], None, out.width))
    out.print(memory_table(est))
    for line in plan.rationale:
        out.print(f"  {line}", markup=False, overflow="fold")
