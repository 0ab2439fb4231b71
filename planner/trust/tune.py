"""``ppplan tune``: the model-guided answer to trial-run tuners (DESIGN.md, CLI contract).

Instead of sweeping the configuration space with trial runs, run only the search's
top-k plans for a few steps on the target machine, calibrate the cluster's efficiency
constants from what they measured (``planner.trust.calibration``), re-price the k
plans with the calibrated constants (the re-ranking), and pick the plan that measured
fastest. The measurement decides among the k; the calibration explains the gap between
prediction and measurement and carries it into the written cluster file, so later
searches on that cluster start from measured constants.

Measured step time per trial: the median over steps after the first of the slowest
pipeline stage (``calibration_io.measured_step_time_s``, what ``ppplan calibrate``
reads from a metrics file); a trial that fails is reported and left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from costmodels.estimate import estimate
from launch.launcher import LaunchOptions, launch_plan, prepare_launch
from launch.progress import StepProgress
from planner.search.branch_and_bound import search
from planner.trust.calibration import FIT_TERMS, CalibrationReport, MeasuredRun, calibrate_runs, with_efficiency
from planner.trust.calibration_io import measured_step_time_s, read_metrics_lines
from profiles.errors import InfeasibleError, PlanError
from profiles.files import write_atomic
from profiles.limits import MIN_STEP_TIME_S
from profiles.loader import DEFAULT_STACK, carried_stack
from profiles.schema import ClusterSpec, ModelSpec, Plan, TrainSpec
from profiles.stack_schema import StackSpec

DEFAULT_TOP_K = 3
DEFAULT_STEPS = 5  # the first is warm-up and left out of the measured median


@dataclass(frozen=True)
class Trial:
    """One of the top-k plans, run: its a-priori price, the calibrated one, what it measured."""

    index: int
    plan: Plan
    plan_path: Path
    metrics_path: Path
    measured_step_time_s: float | None
    measured_peak_memory_gib: float | None
    failure: str | None
    calibrated_step_time_s: float | None = None

    @property
    def predicted_step_time_s(self) -> float:
        return self.plan.estimate.step_time_s


@dataclass(frozen=True)
class TuneResult:
    trials: list[Trial]
    calibrated_cluster: ClusterSpec
    report: CalibrationReport
    winner: Trial
    winner_plan: Plan

    @property
    def calibrated_ranking(self) -> list[int]:
        ran = [t for t in self.trials if t.calibrated_step_time_s is not None]
        return [t.index for t in sorted(ran, key=lambda t: (t.calibrated_step_time_s, t.index))]

    @property
    def measured_ranking(self) -> list[int]:
        ran = [t for t in self.trials if t.measured_step_time_s is not None]
        return [t.index for t in sorted(ran, key=lambda t: (t.measured_step_time_s, t.index))]


@dataclass(frozen=True, kw_only=True)
class TuneOptions:
    top_k: int = DEFAULT_TOP_K
    steps: int = DEFAULT_STEPS
    work_dir: Path
    overwrite: bool = False
    schedules: tuple[str, ...] | None = None
    stack: StackSpec | None = None
    on_trial: Callable[[int, int, Plan], None] | None = None
    on_step: Callable[[StepProgress], None] | None = None


def _trial_files(index: int, opts: TuneOptions) -> tuple[Path, LaunchOptions]:
    """Where trial ``index`` keeps its plan, and the launch options that write its metrics beside it."""
    plan_path, metrics_path = opts.work_dir / f"trial{index}.json", opts.work_dir / f"trial{index}.jsonl"
    return plan_path, LaunchOptions(steps=opts.steps, metrics=metrics_path, overwrite=opts.overwrite)


def _preflight(plans: list[Plan], opts: TuneOptions) -> None:
    """Every check a trial's launch makes (the stack, the rules, the devices, the metrics file), and that no trial's
    plan file would replace one already there without ``overwrite``, for all trials before the first writes or
    starts anything: a tune that cannot run leaves the folder as it was (``PlanError``, exit 2)."""
    for index, plan in enumerate(plans):
        plan_path, launch = _trial_files(index, opts)
        if plan_path.exists() and not opts.overwrite:
            raise PlanError(f"{plan_path} exists: pass --overwrite to replace it, or pick another --metrics-dir")
        prepare_launch(plan, plan_path, launch)


def _run_trial(index: int, plan: Plan, opts: TuneOptions) -> Trial:
    plan_path, launch = _trial_files(index, opts)
    metrics_path = launch.metrics
    write_atomic(plan_path, plan.model_dump_json(indent=1) + "\n")
    result = launch_plan(plan, plan_path, launch, on_step=opts.on_step)
    if result.returncode:
        return Trial(index, plan, plan_path, metrics_path, None, None, result.failure)
    records = read_metrics_lines(metrics_path)
    peak = max(float(r["peak_memory_gib"]) for r in records)
    step_time_s = measured_step_time_s(records)
    if step_time_s < MIN_STEP_TIME_S:  # the calibration divides by it
        return Trial(index, plan, plan_path, metrics_path, None, None, f"median step time {step_time_s:g} s in {metrics_path}")
    return Trial(index, plan, plan_path, metrics_path, step_time_s, peak, None)


def _measured_run(trial: Trial, stack: StackSpec) -> MeasuredRun:
    plan = trial.plan
    return MeasuredRun(run=f"trial{trial.index}", group=f"trial{trial.index}", model=plan.model, cluster=plan.cluster,
                       train=plan.train, config=plan.config, step_time_s=trial.measured_step_time_s,
                       peak_memory_gib=trial.measured_peak_memory_gib, stack=stack)  # fmt: skip


def tune(model: ModelSpec, cluster: ClusterSpec, train: TrainSpec, gpus: int, opts: TuneOptions) -> TuneResult:
    """Search, run the top-k, calibrate, re-rank, pick the measured-fastest (module docstring)."""
    if opts.stack is not None and opts.stack.name != DEFAULT_STACK:  # before the search, not after it
        raise PlanError(f"tune runs its trials with ppplan launch, which runs '{DEFAULT_STACK}' plans only: drop "
                        f"--stack {opts.stack.name} (ppplan search --stack {opts.stack.name} plans for it)")
    kwargs = {"schedules": opts.schedules} if opts.schedules else {}
    found = search(model, cluster, train, gpus, opts.top_k, stack=opts.stack, **kwargs)
    if not found.best:
        raise InfeasibleError("no plan fits: nothing to tune (ppplan search shows the closest plan and why)")
    carried = carried_stack(found.searcher.stack)
    plans = [Plan(model=model, cluster=cluster, train=train, config=s.config, estimate=s.estimate, stack_spec=carried)
             for s in found.best]
    _preflight(plans, opts)
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    trials = []
    for index, plan in enumerate(plans):
        if opts.on_trial:
            opts.on_trial(index, len(plans), plan)
        trials.append(_run_trial(index, plan, opts))
    ran = [t for t in trials if t.failure is None]
    if not ran:
        raise InfeasibleError(f"every trial failed; the first: {trials[0].failure}")
    report = calibrate_runs([_measured_run(t, found.searcher.stack) for t in ran], FIT_TERMS, folds=len(ran))
    provenance = {
        "calibrated_by": "ppplan tune",
        "base_cluster": cluster.name,
        "runs": "; ".join(f"trial{t.index}: {t.measured_step_time_s:.6g} s/step measured" for t in ran),
        "terms": ", ".join(f"{k}={v:.6g}" for k, v in report.fit.terms.items()),
    }
    calibrated = with_efficiency(cluster, {k: float(f"{v:.6g}") for k, v in report.fit.terms.items()}).model_copy(
        update={"name": f"{cluster.name}-calibrated", "provenance": provenance}
    )
    repriced = {t.index: estimate(model, calibrated, train, t.plan.config, stack=found.searcher.stack) for t in ran}
    trials = [
        t if t.failure else Trial(**{**t.__dict__, "calibrated_step_time_s": repriced[t.index].step_time_s}) for t in trials
    ]
    winner = min((t for t in trials if t.failure is None), key=lambda t: (t.measured_step_time_s, t.index))
    note = (f"tuned: measured {winner.measured_step_time_s:.4f} s/step, the fastest of {len(ran)} trial runs of the "
            f"search's top {len(plans)} ({opts.steps} steps each); estimate re-priced with the calibrated cluster")  # fmt: skip
    winner_plan = winner.plan.model_copy(update={"cluster": calibrated, "estimate": repriced[winner.index], "rationale": [note]})
    return TuneResult(trials, calibrated, report, winner, winner_plan)
