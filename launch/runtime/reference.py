"""The single-process reference run: same model pieces, same data, one process.

The distributed runtime must reproduce these losses (DESIGN.md: the loss of a
step is the mean cross-entropy over every token of the global batch), and its
first step's gradients and plain-SGD weights (``launch/runtime/checks.py``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from launch.runtime.data import SyntheticTokens
from launch.runtime.model import build_full_model, lm_loss
from launch.runtime.optim import DEFAULT_LR, SGD_CHECK_LR, build_optimizer
from profiles.schema import ModelSpec, TrainSpec


def reference_losses(model: ModelSpec, train: TrainSpec, steps: int, seed: int = 0, lr: float = DEFAULT_LR) -> list[float]:
    """Losses of ``steps`` optimizer steps over the whole global batch in fp32, or for a bf16 ``train`` as FSDP2's
    mixed precision runs it (``launch/runtime/fsdp.py``): forward and backward on a bf16 copy of the fp32
    weights, the gradients upcast to fp32 for AdamW over the fp32 weights."""
    net = build_full_model(model, seed)
    optimizer = build_optimizer(net.parameters(), lr)
    data = SyntheticTokens(model.vocab_size, train.seq_len, seed)
    losses: list[float] = []
    for step in range(steps):
        inputs, targets = data.global_batch(step, train.global_batch)
        if train.precision == "bf16":
            compute = copy.deepcopy(net).to(torch.bfloat16)  # deepcopy keeps a tied weight tied
            loss = lm_loss(compute(inputs), targets)
            loss.backward()
            for master, low in zip(net.parameters(), compute.parameters(), strict=True):
                master.grad = low.grad.float()
        else:
            loss = lm_loss(net(inputs), targets)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


@dataclass(frozen=True)
class FirstStep:
    """Step 0 of the reference: each parameter's gradient and its weight after one plain SGD step."""

    gradients: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor]


def reference_first_step(model: ModelSpec, train: TrainSpec, seed: int = 0, lr: float = SGD_CHECK_LR) -> FirstStep:
    """Gradients of the step-0 loss over the whole global batch and the weights after
    ``w -= lr * g`` (fp32; a tied embedding appears once, as ``embedding.tok.weight``)."""
    net = build_full_model(model, seed)
    optimizer = build_optimizer(net.parameters(), lr, kind="sgd")
    inputs, targets = SyntheticTokens(model.vocab_size, train.seq_len, seed).global_batch(0, train.global_batch)
    lm_loss(net(inputs), targets).backward()
    gradients = {name: p.grad.detach().clone() for name, p in net.named_parameters()}
    optimizer.step()
    weights = {name: p.detach().clone() for name, p in net.named_parameters()}
    return FirstStep(gradients, weights)
