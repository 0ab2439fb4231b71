"""Per-rank entry point of the gradient-match tests (``torchrun -m tests.launch.runtime.grad_worker``).

For each ``--plan/--out`` pair: build the plan's runtime (``launch.runtime.build``), run one
training step's forward and backward over the global batch (no optimizer step), and write this
rank's loss and per-parameter gradients to ``<out>/rank<R>.pt``. Each gradient is written with
the region of the full parameter it covers: DTensor gradients (FSDP, TP) are gathered whole; the
MoE experts a rank holds are a slice (its experts, its tensor-parallel rows of their FFN). Only
the ranks of the first expert-parallel group write (dp x cp index below ep): together they hold
every expert, and the other ranks hold copies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from launch.launcher import check_plan
from launch.runtime.build import Runtime, build_runtime, sync_tied_gradients
from launch.runtime.cp import context_slice
from launch.runtime.data import SyntheticTokens, dp_slice
from launch.runtime.moe import GroupedExperts
from launch.runtime.parallel import init_distributed
from profiles.loader import load_plan

Region = list[tuple[int, int]]


def step_loss(rt: Runtime, seed: int) -> float | None:
    """Forward and backward of step 0's global batch; the mean loss on the loss stage."""
    cfg, train = rt.plan.config, rt.plan.train
    inputs, targets = SyntheticTokens(rt.plan.model.vocab_size, train.seq_len, seed).global_batch(0, train.global_batch)
    inputs = context_slice(dp_slice(inputs, cfg.dp, rt.coord.dp), cfg.cp, rt.coord.cp).to(rt.device)
    targets = context_slice(dp_slice(targets, cfg.dp, rt.coord.dp), cfg.cp, rt.coord.cp).to(rt.device)
    losses: list[torch.Tensor] = []
    rt.schedule.step(*((inputs,) if rt.has_first_stage else ()), target=targets if rt.has_loss else None, losses=losses)
    sync_tied_gradients(rt)
    if not rt.has_loss:
        return None
    local = torch.stack([loss.detach().float() for loss in losses]).mean()
    if rt.groups.dp is not None:
        dist.all_reduce(local, group=rt.groups.dp)
        local = local / (cfg.dp * cfg.cp)
    return float(local)


def _expert_region(module: GroupedExperts, name: str, full_shape: torch.Size) -> Region:
    rows = module.ffn_rows
    region = [(module.shard.first, module.shard.first + module.shard.count), (0, full_shape[1]), (0, full_shape[2])]
    region[2 if name == "w2" else 1] = rows
    return region


def rank_gradients(rt: Runtime) -> dict[str, tuple[Region, torch.Tensor]]:
    """Every gradient this rank holds, whole where it is a DTensor (a collective over its mesh)."""
    grads: dict[str, tuple[Region, torch.Tensor]] = {}
    for module in rt.modules.values():
        experts = {prefix: m for prefix, m in module.named_modules() if isinstance(m, GroupedExperts)}
        for name, param in module.named_parameters():
            grad = param.grad
            if grad is None:
                continue
            full = grad.full_tensor() if isinstance(grad, DTensor) else grad
            owner, _, leaf = name.rpartition(".")
            if owner in experts:
                region = _expert_region(experts[owner], leaf, full.shape)
            else:
                region = [(0, n) for n in full.shape]
            grads[name] = (region, full.detach().cpu().clone())
    return grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="append", required=True)
    parser.add_argument("--out", action="append", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = init_distributed()
    for plan_path, out in zip(args.plan, args.out):
        plan = load_plan(plan_path)
        check_plan(plan)
        rt = build_runtime(plan, device, args.seed, lr=1e-3)
        loss = step_loss(rt, args.seed)
        grads = rank_gradients(rt)
        if rt.coord.dp * plan.config.cp + rt.coord.cp < plan.config.ep:
            Path(out).mkdir(parents=True, exist_ok=True)
            torch.save({"loss": loss, "grads": grads}, Path(out) / f"rank{rt.rank}.pt")
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
