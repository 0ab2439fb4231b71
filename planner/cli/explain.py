"""``ppplan explain`` (why a plan wins) and ``ppplan schema`` (the plan file's JSON Schema)."""

from __future__ import annotations

from pathlib import Path

import typer

from planner.cli.app import app, out, warn
from planner.cli.plans import load_checked_plan
from planner.cli.render import json_document, memory_band_line, memory_table, plans_table, seconds, sig3
from planner.search.branch_and_bound import Scored, Searcher
from planner.search.explain import binding_constraints, candidate_of, config_label, kernel_warnings, nearest_alternatives, waste_warnings
from profiles.loader import plan_stack
from profiles.schema import Breakdown, Estimate, Plan

# The breakdown's terms in the order a step spends them, and how explain names them.
BREAKDOWN_TERMS: dict[str, str] = {
    "compute_s": "compute", "recompute_s": "recompute", "tp_comm_s": "TP comm", "cp_comm_s": "CP comm",
    "ep_comm_s": "EP comm", "pp_comm_s": "PP p2p", "dp_comm_s": "DP comm", "bubble_s": "bubble",
    "optimizer_s": "optimizer", "overhead_s": "overhead", "offload_s": "offload",
}


def breakdown_lines(est: Estimate) -> list[str]:
    """The exposed parts of the busiest rank's step (they add up to the step time), then the time
    overlapped with compute, apart; a sum that misses the step is said, not hidden."""
    b: Breakdown = est.breakdown
    step = est.step_time_s
    exposed = {label: getattr(b, key) for key, label in BREAKDOWN_TERMS.items() if getattr(b, key)}
    lines = [f"  {label:<10} {sig3(value):>9} s  {100 * value / step:5.1f}%" for label, value in exposed.items()]
    total = sum(exposed.values())
    lines.append(f"  {'= step':<10} {sig3(total):>9} s  {100 * total / step:5.1f}%")
    if abs(total / step - 1) > 0.005:
        lines.append(f"  (these parts add up to {100 * total / step:.3g}% of the {sig3(step)} s step: the estimate's "
                     "breakdown is not yet an exact split of it)")
    if b.overlapped:
        lines.append("  overlapped with compute (not in the step):")
        lines += [f"  {name:<10} {sig3(value):>9} s" for name, value in b.overlapped.items()]
    return lines


@app.command("explain")
def explain_cmd(plan_path: Path = typer.Argument(..., help="plan.json")) -> None:
    """Why this plan: what binds, the time breakdown, and the nearest rejected alternatives."""
    plan = load_checked_plan(plan_path)
    est, cfg = plan.estimate, plan.config
    gpus = cfg.world_size
    stack = plan_stack(plan)
    overlap = stack.steps_overlap(cfg.schedule, plan.train.precision)
    for warning in waste_warnings(cfg, est, plan.train.global_batch, overlap) + kernel_warnings(plan.model, stack, plan.train.precision):
        warn(warning)
    out.print(f"{plan.model.name} on {gpus} x {plan.cluster.gpu.name}, stack {cfg.stack}: step "
              f"{seconds(est.step_time_s, est.error_band_pct)}, MFU {100 * est.mfu:.3g}%", markup=False, overflow="fold")
    out.print(plans_table([(cfg, est)], None, out.width))
    out.print("What binds:")
    for line in binding_constraints(est):
        out.print(f"  {line}", markup=False, overflow="fold")
    out.print("Time breakdown, busiest pipeline rank:")
    for line in breakdown_lines(est):
        out.print(line, markup=False)
    out.print(memory_table(est))
    line = memory_band_line(est, plan.cluster.gpu.memory_gib)
    if line:
        out.print(line, markup=False, overflow="fold")
    alternatives = plan.alternatives or _alternatives(plan)
    if alternatives:
        out.print("Nearest alternatives (one axis changed, each with its best cut points):")
        for alt in alternatives:
            out.print(f"  {config_label(alt.config)}: {alt.reason}", markup=False, overflow="fold")


def _alternatives(plan: Plan) -> list:
    """Neighbours priced now (a plan from evaluate carries none)."""
    cfg = plan.config
    if cfg.recompute_label == "mixed" or cfg.schedule == "custom" or cfg.offload_layers:
        return []  # the search's space has none of these: no neighbours to price them against
    searcher = Searcher(plan.model, plan.cluster, plan.train, cfg.world_size, stack=plan_stack(plan))
    return nearest_alternatives(searcher, Scored(candidate_of(cfg), cfg, plan.estimate), limit=8)


@app.command()
def schema() -> None:
    """Print the JSON Schema of a plan file."""
    out.print_json(json_document(Plan.model_json_schema()))
