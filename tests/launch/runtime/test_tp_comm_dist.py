"""The tensor-parallel collectives ppplan's runtime issues per layer are the ones the cost model prices
(``costmodels.layer_costs.tp_comm_passes``): counted on gloo, 2 ranks (``tp_comm_worker``), for tiny-llama (SwiGLU,
GQA) and tiny-gpt. Every collective of a block moves the same s·b·h values, so counts compare as bytes.

- Without sequence parallelism a block all-reduces twice per pass: after wo and w2 in F, the input gradients of its
  attention and of its MLP in B (its column-parallel projections share one replicated input, ``launch.runtime.tp``).
  With it, two all-gathers and two reduce-scatters per pass.
- Full recompute re-runs the forward's collectives but the one after w2 (torch's early stop,
  ``costmodels.layer_ops.early_stop_tail``): 1 of 2, or 3 of 4 (``recomputed_tp_comm_fraction``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from costmodels.selective_ac import recomputed_tp_comm_fraction

pytestmark = pytest.mark.dist

PER_PASS = {"nosp": {"all_reduce": 2}, "sp": {"all_gather_into_tensor": 2, "reduce_scatter_tensor": 2}}
RECOMPUTED = {"nosp": {"all_reduce": 1}, "sp": {"all_gather_into_tensor": 2, "reduce_scatter_tensor": 1}}


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("tp_comm") / "counts.json"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
            "--max-restarts", "0", "-m", "tests.launch.runtime.tp_comm_worker", "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt"])
@pytest.mark.parametrize("layout", ["nosp", "sp"])
def test_each_pass_issues_the_priced_collectives(counted: dict, model: str, layout: str) -> None:
    none = counted[model][layout]["none"]
    assert none["forward"] == PER_PASS[layout]
    assert none["backward"] == PER_PASS[layout]  # tp_comm_passes: B's traffic is F's


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt"])
@pytest.mark.parametrize("layout", ["nosp", "sp"])
def test_full_recompute_reruns_all_but_the_collective_after_w2(counted: dict, model: str, layout: str) -> None:
    none, full = counted[model][layout]["none"], counted[model][layout]["full"]
    assert full["forward"] == PER_PASS[layout]
    extra = Counter(full["backward"])
    extra.subtract(none["backward"])
    assert dict(+extra) == RECOMPUTED[layout]
    share = sum(RECOMPUTED[layout].values()) / sum(PER_PASS[layout].values())
    assert share == recomputed_tp_comm_fraction("full", "attention_core", layout == "sp", stops_early=True)
