"""Optimizer settings shared by the distributed runtime and the single-process reference.

AdamW is element-wise, so sharded (FSDP) or split (TP) parameters get exactly
the update their unsharded counterpart gets: the property the loss-match tests
rely on. Plain SGD (``SGD_CHECK_LR``) is what the first-step checks use
(``launch/runtime/checks.py``): its update is the gradient times the learning
rate, so a gradient of the wrong scale moves the weights by the wrong amount.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

DEFAULT_LR = 5e-4
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1
EPS = 1e-8
# Large on purpose: the update (lr * gradient, gradients here are 1e-5..1e-2) then outweighs the
# initial weights (|w| <= 1), so w1 carries the gradient's scale to well above fp32 rounding
# (a 2x error moves w1 by >= 1 %, rounding by ~1e-7).
SGD_CHECK_LR = 1e3


def build_optimizer(params: Iterable[torch.nn.Parameter], lr: float = DEFAULT_LR, kind: str = "adamw") -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019) with GPT-3's betas and weight decay, or plain SGD
    (no momentum, no weight decay: ``w -= lr * g``) for the first-step checks."""
    if kind == "sgd":
        return torch.optim.SGD(list(params), lr=lr, momentum=0.0, weight_decay=0.0)
    if kind != "adamw":
        raise ValueError(f"optimizer '{kind}': use adamw or sgd")
    return torch.optim.AdamW(list(params), lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY, eps=EPS)
