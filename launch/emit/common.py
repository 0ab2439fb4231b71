"""What every emitter shares: options, the node layout, rendered files, plan summaries.

Emitters are pure: ``render_*(ctx) -> Rendered`` returns file names, contents
and warnings; only ``launch.emit.emit`` touches the disk. A warning is one
sentence that says what the emitted config does differently from the plan and
what that changes (DESIGN.md: never silently something else).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from costmodels.rules import config_violations
from profiles.errors import PlanError
from profiles.loader import load_stack, plan_stack, preset_names
from profiles.schema import ParallelConfig, Plan, RecomputeKind
from profiles.stack_schema import StackSpec

DEFAULT_RUNTIME_MODULE = "launch.runtime.train"
DEFAULT_MASTER_PORT = 29500
RECOMPUTE_STRENGTH: dict[str, int] = {"none": 0, "selective": 1, "full": 2}


@dataclass(frozen=True, kw_only=True)
class EmitOptions:
    """Knobs of the emitted files that the plan does not fix.

    ``nnodes``/``gpus_per_node``: override the node count and the GPUs per node
    (default: the cluster's ``gpus_per_node``, as few nodes as hold the world).
    ``steps``/``metrics``: forwarded to the ppplan runtime (torchrun, SLURM) and
    used as ``--train-iters`` / ``[training] steps`` by Megatron-LM / torchtitan.
    ``lr``: the learning rate written for Megatron-LM / torchtitan (the ppplan
    runtime's AdamW default, ``launch/runtime/optim.py``).
    ``megatron_layout``: allow ``--pipeline-model-parallel-layout`` (Megatron-LM
    core >= 0.13) for cuts that first/last-stage flags cannot express; with
    False the closest first/last split is emitted with a warning.
    ``custom_schedule_csv``: the CSV a ``custom`` schedule's search exported
    (a custom action list is not generated from its name).
    """

    nnodes: int | None = None
    gpus_per_node: int | None = None
    steps: int | None = None
    metrics: str | None = None
    master_port: int = DEFAULT_MASTER_PORT
    runtime_module: str = DEFAULT_RUNTIME_MODULE
    lr: float = 1e-3
    megatron_layout: bool = True
    custom_schedule_csv: str | Path | None = None


@dataclass(frozen=True)
class NodeLayout:
    """``nnodes`` nodes, each running ``nproc_per_node`` ranks (torchrun needs the same count per node)."""

    nnodes: int
    nproc_per_node: int
    gpus_per_node: int

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


@dataclass(frozen=True)
class EmitContext:
    """Everything a renderer reads: the plan, the options, where files go."""

    plan: Plan
    options: EmitOptions
    out_dir: Path
    layout: NodeLayout

    @property
    def cfg(self) -> ParallelConfig:
        return self.plan.config

    @property
    def plan_path(self) -> Path:
        """The plan copy that the torchrun and SLURM scripts point at (absolute)."""
        return self.out_dir.resolve() / "plan.json"

    @property
    def is_cpu(self) -> bool:
        return self.plan.cluster.gpu.name.lower() == "cpu"


@dataclass
class Rendered:
    """File name -> text, which files are executable, and the warnings."""

    files: dict[str, str] = field(default_factory=dict)
    executable: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def merge(self, other: "Rendered") -> "Rendered":
        self.files.update(other.files)
        self.executable |= other.executable
        self.warnings += [w for w in other.warnings if w not in self.warnings]
        return self


def node_layout(world: int, gpus_per_node: int, nnodes: int | None = None) -> NodeLayout:
    """Spread ``world`` ranks over nodes evenly (torchrun starts the same count on every node).

    Without ``nnodes``: the fewest nodes that hold the world with an equal count
    on each. With it: ``world`` must split evenly and fit the node.
    """
    if gpus_per_node < 1:
        raise PlanError(f"gpus per node must be >= 1 (got {gpus_per_node})")
    if nnodes is not None:
        if nnodes < 1 or world % nnodes:
            divisors = [n for n in range(1, world + 1) if world % n == 0]
            raise PlanError(f"--nnodes {nnodes} does not split {world} ranks evenly: pick one of {divisors}")
        if world // nnodes > gpus_per_node:
            raise PlanError(
                f"--nnodes {nnodes} puts {world // nnodes} ranks on a node with {gpus_per_node} GPUs: "
                f"use --nnodes {math.ceil(world / gpus_per_node)} or more"
            )
        return NodeLayout(nnodes, world // nnodes, gpus_per_node)
    count = math.ceil(world / gpus_per_node)
    while world % count:
        count += 1
    return NodeLayout(count, world // count, gpus_per_node)


def layout_warnings(layout: NodeLayout, cfg: ParallelConfig) -> list[str]:
    """Say when ranks sit on nodes differently from how the plan priced them (full nodes, rank grid order)."""
    if layout.nnodes == 1 or layout.nproc_per_node == layout.gpus_per_node:
        return []
    note = (
        f"each of the {layout.nnodes} nodes runs {layout.nproc_per_node} of its {layout.gpus_per_node} GPUs, "
        f"but the plan priced full nodes of {layout.gpus_per_node}: which TP/DP/PP groups cross nodes differs"
    )
    if layout.nproc_per_node % cfg.tp:
        note += f" (TP groups of {cfg.tp} now span nodes)"
    return [note]


def make_context(plan: Plan, out_dir: Path, options: EmitOptions) -> tuple[EmitContext, list[str]]:
    """The render context and the node-layout warnings."""
    gpus = options.gpus_per_node or plan.cluster.gpus_per_node
    layout = node_layout(plan.config.world_size, gpus, options.nnodes)
    return EmitContext(plan, options, out_dir, layout), layout_warnings(layout, plan.config)


def strongest_recompute(cfg: ParallelConfig) -> RecomputeKind:
    """One recompute kind for targets that apply one kind to every stage: the most memory-saving one used."""
    if isinstance(cfg.recompute, str):
        return cfg.recompute
    return max(cfg.recompute, key=lambda kind: RECOMPUTE_STRENGTH[kind])


# What ``ppplan launch --emit`` writes for each kind of stack (``StackSpec.emit``): the ppplan
# runtime's launchers, Megatron-LM's arguments, torchtitan's job config; the pipeline CSV wherever
# torch's pipelining runs the schedule.
STACK_TARGETS: dict[str, tuple[str, ...]] = {
    "ppplan": ("torchrun", "slurm", "csv"),
    "megatron": ("megatron",),
    "torchtitan": ("torchtitan", "csv"),
    "none": (),  # a stack ppplan prices but has no launcher for (megatron-deepspeed)
}


def check_stack(plan: Plan, target: str) -> StackSpec:
    """The plan's stack, if it emits ``target`` and the plan keeps that stack's rules (``costmodels.rules``);
    otherwise a ``PlanError`` naming the ``--stack`` to re-plan with: a job is emitted only for the
    stack it was priced on, never as some other schedule or layout."""
    stack = plan_stack(plan)
    allowed = STACK_TARGETS[stack.emit]
    if target not in allowed:
        others = [name for name in preset_names("stacks") if target in STACK_TARGETS[load_stack(name).emit]]
        raise PlanError(
            f"the plan was priced for stack '{stack.name}', which emits {', '.join(allowed) or 'nothing'}; to emit {target}, "
            f"re-plan with --stack {' or --stack '.join(others)}"
        )
    problems = config_violations(plan.model, plan.train, plan.config.world_size, plan.config, stack)
    if problems:
        raise PlanError(f"the plan breaks the rules of its stack '{stack.name}': {problems[0]}")
    return stack


def plan_summary(plan: Plan) -> str:
    """One line naming the plan's configuration (for header comments)."""
    c = plan.config
    recompute = c.recompute if isinstance(c.recompute, str) else ",".join(c.recompute)
    return (
        f"{plan.model.name} on {plan.cluster.name}: tp={c.tp} cp={c.cp} ep={c.ep} pp={c.pp} dp={c.dp} v={c.v} mbs={c.mbs} "
        f"num_microbatches={c.num_microbatches} global_batch={plan.train.global_batch} schedule={c.schedule} "
        f"recompute={recompute} sequence_parallel={c.sequence_parallel} zero={c.zero} "
        + ("sp_regather=True " if c.sp_regather else "")
        + (f"offload_layers={c.offload_layers} " if c.offload_layers else "")
        + f"precision={plan.train.precision} stage_layers={c.stage_layers}"
    )


def comment_block(lines: list[str], prefix: str = "# ") -> str:
    return "".join(f"{prefix}{line}\n" for line in lines)


def header_lines(plan: Plan, what: str, warnings: list[str]) -> list[str]:
    """Header comment lines: what the file is, the plan it came from, each deviation."""
    return [f"{what}, generated by ppplan", f"plan: {plan_summary(plan)}"] + [f"warning: {w}" for w in warnings]


def shell_command(argv: list[str], indent: str = "    ") -> str:
    """``argv`` as one shell command, a flag and its value per line (values quoted; ``$VARS`` kept)."""
    parts: list[str] = []
    i = 0
    while i < len(argv):
        token = _quote(argv[i])
        takes_value = argv[i].startswith("-") and "=" not in argv[i]
        if takes_value and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            token += " " + _quote(argv[i + 1])
            i += 1
        parts.append(token)
        i += 1
    return (" \\\n" + indent).join(parts) + "\n"


def dq_escape(text: str) -> str:
    """Escape ``text`` for use inside a double-quoted shell string."""
    return "".join("\\" + ch if ch in '\\"$`' else ch for ch in text)


def _quote(token: str) -> str:
    """Quote for the shell, keeping ``"${VAR}"``-style expansions (written by the emitters) intact."""
    if token.startswith('"') and token.endswith('"'):
        return token
    return shlex.quote(token)
