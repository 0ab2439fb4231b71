"""``ppplan explain`` (why a plan wins) and ``ppplan schema`` (the plan file's JSON Schema)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from planner.cli.app import app, out
from planner.cli.plans import load_checked_plan
from planner.cli.render import memory_table, plans_table
from planner.search.branch_and_bound import Scored, Searcher
from planner.search.explain import binding_constraints, candidate_of, nearest_alternatives
from profiles.schema import Plan


@app.command("explain")
def explain_cmd(plan_path: Path = typer.Argument(..., help="plan.json")) -> None:
    """Why this plan: what binds, the time breakdown, and the nearest rejected alternatives."""
    plan = load_checked_plan(plan_path)
    est, cfg = plan.estimate, plan.config
    gpus = cfg.tp * cfg.pp * cfg.dp
    out.print(plans_table([(cfg, est)], f"{plan.model.name} on {gpus} x {plan.cluster.gpu.name}"))
    out.print("What binds:")
    for line in binding_constraints(est):
        out.print(f"  {line}", markup=False)
    out.print("Time breakdown (busiest pipeline rank):")
    for name, seconds in est.breakdown.model_dump(exclude={"overlapped"}).items():
        out.print(f"  {name:<14} {seconds:10.3f} s  {100 * seconds / est.step_time_s:5.1f}%", markup=False)
    for name, seconds in est.breakdown.overlapped.items():
        out.print(f"  {name:<14} {seconds:10.3f} s  hidden behind compute", markup=False)
    out.print(memory_table(est))
    if cfg.recompute_label == "mixed":
        return
    searcher = Searcher(plan.model, plan.cluster, plan.train, gpus)
    winner = Scored(candidate_of(cfg), cfg, est)
    out.print("Nearest alternatives (one axis changed, each with its own best cut points):")
    for alt in nearest_alternatives(searcher, winner, limit=8):
        out.print(f"  {alt.label}: {alt.reason}", markup=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of a plan file."""
    out.print_json(json.dumps(Plan.model_json_schema()))
