"""Gradient and update checks against the single-process reference (issue 14, part 1).

Loss curves under AdamW cannot see a wrong gradient scale: AdamW divides each
update by the root of the gradient's second moment, so a gradient doubled by a
data-parallel sum (instead of a mean), quartered, or a halved embedding gradient
leaves the losses unchanged to ~1e-6. These checks compare what the scale does
change: every parameter's full gradient after the first backward of step 0 and
its update after one plain SGD step (``w1 - w0 = -lr * g``), each against the
single-process reference (``reference.first_step``).

``dump_first_step`` runs on every rank (gathering a sharded tensor is a
collective over its mesh); each pipeline rank's first rank (dp = 0, tp = 0)
saves its stages' tensors under their full-model names.

Mutations (``PPPLAN_MUTATE``, a comma list) exist only to prove that the checks
fail when the scale is wrong: ``dp-sum`` makes FSDP sum gradients over the
data-parallel replicas instead of averaging them; ``embedding-half`` halves the
token embedding's gradient after the backward.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from launch.runtime.layout import writes_metrics

MUTATE_ENV = "PPPLAN_MUTATE"
MUTATIONS = ("dp-sum", "embedding-half")


def mutations() -> set[str]:
    """The mutations asked for in ``PPPLAN_MUTATE``; an unknown name is an error."""
    names = {n.strip() for n in os.environ.get(MUTATE_ENV, "").split(",") if n.strip()}
    unknown = names - set(MUTATIONS)
    if unknown:
        raise ValueError(f"{MUTATE_ENV}: unknown mutation(s) {sorted(unknown)}; known: {list(MUTATIONS)}")
    return names


def apply_build_mutations(modules: dict[int, torch.nn.Module]) -> None:
    """``dp-sum``: FSDP's gradient divide factor 1 (a sum over dp replicas, not a mean)."""
    if "dp-sum" not in mutations():
        return
    for module in modules.values():
        for sub in module.modules():
            if isinstance(sub, FSDPModule):
                sub.set_gradient_divide_factor(1.0)


@torch.no_grad()
def apply_gradient_mutations(modules: dict[int, torch.nn.Module]) -> None:
    """``embedding-half``: halve the token embedding's gradient once the backward is done."""
    if "embedding-half" not in mutations():
        return
    for module in modules.values():
        embedding = getattr(module, "embedding", None)
        if embedding is not None and embedding.tok.weight.grad is not None:
            embedding.tok.weight.grad.mul_(0.5)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The unsharded value of ``tensor`` (a collective for a DTensor), detached, on CPU."""
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().float().cpu().clone()


def stage_tensors(modules: dict[int, torch.nn.Module], kind: str) -> dict[str, torch.Tensor]:
    """Full gradients (``kind="grad"``) or weights (``"param"``) of every local stage, by
    full-model name; every rank of the stage's TP/DP mesh must call this, in the same order."""
    out: dict[str, torch.Tensor] = {}
    for stage in sorted(modules):
        for name, param in modules[stage].named_parameters():
            value = param.grad if kind == "grad" else param
            if value is None:
                raise RuntimeError(f"stage {stage}: {name} has no gradient after the backward")
            out[name] = full_tensor(value)
    return out


def save_tensors(coord, out_dir: Path, kind: str, tensors: dict[str, torch.Tensor]) -> None:
    """Written by each pipeline rank's first rank: ``<out_dir>/<kind>_pp<p>.pt``."""
    if writes_metrics(coord):
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(tensors, out_dir / f"{kind}_pp{coord.pp}.pt")


def load_tensors(out_dir: Path, kind: str) -> dict[str, torch.Tensor]:
    """Every pipeline rank's tensors of ``kind`` merged (a tied weight appears twice: both
    copies, ``embedding.tok.weight`` and ``head.proj.weight``)."""
    merged: dict[str, torch.Tensor] = {}
    for path in sorted(out_dir.glob(f"{kind}_pp*.pt")):
        for name, value in torch.load(path).items():
            if name in merged:
                raise ValueError(f"{name} held by two pipeline ranks")
            merged[name] = value
    return merged


# A parameter whose reference value is this small a fraction of the whole model's is judged
# against that floor instead: the key projection's bias has an exactly zero gradient (softmax
# is invariant to a shift shared by all keys of a query), so its reference holds fp32 roundoff only.
NORM_FLOOR_FRACTION = 1e-4


def relative_errors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tied: bool) -> dict[str, float]:
    """Per parameter ``||got - expected|| / max(||expected||, NORM_FLOOR_FRACTION * ||all expected||)``
    (Frobenius norms). A tied model's untied logits copy (``head.proj.weight``) is compared
    with the shared reference weight."""
    missing = set(expected) - set(got)
    if missing:
        raise ValueError(f"no distributed value for {sorted(missing)}")
    total = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in expected.values()])))
    floor = NORM_FLOOR_FRACTION * total
    errors = {}
    for name, value in got.items():
        ref_name = "embedding.tok.weight" if tied and name == "head.proj.weight" else name
        ref = expected[ref_name]
        if value.shape != ref.shape:
            raise ValueError(f"{name}: shape {tuple(value.shape)} vs reference {tuple(ref.shape)}")
        errors[name] = float(torch.linalg.vector_norm(value - ref)) / max(float(torch.linalg.vector_norm(ref)), floor)
    return errors
