"""Stage cut points: split ``L`` layers into ``S`` contiguous stages minimising
the slowest stage's time, subject to each stage's layer cap (from its rank's
memory limit).

``split_dp`` is the dynamic programme over layers (the recurrence of Narayanan
et al. 2019 PipeDream, Sec. 3.1, restricted to a linear chain):
``best[j][x] = min_n max(best[j-1][x-n], cost_j(n))``; it accepts any
monotone per-stage cost table. ``split_affine`` solves the same problem when
``cost_j(n) = n·t + extra_j`` (identical transformer layers, embedding and head
extras on the end stages, which may hold no layer: ``costmodels.layout.min_layers_for``), which is what the search meets: a parametric search
over the bottleneck value with an O(S) feasibility test, exact and about a
thousand times faster. Tests check that both give the same bottleneck.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INFEASIBLE = float("inf")


@dataclass(frozen=True)
class Split:
    layers: tuple[int, ...]
    bottleneck_s: float


def split_dp(num_layers: int, cost: np.ndarray) -> Split | None:
    """Exact DP. ``cost[j, n]`` is stage j's time with n layers (inf where not allowed, n = 0..L).

    Ties between equally good splits go to the most even one (smallest largest
    stage first, then the earliest stages lighter)."""
    stages = cost.shape[0]
    big = INFEASIBLE
    best = np.full((stages + 1, num_layers + 1), big)
    choice = np.zeros((stages + 1, num_layers + 1), dtype=np.int64)
    best[0, 0] = 0.0
    n_idx = np.arange(num_layers + 1)
    for j in range(1, stages + 1):
        c = cost[j - 1]
        for x in range(j, num_layers + 1):
            n = n_idx[1 : x - j + 2]  # at least one layer for every earlier stage
            prev = best[j - 1, x - n]
            vals = np.maximum(prev, c[n])
            k = int(np.argmin(vals))
            best[j, x] = vals[k]
            choice[j, x] = n[k]
    if not np.isfinite(best[stages, num_layers]):
        return None
    layers = []
    x = num_layers
    for j in range(stages, 0, -1):
        layers.append(int(choice[j, x]))
        x -= layers[-1]
    return Split(tuple(reversed(layers)), float(best[stages, num_layers]))


def _caps(bound: float, layer_s: float, extras_s: list[float], max_layers: list[int]) -> list[int]:
    caps = []
    for extra, cap in zip(extras_s, max_layers):
        fit = int((bound - extra) / layer_s + 1e-9) if layer_s > 0 else cap
        caps.append(min(cap, fit))
    return caps


def split_affine(
    num_layers: int, layer_s: float, extras_s: list[float], max_layers: list[int], min_layers: list[int] | None = None,
) -> Split | None:
    """Exact min–max split when stage j costs ``n·layer_s + extras_s[j]`` and holds between
    ``min_layers[j]`` (default 1 each; 0 lets an end stage hold the embedding or the head alone)
    and ``max_layers[j]`` layers."""
    stages = len(extras_s)
    floors = min_layers if min_layers is not None else [1] * stages
    if sum(floors) > num_layers or any(m < f for m, f in zip(max_layers, floors)) or sum(max_layers) < num_layers:
        return None
    candidates = sorted({n * layer_s + e for e in set(extras_s) for n in range(min(floors), num_layers + 1)})

    def feasible(bound: float) -> bool:
        caps = _caps(bound, layer_s, extras_s, max_layers)
        return all(c >= f for c, f in zip(caps, floors)) and sum(caps) >= num_layers

    lo = _first_true(candidates, feasible)
    if lo >= len(candidates):
        return None
    bound = candidates[lo]
    caps = _caps(bound, layer_s, extras_s, max_layers)
    layers = _even_within_caps(num_layers, caps, floors)
    return Split(tuple(layers), max(n * layer_s + e for n, e in zip(layers, extras_s)))


def _first_true(candidates: list[float], feasible) -> int:
    lo, hi = 0, len(candidates)
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(candidates[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _even_within_caps(num_layers: int, caps: list[int], floors: list[int]) -> list[int]:
    """The most even split with ``floors[j] <= n_j <= caps[j]`` summing to L (water filling; remainder
    layers go to the middle stages first, which carry no embedding/head extras)."""
    stages = len(caps)
    layers = list(floors)
    left = num_layers - sum(floors)
    order = sorted(range(stages), key=lambda j: (j in (0, stages - 1), abs(j - (stages - 1) / 2), j))
    while left > 0:
        level = min(layers[j] for j in range(stages) if layers[j] < caps[j])
        for j in order:
            if left and layers[j] == level and layers[j] < caps[j]:
                layers[j] += 1
                left -= 1
    return layers
