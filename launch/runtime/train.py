"""Per-rank entry point run by torchrun: ``python -m launch.runtime.train --plan plan.json``.

Reads the plan, builds this rank's share (``build.py``), trains ``--steps``
optimizer steps on the synthetic stream and appends one metrics line per step
from each pipeline rank's first rank. Several ``--plan/--metrics`` pairs run
one after the other in the same processes (the tests use this to pay the
process start-up once).

Failure handling (``launch/job_files.py``): an exception on any rank is written to
``$PPPLAN_JOB_DIR/rank<R>.json`` (what the launcher reports) and re-raised;
torchrun then stops every other rank. A rank dies with its torchrun (parent-death
signal and a watchdog that also beats ``rank<R>.alive``, ``lifecycle.py``). ``PPPLAN_FAIL_RANK=R`` (and optionally
``PPPLAN_FAIL_STEP=S``, default 1) injects a failure on global rank R at step S.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from launch.compare import measurable_peak_memory_gib
from launch.job_files import JOB_DIR_ENV, TORCHRUN_PID_ENV, failure_record_path
from launch.launcher import check_plan
from launch.runtime.build import Runtime, build_runtime, sync_tied_gradients
from launch.runtime.checks import apply_gradient_mutations, save_tensors, stage_tensors
from launch.runtime.cp import context_slice
from launch.runtime.data import SyntheticTokens, dp_slice
from launch.runtime.heap import keep_freed_memory
from launch.runtime.layout import writes_metrics
from launch.runtime.lifecycle import die_with_parent, parent_from_env, start_watchdog
from launch.runtime.metrics import PeakMemory, append_line, metrics_record
from launch.runtime.optim import DEFAULT_LR, SGD_CHECK_LR
from launch.runtime.parallel import init_distributed
from profiles.loader import load_plan
from profiles.schema import Plan

FAIL_RANK_ENV = "PPPLAN_FAIL_RANK"
FAIL_STEP_ENV = "PPPLAN_FAIL_STEP"


class InjectedFailure(RuntimeError):
    """Raised on purpose (``PPPLAN_FAIL_RANK``) to test failure handling."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", action="append", required=True, help="plan.json (repeatable)")
    parser.add_argument("--metrics", action="append", required=True, help="metrics JSONL, one per --plan")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--schedule-csv", default=None, help="action list of a 'custom' plan (torch pipeline CSV)")
    parser.add_argument(
        "--check-dir", default=None, help="also run each plan's first step with plain SGD and save gradients and weights here"
    )
    args = parser.parse_args(argv)
    if len(args.plan) != len(args.metrics):
        parser.error("give one --metrics per --plan")
    return args


def _maybe_inject_failure(rank: int, step: int) -> None:
    if os.environ.get(FAIL_RANK_ENV) == str(rank) and step == int(os.environ.get(FAIL_STEP_ENV, "1")):
        raise InjectedFailure(f"injected failure on rank {rank} at step {step} ({FAIL_RANK_ENV}={rank})")


def _step_loss(rt: Runtime, losses: list[torch.Tensor]) -> float | None:
    """Mean loss over the global batch: mean over microbatches, then over the dp x cp ranks."""
    if not rt.has_loss:
        return None
    local = torch.stack([loss.detach().float() for loss in losses]).mean()
    if rt.groups.dp is not None:
        dist.all_reduce(local, group=rt.groups.dp)
        local = local / (rt.plan.config.dp * rt.plan.config.cp)
    return float(local)


def forward_backward(rt: Runtime, data: SyntheticTokens, step: int) -> list[torch.Tensor]:
    """The pipeline's forward and backward over this step's microbatches, then the tied-weight
    gradient sum: every gradient of the step is in place. Returns the loss stage's microbatch losses."""
    cfg, train = rt.plan.config, rt.plan.train
    inputs, targets = data.global_batch(step, train.global_batch)
    inputs = context_slice(dp_slice(inputs, cfg.dp, rt.coord.dp), cfg.cp, rt.coord.cp).to(rt.device)
    targets = context_slice(dp_slice(targets, cfg.dp, rt.coord.dp), cfg.cp, rt.coord.cp).to(rt.device)
    losses: list[torch.Tensor] = []
    args = (inputs,) if rt.has_first_stage else ()
    target = targets if rt.has_loss else None
    # return_outputs=False: the last stage would otherwise keep every microbatch's logits until the
    # step ends, to merge outputs nobody reads (torch pipelining's output_chunks)
    rt.schedule.step(*args, target=target, losses=losses, return_outputs=False)
    sync_tied_gradients(rt)
    return losses


def train_step(rt: Runtime, data: SyntheticTokens, step: int) -> float | None:
    """One optimizer step: pipeline forward/backward over the microbatches, tied-weight
    gradient sum, AdamW. Returns the global-batch loss on the loss stage."""
    losses = forward_backward(rt, data, step)
    rt.optimizer.step()
    rt.optimizer.zero_grad(set_to_none=True)
    return _step_loss(rt, losses)


def first_step_check(plan: Plan, device: torch.device, seed: int, out_dir: Path, custom_csv: str | None = None) -> None:
    """Step 0 with plain SGD: save each parameter's full gradient and its weight after the
    update (``checks.py``; the tests compare them with ``reference.reference_first_step``)."""
    if plan.config.ep > 1:
        return  # experts are local tensors, not DTensor shards: tests/launch/runtime/test_grad_match_dist.py checks them
    rt = build_runtime(plan, device, seed, SGD_CHECK_LR, custom_csv, optimizer="sgd")
    data = SyntheticTokens(plan.model.vocab_size, plan.train.seq_len, seed)
    dist.barrier()
    forward_backward(rt, data, 0)
    apply_gradient_mutations(rt.modules)
    save_tensors(rt.coord, out_dir, "grad", stage_tensors(rt.modules, "grad"))
    rt.optimizer.step()
    save_tensors(rt.coord, out_dir, "param", stage_tensors(rt.modules, "param"))
    dist.barrier()


def _sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_plan(
    plan: Plan, steps: int, metrics_path: Path, device: torch.device, seed: int, lr: float, custom_csv: str | None = None
) -> None:
    """Build the plan on this rank and train ``steps`` steps, writing metrics lines."""
    memory = PeakMemory(device)
    rt = build_runtime(plan, device, seed, lr, custom_csv)
    data = SyntheticTokens(plan.model.vocab_size, plan.train.seq_len, seed)
    tokens_per_step = plan.train.global_batch * plan.train.seq_len
    predicted_memory = measurable_peak_memory_gib(plan)  # like-for-like with PeakMemory
    for step in range(steps):
        _maybe_inject_failure(rt.rank, step)
        dist.barrier()
        start = time.perf_counter()
        loss = train_step(rt, data, step)
        _sync_device(device)
        step_time_s = time.perf_counter() - start
        if writes_metrics(rt.coord):
            record_ = metrics_record(
                step=step,
                rank=rt.rank,
                stage=rt.coord.pp,
                loss=loss,
                step_time_s=step_time_s,
                tokens_per_step=tokens_per_step,
                peak_memory_gib=memory.peak_gib(),
                predicted_step_time_s=plan.estimate.step_time_s,
                predicted_peak_memory_gib=predicted_memory[rt.coord.pp] if rt.coord.pp < len(predicted_memory) else 0.0,
            )
            append_line(metrics_path, record_)
    dist.barrier()


def report_failure(exc: BaseException) -> None:
    """Say on stderr which rank failed and why, and leave a record for the launcher."""
    rank = int(os.environ.get("RANK", "-1"))
    reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    print(f"[ppplan rank {rank}] failed: {reason}", file=sys.stderr, flush=True)
    job_dir = os.environ.get(JOB_DIR_ENV)
    if job_dir:
        entry = {"rank": rank, "error": reason, "time": time.time(), "traceback": traceback.format_exc(limit=8)}
        append_line(failure_record_path(Path(job_dir), rank), entry)


def _quiet_known_warnings() -> None:
    # FSDP2 warns when a stage returns a view (sequence-parallel slices, gathered logits);
    # the warning is about in-place ops on that output, which neither we nor torch's
    # pipelining do.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


@record
def main(argv: list[str] | None = None) -> None:
    die_with_parent(signal.SIGKILL, parent_from_env(TORCHRUN_PID_ENV))
    args = parse_args(argv)
    keep_freed_memory()  # as the profile's back-to-back timings ran (launch/runtime/heap.py)
    job_dir = os.environ.get(JOB_DIR_ENV)
    start_watchdog(int(os.environ.get("RANK", "0")), Path(job_dir) if job_dir else None)
    _quiet_known_warnings()
    try:
        csv_path = Path(args.schedule_csv) if args.schedule_csv else None
        plans = [load_plan(path) for path in args.plan]
        for plan in plans:
            check_plan(plan, csv_path)  # the same runtime rules ppplan launch checks
        custom_csv = csv_path.read_text() if csv_path else None
        device = init_distributed()
        for index, (plan, metrics_path) in enumerate(zip(plans, args.metrics)):
            run_plan(plan, args.steps, Path(metrics_path), device, args.seed, args.lr, custom_csv)
            if args.check_dir:
                first_step_check(plan, device, args.seed, Path(args.check_dir) / f"plan{index}", custom_csv)
    except BaseException as exc:
        report_failure(exc)
        raise
    dist.destroy_process_group()
    # Every metrics line is on disk (os.write); skip interpreter finalization, where a gloo
    # worker thread still freeing a DTensor collective's tensors can abort the process
    # (launch.profiler.group.exit_without_finalizing: the cause, from a core dump).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
