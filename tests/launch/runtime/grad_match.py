"""Compare a distributed run's per-rank gradients (``grad_worker``) with the single-process reference."""

from __future__ import annotations

from pathlib import Path

import torch

from launch.runtime.data import SyntheticTokens
from launch.runtime.model import build_full_model, lm_loss
from profiles.schema import Plan


def reference_step(plan: Plan, seed: int = 0) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients of step 0's global batch on the whole model in one process (fp32)."""
    net = build_full_model(plan.model, seed)
    inputs, targets = SyntheticTokens(plan.model.vocab_size, plan.train.seq_len, seed).global_batch(0, plan.train.global_batch)
    loss = lm_loss(net(inputs), targets)
    loss.backward()
    return float(loss.detach()), {name: p.grad.detach().clone() for name, p in net.named_parameters() if p.grad is not None}


def _reference_name(name: str, reference: dict[str, torch.Tensor], tied: bool) -> str:
    if name not in reference and tied and name == "head.proj.weight":
        return "embedding.tok.weight"  # the last stage's copy of the tied weight
    return name


# A parameter's error is max|g - g_ref| / max(max|g_ref|, FLOOR * the model's largest |g_ref|): the floor
# keeps gradients that are exactly zero in exact arithmetic (the attention key biases: softmax is
# invariant to a shift of a query's scores) from dividing fp32 noise (~1e-10) by fp32 noise.
ZERO_GRADIENT_FLOOR = 1e-3


def gradient_errors(plan: Plan, out_dir: Path, seed: int = 0) -> tuple[float, dict[str, float]]:
    """(relative loss error, per parameter the largest relative gradient error over the ranks that hold it,
    as ``ZERO_GRADIENT_FLOOR`` defines it). Every element of every reference gradient must be written by some rank."""
    ref_loss, reference = reference_step(plan, seed)
    floor = ZERO_GRADIENT_FLOOR * max(float(g.abs().max()) for g in reference.values())
    covered = {name: torch.zeros_like(g, dtype=torch.bool) for name, g in reference.items()}
    errors: dict[str, float] = {}
    losses = []
    for path in sorted(out_dir.glob("rank*.pt")):
        data = torch.load(path)
        if data["loss"] is not None:
            losses.append(data["loss"])
        for name, (region, grad) in data["grads"].items():
            ref_name = _reference_name(name, reference, plan.model.tie_embeddings)
            index = tuple(slice(a, b) for a, b in region)
            expected = reference[ref_name][index]
            assert expected.shape == grad.shape, f"{name}: {tuple(grad.shape)} vs reference slice {tuple(expected.shape)}"
            error = float((grad - expected).abs().max()) / max(float(expected.abs().max()), floor)
            errors[ref_name] = max(errors.get(ref_name, 0.0), error)
            covered[ref_name][index] = True
    missing = [name for name, mask in covered.items() if not bool(mask.all())]
    assert not missing, f"gradients not written by any rank: {missing[:5]}"
    assert losses, "no rank wrote the loss"
    return max(abs(x - ref_loss) / abs(ref_loss) for x in losses), errors
