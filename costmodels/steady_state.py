"""The period of back-to-back steps whose optimizer waits for no other pipeline stage.

Where a stack post-validates its optimizer step (``StackSpec.optimizer_post_validation``: Qi et al.,
ICLR 2024, Sec. 4) no barrier separates two steps: rank r starts step k + 1's action list once it
has finished step k's list, its exposed gradient reduce, its optimizer step and its share of the
per-step overhead (its ``gap``), and the list's own dependencies (a forward waits for the stage
before it) still hold. Rank r's end in step k + 1 is then

    e_r(k + 1) = ends_r(release = e(k) + gap)

with ``ends`` the event simulator over the same action list with per-rank release times
(``costmodels.simulator.rank_end_times_s``). This map is max-plus linear (a longest path), so the
ends grow by the same amount every step once its transient has passed, whatever the release at
step 1: that growth is the step's period (Baccelli et al., "Synchronization and Linearity", 1992,
Ch. 3: the cycle time of a max-plus linear system). The zero-bubble paper's 'parallelogram' is
this regime: the pipeline's fill and drain of one step overlap the next step's, so its ZB-2p
reaches the per-rank work bound.

Without post-validation every rank waits for the slowest (the global gradient norm) and the step
is the makespan plus the slowest tail (``costmodels.step_time``); the period here is never longer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from costmodels.schedules.actions import Schedule
from costmodels.simulator import StageTimes, rank_end_times_s

MAX_STEPS = 64
RELATIVE_TOLERANCE = 1e-9


def steady_state_period_s(schedule: Schedule, times: StageTimes, gap_s: Sequence[float]) -> float:
    """Seconds per step in the overlapped regime (module docstring). Steps are simulated until every
    rank's end grows by the same amount in one step: the releases of the next step are then the last
    ones shifted by that amount, and a max-plus linear map shifts its output with its input, so every
    later step grows by it too. A map whose growth cycles over several steps (a periodic regime of
    cyclicity above 1) is read as the mean growth over the last half of ``MAX_STEPS`` steps."""
    gap = np.asarray(gap_s, dtype=float)
    if len(gap) != schedule.pp:
        raise ValueError(f"gap_s has {len(gap)} entries, the schedule {schedule.pp} ranks")
    ends = [rank_end_times_s(schedule, times, np.zeros(schedule.pp)) + gap]
    for _ in range(MAX_STEPS):
        ends.append(rank_end_times_s(schedule, times, ends[-1]) + gap)
        step = ends[-1] - ends[-2]
        if float(step.max() - step.min()) <= RELATIVE_TOLERANCE * max(float(step.max()), 1e-30):
            return float(step.max())
    half = MAX_STEPS // 2
    return float(np.max(ends[-1] - ends[-1 - half]) / half)


def work_bound_period_s(busy_s: Sequence[float], gap_s: Sequence[float]) -> float:
    """A lower bound of ``steady_state_period_s``: every rank does its work and its gap once per step."""
    return max(b + g for b, g in zip(busy_s, gap_s))
