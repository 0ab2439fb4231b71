"""AdamW settings shared by the distributed runtime and the single-process reference.

AdamW is element-wise, so sharded (FSDP) or split (TP) parameters get exactly
the update their unsharded counterpart gets: the property the loss-match tests
rely on.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

DEFAULT_LR = 5e-4
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1
EPS = 1e-8


def build_optimizer(params: Iterable[torch.nn.Parameter], lr: float = DEFAULT_LR) -> torch.optim.Optimizer:
    """AdamW (Loshchilov & Hutter 2019) with GPT-3's betas and weight decay."""
    return torch.optim.AdamW(list(params), lr=lr, betas=BETAS, weight_decay=WEIGHT_DECAY, eps=EPS)
