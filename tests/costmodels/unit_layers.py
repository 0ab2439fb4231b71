"""``LayerTimes`` for hand-derived estimates: every transformer layer F = B = W = 1 s, the embedding
and the head free; ``runtime`` carries measured CPU runtime costs where a test gives them."""

from __future__ import annotations

from costmodels.layer_costs import ZERO_PASS, PassTimes
from costmodels.runtime_costs import RuntimeCosts


class UnitLayers:
    context_parallel_degrees = None
    expert_tp_folding = True
    grad_accumulation_measured = True  # W is the whole 1 s

    def __init__(self, runtime: RuntimeCosts | None = None) -> None:
        self.runtime = runtime

    def transformer(self, tp, mbs, seq_len, sequence_parallel, recompute, cp=1, ep=1, moe=False, etp=None, ep_overlap=0.0):
        return PassTimes(1.0, 1.0, 1.0)

    def embedding(self, tp, mbs, seq_len, sequence_parallel, cp=1):
        return ZERO_PASS

    def head(self, tp, mbs, seq_len, sequence_parallel, cp=1):
        return ZERO_PASS
