"""The runtime's own costs around the layers (``ppplan profile``, ``ProfileFile.runtime``).

Host overhead per pipeline action: one process joins a one-rank gloo group, builds a
one-layer stage of the model with the runtime's own pieces (``launch.runtime.model``),
and times ``M`` microbatches of forward and backward twice, once called directly and
once through torch.distributed.pipelining's ``Schedule1F1B`` over a ``PipelineStage``
(what ``ppplan launch`` runs, ``launch/runtime/pp.py``). The difference over the 2·M
actions is what the schedule adds to each F or B action on the host. With one rank
there is no p2p: transfers are priced by the p2p link (``ppplan profile-comm``).
Medians of ``repeats`` rounds after ``warmup``, with the profile's clock.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from profiles.profile_schema import RuntimeMeasurement
from profiles.schema import ModelSpec

ACTION_MICROBATCHES = 8


def _mse(out, target):
    return ((out - target) ** 2).mean()


def pipeline_action_overhead(
    model: ModelSpec, mbs: int, seq_len: int, warmup: int, repeats: int, clock: Callable[[], float]
) -> RuntimeMeasurement:
    """See the module docstring; must run in a process with no process group yet."""
    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    from launch.runtime.model import build_stage_module

    with tempfile.TemporaryDirectory(prefix="ppplan-profile-") as tmp:
        dist.init_process_group("gloo", store=dist.FileStore(str(Path(tmp) / "store"), 1), rank=0, world_size=1)
        try:
            m = ACTION_MICROBATCHES
            stage_module = build_stage_module(model, 0, 1, False, False, 0)
            inputs = torch.randn(mbs * m, seq_len, model.hidden_size)
            targets = torch.randn(mbs * m, seq_len, model.hidden_size)
            schedule = Schedule1F1B(PipelineStage(stage_module, 0, 1, torch.device("cpu")), m, loss_fn=_mse, scale_grads=True)

            def direct() -> float:
                start = clock()
                for x, t in zip(inputs.chunk(m), targets.chunk(m)):
                    (_mse(stage_module(x), t) / m).backward()
                return clock() - start

            def piped() -> float:
                start = clock()
                schedule.step(inputs, target=targets)
                return clock() - start

            for _ in range(max(1, warmup)):
                direct(), piped()
            diffs = []
            for _ in range(repeats):
                diffs.append((piped() - direct()) / (2 * m))  # interleaved: both see the same machine
            stage_module.zero_grad(set_to_none=True)
        finally:
            dist.destroy_process_group()
    quartiles = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else [diffs[0]] * 3
    return RuntimeMeasurement(
        pipeline_action_overhead_s=max(0.0, statistics.median(diffs)),
        pipeline_action_overhead_iqr_s=max(0.0, quartiles[2] - quartiles[0]),
    )
