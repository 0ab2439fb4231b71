"""``ppplan simulate``: run the event simulator on a plan file or on a synthetic case.

    ppplan simulate plan.json [--trace t.json] [--svg t.svg] [--json]
    ppplan simulate plan.json --custom-out custom.json   (search an order nobody ships)
    ppplan simulate --schedule S --pp P --num-microbatches M [--v V] --f-time F --b-time B
                    [--w-time W] [--p2p-time C] [--json] [--trace t.json] [--svg t.svg]

Synthetic times are seconds per stage chunk and microbatch. With ``--w-time``,
B is the backward-input pass and W the backward-weight pass (schedules without
a split run one backward of B + W); without it B is the whole backward, and
schedules that need the split exit 2. ``--json`` prints exactly
``{"makespan", "bubble_fraction", "per_rank": [{"busy", "idle", "peak_inflight_microbatches"}]}``
(DESIGN.md definitions, ``per_rank`` indexed by pipeline rank).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from costmodels.memory import GIB
from costmodels.processor_sharing import peak_node_load
from costmodels.rank_memory import allocator_share
from costmodels.rules import check_plan, size_violations
from costmodels.schedules.actions import Schedule
from costmodels.schedules.generate import generate_schedule, schedule_of
from costmodels.schedules.registry import GENERATED_SCHEDULES, SPLIT_BACKWARD_SCHEDULES, V_SCHEDULES
from costmodels.schedules.torch_csv import format_torch_csv
from costmodels.simulator import SimulationResult, StageTimes, simulate
from planner.cli.app import app, err, out, output_option
from planner.cli.plans import load_checked_plan
from planner.cli.render import json_document, plan_json, sig3
from planner.cli.timeline import ascii_timeline, chrome_trace_json, svg_timeline, timeline_title
from planner.search.custom_schedule import search_custom_schedule
from profiles.errors import PlanError
from profiles.files import check_outputs, write_atomic
from profiles.limits import MAX_ACTION_TIME_S, MAX_GPUS
from profiles.loader import plan_stack
from profiles.schema import Plan


def _positive(name: str, value: float | None, allow_zero: bool = False) -> float:
    if value is None or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero) or value > MAX_ACTION_TIME_S:
        bound = ">= 0" if allow_zero else "> 0"
        raise PlanError(f"{name} must be a finite number of seconds {bound} and <= {MAX_ACTION_TIME_S:g} (got {value})")
    return value


CONFIG_HINTS = {  # a configuration's way to change M -> a synthetic case's
    ": raise the global batch or lower mbs/dp": ": raise --num-microbatches",
    ": raise mbs or dp, or lower the global batch": ": lower --num-microbatches",
}


def _synthetic_hint(message: str) -> str:
    for config_hint, option in CONFIG_HINTS.items():
        message = message.replace(config_hint, option)
    return message


def synthetic_case(
    schedule: str | None, pp: int | None, num_microbatches: int | None, v: int | None,
    f_time: float | None, b_time: float | None, w_time: float | None, p2p_time: float,
) -> tuple[Schedule, StageTimes]:
    """The schedule and uniform per-stage times of a synthetic ``simulate`` call."""
    missing = [flag for flag, value in (("--schedule", schedule), ("--pp", pp), ("--num-microbatches", num_microbatches),
                                        ("--f-time", f_time), ("--b-time", b_time)) if value is None]
    if missing:
        raise PlanError(f"give a plan file, or a synthetic case with {', '.join(missing)} (missing)")
    if schedule not in GENERATED_SCHEDULES:
        raise PlanError(f"unknown schedule '{schedule}': use one of {', '.join(GENERATED_SCHEDULES)}")
    if pp < 1 or num_microbatches < 1 or (v is not None and v < 1):
        raise PlanError("--pp, --num-microbatches and --v must be positive integers")
    if pp > MAX_GPUS:
        raise PlanError(f"--pp {pp} is above the cap of {MAX_GPUS:,} pipeline ranks")

    if w_time is None and schedule in SPLIT_BACKWARD_SCHEDULES:
        raise PlanError(
            f"schedule '{schedule}' splits the backward into B and W: give --w-time "
            "(then --b-time is the backward-input pass only)"
        )
    f, b = _positive("--f-time", f_time), _positive("--b-time", b_time)
    w = _positive("--w-time", w_time, allow_zero=True) if w_time is not None else 0.0
    c = _positive("--p2p-time", p2p_time, allow_zero=True)
    stages_per_rank = v if v is not None else (2 if schedule in V_SCHEDULES else 1)
    try:
        problems = size_violations(pp * stages_per_rank, num_microbatches)
        if problems:
            raise PlanError(problems[0])
        sched = generate_schedule(schedule, pp, stages_per_rank, num_microbatches)
    except PlanError as exc:  # the rules' hints name a configuration's knobs; a synthetic case has --num-microbatches
        raise PlanError(_synthetic_hint(str(exc))) from None
    stages = sched.num_stages
    times = StageTimes((f,) * stages, (b,) * stages, (w,) * stages, (1.0,) * stages, (c,) * (stages - 1))
    return sched, times


def plan_case(plan: Plan) -> tuple[Schedule, StageTimes]:
    """The plan's schedule and its per-stage times from the cost model."""
    from costmodels.estimate import stage_times

    cfg = plan.config
    times = stage_times(plan.model, plan.cluster, plan.train, cfg, stack=plan_stack(plan))
    return schedule_of(cfg.schedule, cfg.pp, cfg.v, cfg.num_microbatches, cfg.schedule_csv), times


def inflight_caps(plan: Plan, times: StageTimes) -> list[int]:
    """Most microbatches each rank may hold so that the plan still fits: the memory the
    estimate counts outside activations (and outside the optimizer step's excess over the backward,
    which more activations only shrink), then whole microbatches of that rank's stage."""
    frag = 1.0 + allocator_share(plan.cluster, plan_stack(plan))
    caps = []
    for r, parts in enumerate(plan.estimate.memory_breakdown_gib):
        fixed = sum(parts.values()) - (parts["activations"] + parts.get("optimizer_step", 0.0)) * frag
        per_microbatch = times.activation_bytes[r] / GIB * frag
        room = plan.estimate.memory_limit_gib - fixed
        caps.append(max(1, min(plan.config.num_microbatches, int(room / per_microbatch))))
    return caps


def write_custom_plan(plan_path: Path, out_path: Path) -> str:
    """Search an action order for the plan under its memory caps (planner.search.custom_schedule)
    and write the plan again with schedule 'custom' and that order; returns a summary line."""
    from costmodels.estimate import estimate, stage_times

    plan = load_checked_plan(plan_path)
    cfg = plan.config
    if cfg.v != 1:
        raise PlanError(f"custom schedules are searched for one stage per rank; the plan has v={cfg.v}")
    stack = plan_stack(plan)
    times = stage_times(plan.model, plan.cluster, plan.train, cfg, stack=stack)
    found = search_custom_schedule(times, cfg.pp, cfg.num_microbatches, inflight_caps(plan, times))
    custom_cfg = cfg.model_copy(update={"schedule": "custom", "schedule_csv": format_torch_csv(found.schedule)})
    est = estimate(plan.model, plan.cluster, plan.train, custom_cfg, stack=stack)
    summary = (f"custom order ({found.method}): pipeline {found.makespan_s:.3g} s vs best shipped "
               f"{found.baseline_name} {found.baseline_makespan_s:.3g} s ({100 * found.gain:+.3g}%)")
    new = plan.model_copy(update={"config": custom_cfg, "estimate": est, "rationale": [summary, *plan.rationale]})
    check_plan(new, stack)  # the stack's rules, before the file is written: a refused plan never replaces one
    write_atomic(out_path, plan_json(new))
    return summary


def result_json(result: SimulationResult) -> dict:
    """The ``--json`` document (DESIGN.md: exactly these keys)."""
    return {
        "makespan": result.makespan_s,
        "bubble_fraction": result.bubble_fraction,
        "per_rank": [
            {"busy": busy, "idle": idle, "peak_inflight_microbatches": peak}
            for busy, idle, peak in zip(result.busy_s, result.idle_s, result.peak_inflight_microbatches)
        ],
    }


def _rank_table(result: SimulationResult) -> Table:
    table = Table(title=None, show_edge=False, pad_edge=False)
    for header in ("rank", "busy", "idle", "busy/makespan", "peak in-flight"):
        table.add_column(header, justify="right")
    for rank, (busy, idle, peak) in enumerate(zip(result.busy_s, result.idle_s, result.peak_inflight_microbatches)):
        table.add_row(str(rank), sig3(busy), sig3(idle), sig3(busy / result.makespan_s), str(peak))
    return table


def _print_human(result: SimulationResult) -> None:
    out.print(timeline_title(result), markup=False)
    drawing = ascii_timeline(result)
    if drawing is None:
        out.print("(timeline too long for the terminal: use --svg or --trace)", markup=False)
    else:
        out.print("legend: F forward, B backward-input, W backward-weight, X full backward, '.' idle"
                  + ("; lower case: a rank's second stage chunk" if result.schedule.v > 1 else ""), markup=False)
        out.print(drawing, markup=False, crop=False, overflow="ignore")
    out.print(_rank_table(result))


def _print_overlap_note(plan: Plan, result: SimulationResult) -> None:
    """Where the plan's stack post-validates its optimizer step, the step the estimate prices is the
    steady-state period of overlapped steps (``costmodels.steady_state``), not one step's makespan."""
    if plan_stack(plan).steps_overlap(plan.config.schedule, plan.train.precision):
        out.print(f"steps overlap (stack {plan.config.stack} post-validates its optimizer step): the estimate's step is "
                  f"their steady-state period, {sig3(plan.estimate.step_time_s)} s, not this step's makespan "
                  f"{sig3(result.makespan_s)} s plus its optimizer", markup=False)


def _print_timeshare_note(plan: Plan, result: SimulationResult) -> None:
    """Where ranks share a node's cores (a CPU cluster's ``concurrent_ranks_per_node``), the estimate prices
    the action lists under processor sharing (``costmodels.processor_sharing``); this simulation gives
    every rank a core of its own, so its makespan can be far below the plan's step."""
    cores = plan.cluster.concurrent_ranks_per_node
    if cores is None:
        return
    wanted = peak_node_load(plan.cluster, plan.config)
    if wanted > cores:  # the condition timeshared_step_s prices
        out.print(f"ranks share cores (a node's pipeline ranks want {wanted:.3g} of its {cores:g} cores): the estimate's "
                  f"step, {sig3(plan.estimate.step_time_s)} s, prices that sharing; this makespan, "
                  f"{sig3(result.makespan_s)} s, gives each rank a core of its own", markup=False)


@app.command("simulate")
def simulate_cmd(
    plan: Optional[Path] = typer.Argument(None, help="a plan file from search/evaluate (or give a synthetic case)"),
    schedule: Optional[str] = typer.Option(None, "--schedule", help=f"synthetic: one of {', '.join(GENERATED_SCHEDULES)}"),
    pp: Optional[int] = typer.Option(None, "--pp", help="synthetic: pipeline ranks"),
    num_microbatches: Optional[int] = typer.Option(None, "--num-microbatches", help="synthetic: microbatches per step"),
    v: Optional[int] = typer.Option(None, "--v", help="synthetic: stages per rank (default 1; 2 for zbv/dualpipev)"),
    f_time: Optional[float] = typer.Option(None, "--f-time", help="synthetic: forward seconds per stage chunk"),
    b_time: Optional[float] = typer.Option(None, "--b-time", help="synthetic: backward seconds (backward-input with --w-time)"),
    w_time: Optional[float] = typer.Option(None, "--w-time", help="synthetic: backward-weight seconds"),
    p2p_time: float = typer.Option(0.0, "--p2p-time", help="synthetic: seconds per stage-to-stage transfer"),
    trace: Optional[Path] = output_option(None, "--trace", help="write a Chrome/Perfetto trace JSON here"),
    svg: Optional[Path] = output_option(None, "--svg", help="write an SVG timeline here"),
    as_json: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
    custom_out: Optional[Path] = output_option(
        None, "--custom-out", help="plan file: search an action order that beats the shipped schedules, write the plan with it"),
) -> None:
    """Simulate a pipeline schedule: makespan, bubble and per-rank busy/idle/in-flight."""
    synthetic = [schedule, pp, num_microbatches, v, f_time, b_time, w_time]
    if plan is not None and (any(x is not None for x in synthetic) or p2p_time != 0.0):
        raise PlanError("give either a plan file or the synthetic options (--schedule, --pp, ...), not both")
    if custom_out is not None and plan is None:
        raise PlanError("--custom-out needs a plan file")
    check_outputs(custom_out, trace, svg)
    check_outputs(trace, svg, inputs=(plan,))  # --custom-out may rewrite the plan in place; a trace may not
    if plan is not None:
        load_checked_plan(plan)  # bad input before any output is written
    if custom_out is not None:
        summary = write_custom_plan(plan, custom_out)
        plan = custom_out
        err.print(summary, markup=False)
    checked = load_checked_plan(plan) if plan is not None else None
    if checked is not None:
        sched, times = plan_case(checked)
    else:
        sched, times = synthetic_case(schedule, pp, num_microbatches, v, f_time, b_time, w_time, p2p_time)
    result = simulate(sched, times)
    rendered = {trace: chrome_trace_json(result) if trace else "", svg: svg_timeline(result, timeline_title(result)) if svg else ""}
    for path, text in rendered.items():
        if path is not None:
            write_atomic(path, text)
    if as_json:
        out.print_json(json_document(result_json(result)))
        return
    _print_human(result)
    if checked is not None:
        _print_overlap_note(checked, result)
        _print_timeshare_note(checked, result)
    for path in (p for p in (trace, svg) if p is not None):
        out.print(f"wrote {path}", markup=False)
