"""Emitters: a plan as files for other launchers (``ppplan launch --emit TARGET --out-dir D``).

Targets: ``torchrun`` (shell script for the ppplan runtime), ``slurm`` (sbatch
script), ``megatron`` (Megatron-LM ``pretrain_gpt.py`` arguments), ``torchtitan``
(TOML job config) and ``csv`` (the pipeline schedule in torch's CSV format).

``render`` is pure (file texts + warnings); ``emit`` creates ``out_dir``, writes
each file atomically (a temporary file in the same directory, then
``os.replace``, so a reader never sees half a file) and reports the warnings:
a plan is written only for the stack it was priced on (``StackSpec.emit``: the
ppplan runtime's torchrun/SLURM scripts, Megatron-LM arguments or a torchtitan
job config) and only if it keeps that stack's rules; what the target still
cannot express about the model is a one-line warning, on stderr and in the
file's header.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

from launch.emit.common import EmitOptions, Rendered, check_stack, make_context
from profiles.errors import PlanError
from profiles.files import write_folder_atomic
from profiles.schema import Plan

TARGETS: tuple[str, ...] = ("torchrun", "slurm", "megatron", "torchtitan", "csv")

__all__ = ["TARGETS", "EmitOptions", "Rendered", "emit", "render"]


def _renderer(target: str) -> Callable:
    """The render function of ``target`` (imported lazily: one module per target)."""
    if target == "torchrun":
        from launch.emit.torchrun import render_torchrun as fn
    elif target == "slurm":
        from launch.emit.slurm import render_slurm as fn
    elif target == "megatron":
        from launch.emit.megatron import render_megatron as fn
    elif target == "torchtitan":
        from launch.emit.torchtitan import render_torchtitan as fn
    elif target == "csv":
        from launch.emit.csv import render_csv as fn
    else:
        raise PlanError(f"unknown emit target '{target}': use one of {', '.join(TARGETS)}")
    return fn


def render(plan: Plan, target: str, out_dir: Path, options: EmitOptions | None = None) -> Rendered:
    """The files ``target`` would write into ``out_dir`` for ``plan``, and the warnings (no I/O)."""
    render_fn = _renderer(target)
    options = options or EmitOptions()
    plan = _with_custom_actions(plan, options)
    check_stack(plan, target)
    ctx, warnings = make_context(plan, Path(out_dir), options)
    rendered = render_fn(ctx)
    rendered.warnings = warnings + [w for w in rendered.warnings if w not in warnings]
    return rendered


def _with_custom_actions(plan: Plan, options: EmitOptions) -> Plan:
    """A ``custom`` plan whose action list comes from ``options.custom_schedule_csv`` (checked against
    its pp, v and M) carries it, so that its stack's rules see a complete plan."""
    cfg = plan.config
    if cfg.schedule != "custom" or cfg.schedule_csv is not None or options.custom_schedule_csv is None:
        return plan
    from launch.emit.csv import copied_csv

    actions = copied_csv(Path(options.custom_schedule_csv), cfg)
    return plan.model_copy(update={"config": cfg.model_copy(update={"schedule_csv": actions})})


def emit(
    plan: Plan,
    target: str,
    out_dir: str | Path,
    *,
    nnodes: int | None = None,
    gpus_per_node: int | None = None,
    options: EmitOptions | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write ``target``'s files for ``plan`` into ``out_dir`` (created); return their paths.

    Each warning goes to ``on_warning`` (default: the ``logging`` module; the CLI
    passes its one-line stderr warning). ``nnodes``/``gpus_per_node`` override ``options``. Raises
    ``PlanError`` for input that cannot be emitted (unknown target, a plan the
    ppplan runtime refuses for torchrun/slurm, an unwritable ``out_dir``).
    """
    base = options or EmitOptions()
    overrides = {k: v for k, v in {"nnodes": nnodes, "gpus_per_node": gpus_per_node}.items() if v is not None}
    opts = dataclasses.replace(base, **overrides)
    out = Path(out_dir)
    rendered = render(plan, target, out, opts)
    check_out_dir(out)
    files = {name: (text, 0o755 if name in rendered.executable else 0o644) for name, text in rendered.files.items()}
    paths = write_folder_atomic(out, files)
    report = on_warning if on_warning is not None else logging.getLogger(__name__).warning
    for warning in rendered.warnings:
        report(warning)
    return paths


def check_out_dir(out: Path, option: str = "--out-dir") -> None:
    """A folder option (``option``: ``--out-dir``, tune's ``--metrics-dir``) must name a writable directory or a
    creatable one (checked before any work)."""
    if out.exists() and not out.is_dir():
        raise PlanError(f"{option} {out} exists and is not a directory: pick another path")
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise PlanError(f"{option} {out}: {existing} is not a writable directory; pick a writable directory")

