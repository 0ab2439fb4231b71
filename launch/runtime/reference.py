"""The single-process reference run: same model pieces, same data, one process.

The distributed runtime must reproduce these losses (DESIGN.md: the loss of a
step is the mean cross-entropy over every token of the global batch).
"""

from __future__ import annotations

from launch.runtime.data import SyntheticTokens
from launch.runtime.model import build_full_model, lm_loss
from launch.runtime.optim import DEFAULT_LR, build_optimizer
from profiles.schema import ModelSpec, TrainSpec


def reference_losses(model: ModelSpec, train: TrainSpec, steps: int, seed: int = 0, lr: float = DEFAULT_LR) -> list[float]:
    """Losses of ``steps`` optimizer steps over the whole global batch in fp32."""
    net = build_full_model(model, seed)
    optimizer = build_optimizer(net.parameters(), lr)
    data = SyntheticTokens(model.vocab_size, train.seq_len, seed)
    losses: list[float] = []
    for step in range(steps):
        inputs, targets = data.global_batch(step, train.global_batch)
        loss = lm_loss(net(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses
