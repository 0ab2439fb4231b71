"""How far a source's own measurements scatter, and the rank correlation that scatter allows.

A source that measured the same configuration more than once (BigScience re-ran tr11 layouts on
different days) shows how far one reading of a step time strays: the pooled within-configuration
standard deviation of ln(measured) (the pooled standard deviation, NIST/SEMATECH e-Handbook of
Statistical Methods, 7.4.3.3; on the log scale because the scatter is a percentage of the step).

Within a sweep, no predictor can rank configurations closer than that scatter. ``rho_noise_ceiling``
is the expected Spearman's rho between the sweep's true throughputs and one noisy reading of each,
which is what an exact predictor would score. The true values are taken as the readings themselves
(the mean of a repeated configuration's readings): that adds the noise to the spread of the true
values, so the ceiling is biased high. A sweep whose ceiling is below the target cannot be expected
to reach it on that source's data, whatever the cost model. ``RepeatNoise.mape_floor_pct`` is the same
bound for the MAPE: what an exact predictor scores against one reading of each configuration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from planner.trust.accuracy import average_ranks, spearman_rho
from planner.trust.published_runs import PublishedRow

CEILING_DRAWS = 20000  # Monte Carlo draws of the noisy readings: the mean's standard error is below 0.007
CEILING_SEED = 12  # fixed, so the report is the same on every run


@dataclass(frozen=True)
class RepeatNoise:
    """One source's scatter of repeated measurements: ``sigma_ln`` (the pooled standard deviation of
    ln(measured), ~ the relative scatter of one reading), its degrees of freedom and the number of
    configurations measured more than once."""

    source: str
    sigma_ln: float
    dof: int
    groups: int

    @property
    def sigma_pct(self) -> float:
        return 100.0 * self.sigma_ln

    @property
    def mape_floor_pct(self) -> float:
        """The MAPE an exact predictor scores against one reading each: E|exp(sigma z) - 1| =
        exp(sigma^2 / 2) (2 Phi(sigma) - 1) for z standard normal (split at z = 0; E[exp(sigma z); z > 0] =
        exp(sigma^2 / 2) Phi(sigma)); ~ sigma sqrt(2 / pi) for a small sigma."""
        phi = 0.5 * (1.0 + math.erf(self.sigma_ln / math.sqrt(2.0)))
        return 100.0 * math.exp(self.sigma_ln ** 2 / 2.0) * (2.0 * phi - 1.0)


def configuration_key(row: PublishedRow) -> tuple:
    """What makes two rows the same measurement: the source and its release (``source_id``: a later
    release runs other software), the run's name as the source wrote it and everything priced (model,
    cluster, training, parallel layout, stack, metric). Rows a source names differently (e.g. another fp8
    recipe) are different configurations even where ppplan prices them alike."""
    return (row.source_id, row.run, row.metric, row.stack, row.model.model_dump_json(), row.cluster.name,
            row.train.model_dump_json(), row.config.model_dump_json())


def repeat_groups(rows: Sequence[PublishedRow]) -> list[list[PublishedRow]]:
    """Configurations with a measured metric read more than once, each as its rows (in corpus order)."""
    groups: dict[tuple, list[PublishedRow]] = {}
    for row in rows:
        if row.measured is not None:
            groups.setdefault(configuration_key(row), []).append(row)
    return [g for g in groups.values() if len(g) > 1]


def pooled_sigma_ln(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """(pooled standard deviation of ln(value) within groups, degrees of freedom sum(n_i - 1)):
    sqrt(sum over groups of sum (ln x - mean ln x)^2 / sum(n_i - 1)). Groups of one add nothing."""
    squares, dof = 0.0, 0
    for values in groups:
        if any(v <= 0 or not math.isfinite(v) for v in values):
            raise ValueError(f"repeated readings must be positive and finite, got {list(values)}")
        logs = [math.log(v) for v in values]
        mean = sum(logs) / len(logs)
        squares += sum((x - mean) ** 2 for x in logs)
        dof += len(logs) - 1
    if dof == 0:
        raise ValueError("pooled_sigma_ln needs a group with two readings or more")
    return math.sqrt(squares / dof), dof


def repeat_noise_by_source(rows: Sequence[PublishedRow]) -> dict[str, RepeatNoise]:
    """Per source with repeated configurations, its ``RepeatNoise`` (sources without repeats: absent)."""
    per_source: dict[str, list[list[float]]] = {}
    for group in repeat_groups(rows):
        per_source.setdefault(group[0].source, []).append([float(r.measured) for r in group])
    out = {}
    for source, groups in sorted(per_source.items()):
        sigma, dof = pooled_sigma_ln(groups)
        out[source] = RepeatNoise(source, sigma, dof, len(groups))
    return out


@dataclass(frozen=True)
class RhoCeiling:
    """What an exact predictor scores within a sweep against one noisy reading of each configuration:
    the expected Spearman's rho, and the share of readings on which it reaches ``target``."""

    expected_rho: float
    target: float
    share_reaching_target: float


def rho_noise_ceiling(true_values: Sequence[float], sigma_ln: float, target: float, draws: int = CEILING_DRAWS,
                      seed: int = CEILING_SEED) -> RhoCeiling | None:
    """Spearman's rho between ``true_values`` and one reading of each, the reading
    ``true * exp(sigma_ln * z)`` with z standard normal and independent per value (Monte Carlo over
    ``draws`` readings, a fixed seed): its mean and how often it is ``target`` or more. Ties among the
    true values (a configuration read twice) stay ties. None where rho is undefined (fewer than three
    values, or all of them tied)."""
    if sigma_ln < 0 or not math.isfinite(sigma_ln):
        raise ValueError(f"sigma_ln must be finite and >= 0, got {sigma_ln}")
    values = [float(v) for v in true_values]
    exact = spearman_rho(values, values)
    if exact is None:
        return None
    if sigma_ln == 0:
        return RhoCeiling(exact, target, float(exact >= target))
    true_ranks = average_ranks(values)
    true_ranks = true_ranks - true_ranks.mean()
    rng = np.random.default_rng(seed)
    readings = np.log(np.asarray(values)) + sigma_ln * rng.standard_normal((draws, len(values)))
    # Continuous noise leaves no ties among the readings: their ranks are a permutation of 1..n.
    reading_ranks = np.argsort(np.argsort(readings, axis=1, kind="stable"), axis=1) + 1.0
    reading_ranks -= reading_ranks.mean(axis=1, keepdims=True)
    rhos = (reading_ranks @ true_ranks) / np.sqrt((reading_ranks ** 2).sum(axis=1) * float(true_ranks @ true_ranks))
    # Rounded so that a rho of exactly the target (e.g. 0.8 on five values) is not lost to floating point.
    return RhoCeiling(float(rhos.mean()), target, float(np.mean(np.round(rhos, 12) >= target)))


def repeat_means(keys: Sequence[tuple], values: Sequence[float]) -> list[float]:
    """``values`` with the values of each repeated key replaced by their geometric mean: the best
    estimate of a configuration read several times (the true value ``rho_noise_ceiling`` takes)."""
    logs: dict[tuple, list[float]] = {}
    for key, value in zip(keys, values, strict=True):
        logs.setdefault(key, []).append(math.log(value))
    return [math.exp(sum(logs[key]) / len(logs[key])) for key in keys]
