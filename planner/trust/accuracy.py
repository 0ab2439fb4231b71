"""Accuracy statistics of predictions against measurements: signed and absolute percentage
errors, MAPE by group, Spearman's rank correlation within a sweep and what the predicted-best
configuration of a sweep loses against the measured best."""

from __future__ import annotations

import math
from typing import Callable, Iterable, TypeVar

import numpy as np

T = TypeVar("T")


def error_pct(predicted: float, measured: float) -> float:
    """Signed error of a prediction, in % of the measurement."""
    return 100.0 * (predicted - measured) / measured


def mape_pct(errors_pct: Iterable[float]) -> float:
    """Mean absolute percentage error of signed per-row errors (NaN for no rows)."""
    values = [abs(e) for e in errors_pct]
    return float(np.mean(values)) if values else float("nan")


def percentile_nearest_rank(values: Iterable[float], pct: float) -> float:
    """The ``pct``-th percentile by nearest rank: the ceil(pct/100 * n)-th smallest value (NIST/SEMATECH
    e-Handbook of Statistical Methods, 7.2.5.2, the nearest-rank definition)."""
    ordered = sorted(values)
    if not ordered or not 0 < pct <= 100:
        raise ValueError(f"percentile {pct} of {len(ordered)} values: needs values and 0 < pct <= 100")
    return ordered[max(0, math.ceil(pct * len(ordered) / 100) - 1)]


def grouped(items: Iterable[T], key: Callable[[T], str]) -> dict[str, list[T]]:
    """Items by ``key``, groups sorted by name."""
    out: dict[str, list[T]] = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return dict(sorted(out.items()))


def average_ranks(values: list[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks (what Spearman's rho needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = np.asarray(values)[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman_rho(predicted: list[float], measured: list[float]) -> float | None:
    """Spearman's rank correlation: Pearson's r of the average ranks (Spearman 1904). None when
    it is undefined (fewer than three pairs, or either side all tied)."""
    if len(predicted) != len(measured):
        raise ValueError("spearman_rho needs pairs")
    if len(predicted) < 3:
        return None
    a, b = average_ranks(predicted), average_ranks(measured)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 0 else None


def pick_regret_pct(predicted: list[float], measured: list[float]) -> float:
    """Throughput the predicted-best configuration of a sweep loses against the measured best, in %
    of the former's: 100 * (max measured / measured of the pick - 1), where the pick is the row of highest
    predicted throughput (rows tied at it, e.g. one configuration read twice, count by their mean reading).
    0 when the prediction picks the measured best."""
    if len(predicted) != len(measured) or not predicted:
        raise ValueError("pick_regret_pct needs pairs")
    top = max(predicted)
    picked = [m for p, m in zip(predicted, measured, strict=True) if p == top]
    return 100.0 * (max(measured) / (sum(picked) / len(picked)) - 1.0)
