"""The zero-bubble paper's handcrafted schedules ZB-H1 and ZB-H2 (Qi et al., ICLR 2024, Sec. 3.1).

Both split the backward into B (input gradient, on the critical path) and W
(weight gradient, free to move) and differ in how many forwards they warm up
with and how far each rank lets its W passes lag behind its B passes. A rank
always runs the oldest pending W (FIFO). With F = B = W = T and no p2p time:

- ZB-H1 warms up like 1F1B (``pp - 1 - r`` forwards before the first F/B pair)
  and rank ``r`` lags its W passes by ``r`` backwards (the Megatron-DeepSpeed
  ZB-H1 split). Makespan (3M + pp - 1) T; rank ``r`` idles (pp - 1 - r) T
  between its first and last action, a third of 1F1B's 3 (pp - 1 - r) T; every
  rank holds at most ``pp`` microbatches, 1F1B's peak (the paper's p M_B).
- ZB-H2 fills the wait before the first B with forwards (``2 (pp - r) - 1``),
  runs B, W, F in the steady state and lags W by ``2 r``, turning the trapezoid
  into a parallelogram: no rank idles between its first and last action when
  M >= 2 pp - 1 (same makespan), at (2 pp - 1) microbatches per rank, the
  paper's (2p - 1) M_B.
"""

from __future__ import annotations

from collections import deque

from costmodels.schedules.actions import BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, Action


def _split_backward_order(rank: int, num_microbatches: int, warmup: int, w_lag: int, steady: str) -> list[Action]:
    """Warm-up forwards, then repeat ``steady`` (letters F, B, W) until the forwards run
    out, then drain the backwards; a W runs only while more than ``w_lag`` are pending."""
    m = num_microbatches
    order = [Action(FORWARD, i, rank) for i in range(min(m, warmup))]
    next_f, next_b = len(order), 0
    pending: deque[int] = deque()

    def backward() -> None:
        nonlocal next_b
        order.append(Action(BACKWARD_INPUT, next_b, rank))
        pending.append(next_b)
        next_b += 1

    def weight_if_lagging() -> None:
        if len(pending) > w_lag:
            order.append(Action(BACKWARD_WEIGHT, pending.popleft(), rank))

    while next_f < m:
        for letter in steady:
            if letter == "F" and next_f < m:
                order.append(Action(FORWARD, next_f, rank))
                next_f += 1
            elif letter == "B":
                backward()
            elif letter == "W":
                weight_if_lagging()
    while next_b < m:
        backward()
        weight_if_lagging()
    order += [Action(BACKWARD_WEIGHT, mb, rank) for mb in pending]
    return order


def zb_h1_rank(rank: int, pp: int, num_microbatches: int) -> list[Action]:
    """ZB-H1 on rank ``rank``: 1F1B warm-up, steady F B W, W lagging by ``rank``."""
    return _split_backward_order(rank, num_microbatches, warmup=pp - 1 - rank, w_lag=rank, steady="FBW")


def zb_h1_peak_inflight(rank: int, pp: int, v: int, num_microbatches: int) -> int:
    """ZB-H1 holds ``pp`` microbatches on every rank: the ``pp - 1 - rank`` warm-up forwards plus
    the ``rank + 1`` forwards whose W has not yet run (1F1B's peak, the paper's p M_B)."""
    return min(pp, num_microbatches)


def zb_h2_rank(rank: int, pp: int, num_microbatches: int) -> list[Action]:
    """ZB-H2 on rank ``rank``: ``2 (pp - rank) - 1`` warm-up forwards, steady B W F,
    W lagging by ``2 rank``."""
    return _split_backward_order(rank, num_microbatches, warmup=2 * (pp - rank) - 1, w_lag=2 * rank, steady="BWF")


def zb_h2_peak_inflight(rank: int, pp: int, v: int, num_microbatches: int) -> int:
    """ZB-H2 holds ``2 pp - 1`` microbatches on every rank: ``2 (pp - rank) - 1`` warm-up forwards
    plus ``2 rank`` lagging W passes (the paper's (2p - 1) M_B)."""
    return min(2 * pp - 1, num_microbatches)
