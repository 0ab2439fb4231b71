"""Fitting a cluster's efficiency terms to measured step times.

The cost model's compute and communication times depend on a handful of
achievable-fraction constants (``profiles.schema.Efficiency``): the GEMM
efficiency curve ``gemm_max · d / (d + gemm_half_dim)``, the collective
efficiency of each network tier and a fixed per-step overhead. Their defaults
are a priori (``costmodels/compute.py``); this module fits them to runs whose
step time was measured.

Fit: least squares on the log step time, ``Σ (log predicted − log measured)²``
(a relative error, so a 1 s and a 60 s run weigh the same), by
Levenberg–Marquardt (Marquardt 1963) over the terms scaled to [0, 1] within
physical bounds, with a finite-difference Jacobian (the estimate is a black box;
scipy is not a dependency). A weak ridge pulls each term towards its a-priori
value, so a term the runs cannot identify (no cross-node traffic in any run,
say) stays where it was instead of drifting.

Held-out error: ``cross_validate`` fits on all groups but one and predicts the
left-out group, for every group (leave-one-source-out for published runs,
K-fold for measured runs). Only those predictions may be reported as held-out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np
from pydantic import ValidationError

from costmodels.estimate import estimate
from costmodels.layer_costs import RooflineTimes
from planner.trust.accuracy import error_pct, mape_pct
from profiles.errors import PlanError
from profiles.loader import load_stack
from profiles.schema import ClusterSpec, Estimate, ModelSpec, ParallelConfig, TrainSpec
from profiles.stack_schema import StackSpec

FIT_TERMS: tuple[str, ...] = (
    "gemm_max",
    "gemm_half_dim",
    "intra_node_collective",
    "inter_node_collective",
    "step_overhead_s",
)
# Physical bounds of each term (the overhead's upper bound is set from the runs).
TERM_BOUNDS: dict[str, tuple[float, float]] = {
    "gemm_max": (0.2, 1.0),
    "gemm_half_dim": (0.0, 1024.0),
    "attention_max": (0.1, 1.0),
    "hbm": (0.2, 1.0),
    "intra_node_collective": (0.05, 1.0),
    "inter_node_collective": (0.05, 1.0),
    "step_overhead_s": (0.0, math.inf),
}
PRIOR_WEIGHT = 1e-3  # ridge towards the a-priori value, per term in [0, 1] units
FD_STEP = 1e-4  # finite-difference step in [0, 1] units
MAX_ITERATIONS = 25


@dataclass(frozen=True)
class MeasuredRun:
    """One configuration with a measured step time (or a step time equivalent to the
    metric its source reported, for a fixed configuration)."""

    run: str
    group: str
    model: ModelSpec
    cluster: ClusterSpec
    train: TrainSpec
    config: ParallelConfig
    step_time_s: float
    peak_memory_gib: float | None = None
    stack: StackSpec | None = None  # the stack as the run ran it; None: the preset ``config.stack`` names
    expert_imbalance: float | None = None  # the routing balance the run states (``costmodels.experts``)

    @property
    def gpus(self) -> int:
        return self.config.world_size


@dataclass(frozen=True)
class FitResult:
    """Fitted terms (``terms``) next to where the fit started (``start``), with the
    root-mean-square log error of the runs it saw before and after."""

    terms: dict[str, float]
    start: dict[str, float]
    rms_log_error_before: float
    rms_log_error_after: float
    iterations: int
    runs: tuple[str, ...] = field(default_factory=tuple)


def with_efficiency(cluster: ClusterSpec, terms: dict[str, float]) -> ClusterSpec:
    """``cluster`` with some efficiency terms replaced (validated by pydantic)."""
    if not terms:
        return cluster
    try:
        efficiency = type(cluster.efficiency).model_validate({**cluster.efficiency.model_dump(), **terms})
    except ValidationError as exc:  # a fit driven out of a term's range by measurements no GPU makes
        first = exc.errors()[0]
        raise PlanError(f"efficiency.{'.'.join(str(p) for p in first['loc'])} {first.get('input')!r}: {first['msg']} "
                        "(are the measured step times right?)") from None
    return cluster.model_copy(update={"efficiency": efficiency})


@lru_cache(maxsize=16)
def _stack(name: str) -> StackSpec:
    """A stack preset, parsed once (validate and the fits price each run hundreds of times; the
    YAML parse would dominate)."""
    return load_stack(name)


def estimate_with(run: MeasuredRun, terms: dict[str, float]) -> Estimate:
    """The run's configuration priced on its own stack with some efficiency terms replaced."""
    stack = run.stack or _stack(run.config.stack)
    cluster = with_efficiency(run.cluster, terms)
    layers = None
    if run.expert_imbalance is not None:
        layers = RooflineTimes(run.model, cluster, run.train.precision, stack=stack, expert_imbalance=run.expert_imbalance)
    return estimate(run.model, cluster, run.train, run.config, layers, stack=stack)


def log_errors(runs: list[MeasuredRun], terms: dict[str, float]) -> np.ndarray:
    """log(predicted / measured) step time per run."""
    return np.array([math.log(estimate_with(r, terms).step_time_s / r.step_time_s) for r in runs])


def _bounds(names: tuple[str, ...], runs: list[MeasuredRun]) -> list[tuple[float, float]]:
    shortest = min(r.step_time_s for r in runs)
    out = []
    for name in names:
        lo, hi = TERM_BOUNDS[name]
        out.append((lo, 0.9 * shortest if math.isinf(hi) else hi))
    return out


def levenberg_marquardt(
    residuals: Callable[[np.ndarray], np.ndarray], u0: np.ndarray, max_iterations: int
) -> tuple[np.ndarray, int]:
    """Minimise ||residuals(u)||² over the box [0, 1]^p (steps projected onto the box)."""
    u, r = u0.copy(), residuals(u0)
    cost, damping = float(r @ r), 1e-2
    for iteration in range(1, max_iterations + 1):
        jac = np.empty((r.size, u.size))
        for i in range(u.size):
            h = FD_STEP if u[i] + FD_STEP <= 1.0 else -FD_STEP
            probe = u.copy()
            probe[i] += h
            jac[:, i] = (residuals(probe) - r) / h
        normal, gradient = jac.T @ jac, jac.T @ r
        # A coordinate no residual depends on (e.g. a collective efficiency in runs without that
        # traffic) is not identified: rounding noise in its column, over the tiny regularisation
        # below, would otherwise move it (through its own gradient or its coupling to the others).
        # It stays where it is; the step is solved over the identified coordinates.
        curvature = np.diag(normal)
        seen = curvature > 1e-12 * max(float(curvature.max()), 1e-300)
        normal, gradient = normal[np.ix_(seen, seen)], gradient[seen]
        for _ in range(10):
            step = np.zeros(u.size)
            step[seen] = -np.linalg.solve(normal + damping * (np.diag(np.diag(normal)) + 1e-9 * np.eye(normal.shape[0])),
                                          gradient)
            trial = np.clip(u + step, 0.0, 1.0)
            r_trial = residuals(trial)
            trial_cost = float(r_trial @ r_trial)
            if trial_cost < cost:
                break
            damping *= 4.0
        else:
            return u, iteration
        converged = cost - trial_cost < 1e-10 * max(cost, 1e-12) or np.max(np.abs(trial - u)) < 1e-7
        u, r, cost, damping = trial, r_trial, trial_cost, max(damping / 3.0, 1e-9)
        if converged:
            return u, iteration
    return u, max_iterations


def fit_efficiency(
    runs: list[MeasuredRun],
    names: tuple[str, ...] = FIT_TERMS,
    start: dict[str, float] | None = None,
    prior_weight: float = PRIOR_WEIGHT,
    max_iterations: int = MAX_ITERATIONS,
) -> FitResult:
    """Least squares on log step time over the efficiency terms ``names`` (shared by every
    run, applied to each run's own cluster). ``start`` defaults to the first run's cluster."""
    if not runs:
        raise ValueError("no runs to fit")
    base = runs[0].cluster.efficiency
    start = {n: float(getattr(base, n)) for n in names} if start is None else dict(start)
    bounds = _bounds(names, runs)
    lo = np.array([b[0] for b in bounds])
    span = np.array([b[1] - b[0] for b in bounds])
    u0 = np.clip((np.array([start[n] for n in names]) - lo) / span, 0.0, 1.0)
    prior = math.sqrt(prior_weight)

    def terms_of(u: np.ndarray) -> dict[str, float]:
        return {n: float(lo[i] + u[i] * span[i]) for i, n in enumerate(names)}

    def residuals(u: np.ndarray) -> np.ndarray:
        return np.concatenate([log_errors(runs, terms_of(u)), prior * (u - u0)])

    before = log_errors(runs, start)
    u, iterations = levenberg_marquardt(residuals, u0, max_iterations) if names else (u0, 0)
    fitted = terms_of(u)
    after = log_errors(runs, fitted)
    return FitResult(
        terms=fitted,
        start=start,
        rms_log_error_before=float(np.sqrt(np.mean(before**2))),
        rms_log_error_after=float(np.sqrt(np.mean(after**2))),
        iterations=iterations,
        runs=tuple(r.run for r in runs),
    )


def cross_validate(
    runs: list[MeasuredRun], names: tuple[str, ...], groups: dict[str, str]
) -> tuple[dict[str, dict[str, float]], dict[str, FitResult | None]]:
    """For each group g: fit on the runs outside g. Returns the terms each run is priced
    with (a-priori when no other group exists) and each group's fit."""
    by_group: dict[str, list[MeasuredRun]] = {}
    for r in runs:
        by_group.setdefault(groups[r.run], []).append(r)
    terms_of_run: dict[str, dict[str, float]] = {}
    fits: dict[str, FitResult | None] = {}
    for group in sorted(by_group):
        train = [r for r in runs if groups[r.run] != group]
        fit = fit_efficiency(train, names) if train and names else None
        fits[group] = fit
        for r in by_group[group]:
            terms_of_run[r.run] = fit.terms if fit else {}
    return terms_of_run, fits


def kfold_groups(runs: list[MeasuredRun], folds: int) -> dict[str, str]:
    """Deterministic K-fold assignment: runs sorted by name, dealt round-robin."""
    ordered = sorted(r.run for r in runs)
    return {name: f"fold{i % folds}" for i, name in enumerate(ordered)}


@dataclass(frozen=True)
class CalibrationReport:
    """Per run: measured, a-priori, in-sample fitted and held-out predicted step time (s)."""

    fit: FitResult
    measured_s: dict[str, float]
    apriori_s: dict[str, float]
    fitted_s: dict[str, float]
    heldout_s: dict[str, float] | None
    folds: int

    def mape(self, predicted: dict[str, float]) -> float:
        return mape_pct([error_pct(predicted[r], self.measured_s[r]) for r in self.measured_s])


def calibrate_runs(runs: list[MeasuredRun], names: tuple[str, ...] = FIT_TERMS, folds: int = 5) -> CalibrationReport:
    """Fit ``names`` to every run (the constants to ship) and, with at least two runs,
    K-fold cross-validate (K = min(folds, runs)) for the held-out error."""
    fit = fit_efficiency(runs, names)
    step = {r.run: r.step_time_s for r in runs}
    apriori = {r.run: estimate_with(r, {}).step_time_s for r in runs}
    fitted = {r.run: estimate_with(r, fit.terms).step_time_s for r in runs}
    k = min(folds, len(runs))
    heldout = None
    if k >= 2:
        terms_of_run, _ = cross_validate(runs, names, kfold_groups(runs, k))
        heldout = {r.run: estimate_with(r, terms_of_run[r.run]).step_time_s for r in runs}
    return CalibrationReport(fit, step, apriori, fitted, heldout, k)
