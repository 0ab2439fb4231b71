"""What a running job has done so far: the metrics file read as the ranks append to it.

Each pipeline stage's first rank appends one line per step (``launch/runtime/metrics.py``);
a step is complete once every stage has written it. ``StepProgress`` is that step for the
whole job: the loss (from the loss stage), the step time (the slowest stage: every rank
starts the step at a barrier), tokens/s, model FLOPs utilisation (DESIGN.md: 6·N-style model
FLOPs with attention, over world size × peak), the highest peak memory of any stage, and
the plan's predictions beside them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from costmodels.compute import peak_flops
from costmodels.flops import model_flops_per_iteration
from profiles.schema import Plan


@dataclass(frozen=True)
class StepProgress:
    step: int
    loss: float | None
    step_time_s: float
    tokens_per_s: float
    mfu: float
    peak_memory_gib: float
    predicted_step_time_s: float
    predicted_peak_memory_gib: float


class MetricsTail:
    """New complete JSON lines of a file that other processes append to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def read_new(self) -> list[dict]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
                continue
            if isinstance(record, dict):
                records.append(record)
        return records


class ProgressTracker:
    """Collects metrics lines and yields each step once every pipeline stage has written it."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.pending: dict[int, dict[int, dict]] = {}
        train = plan.train
        world = plan.config.world_size
        self.flops_per_step = model_flops_per_iteration(plan.model, train.global_batch, train.seq_len)
        self.peak_flops_job = world * peak_flops(plan.cluster, train.precision)
        self.tokens_per_step = train.global_batch * train.seq_len

    def feed(self, records: list[dict]) -> list[StepProgress]:
        done = []
        for record in records:
            try:
                step, stage = int(record["step"]), int(record["stage"])
            except (KeyError, TypeError, ValueError):
                continue
            self.pending.setdefault(step, {})[stage] = record
            if len(self.pending[step]) == self.plan.config.pp:
                done.append(self._progress(step, self.pending.pop(step)))
        return sorted(done, key=lambda p: p.step)

    def _progress(self, step: int, by_stage: dict[int, dict]) -> StepProgress:
        lines = list(by_stage.values())
        step_time_s = max(float(r["step_time_s"]) for r in lines)
        losses = [r["loss"] for r in lines if r.get("loss") is not None]
        return StepProgress(
            step=step,
            loss=float(losses[0]) if losses else None,
            step_time_s=step_time_s,
            tokens_per_s=self.tokens_per_step / step_time_s if step_time_s > 0 else 0.0,
            mfu=self.flops_per_step / step_time_s / self.peak_flops_job if step_time_s > 0 else 0.0,
            peak_memory_gib=max(float(r["peak_memory_gib"]) for r in lines),
            predicted_step_time_s=float(lines[0]["predicted_step_time_s"]),
            predicted_peak_memory_gib=max(float(r["predicted_peak_memory_gib"]) for r in lines),
        )
