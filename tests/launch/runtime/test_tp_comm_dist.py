"""The tensor-parallel collectives ppplan's runtime issues per layer are the ones the cost model prices
(``costmodels.layer_costs.tp_comm_passes``): counted on gloo, 2 ranks (``tp_comm_worker``), for tiny-llama (SwiGLU,
GQA) and tiny-gpt, where every collective of a block moves the same s·b·h values, so counts compare as bytes; and for
tiny-moe with and without a shared expert, whose collectives move different rows, compared as bytes; and tiny-moe's
expert all-to-alls under ep 2 (the sections at the end).

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
from dataclasses import replace

import pytest

from costmodels.comm import Link, Network, tp_all_reduce_s
from costmodels.experts import dispatch_ops
from costmodels.layer_costs import tp_comm_passes
from costmodels.memory import ActivationVariant, layer_activation_bytes
from costmodels.operators import LayerShape
from costmodels.selective_ac import recomputed_tp_comm_fraction
from costmodels.stage_plan import sp_regather_passes
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import TrainSpec

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


# -- mixture-of-experts blocks: the bytes each pass moves are the bytes tp_comm_passes prices -----------------------
#
# tiny-moe (top-2 of 8 experts, no shared expert) and the same with one shared expert of FFN 512, tp 2, ep 1,
# T = 2 x 16 = 32 tokens a rank. In all-reduce-equivalent rows of h (an all-gather or a reduce-scatter of r rows moves
# half what an all-reduce of r rows moves), per pass: the attention's T, and the MoE block's T, reduced once: F
# all-reduces the block's partial output on exit (under sequence parallelism, all-gathers its input on entry and
# reduce-scatters its output); B reduces the experts' input gradient once at the entry (and gathers the output's
# gradient under sequence parallelism), and all-reduces the router scores' gradient, T·k = 64 fp32 values, 64 / h
# = 0.25 rows of h = 256 in fp32. The shared expert adds no collective. Under full recompute B runs F's collectives
# again but the exit reduction, after the block's last saved tensor.

MOE_TOKENS, MOE_TOP_K, MOE_HIDDEN = 32, 2, 256
UNIT = Network(Link(1.0, 0.0), Link(1.0, 0.0), 1.0, gpus_per_node=8)  # zero latency: times are bytes
FP32 = 4  # the gloo runs are fp32: a row of h is h · 4 bytes, a score 4 bytes


def _all_reduce_rows(moved: list[list[object]]) -> float:
    return sum(rows if op == "all_reduce" else rows / 2 for op, rows in moved)


def _priced_rows(model: str, layout: str, recompute: str) -> tuple[float, float]:
    """tp_comm_passes's F and B for the block, in all-reduce rows (the unit network makes seconds bytes)."""
    spec = load_model("tiny-moe")
    if model == "tiny-moe-shared":
        spec = spec.model_copy(update={"shared_expert_ffn_hidden_size": 512})
    kernels = load_stack("ppplan-torch").kernels
    passes = tp_comm_passes(spec, "transformer", 2, 2, 16, layout == "sp", recompute, FP32, UNIT, False, moe=True,
                            kernels=kernels)  # fmt: skip
    row = tp_all_reduce_s(1, spec.hidden_size, FP32, 2, UNIT)
    return passes.forward_s / row, passes.backward_input_s / row


@pytest.mark.parametrize("model", ["tiny-moe", "tiny-moe-shared"])
@pytest.mark.parametrize("layout", ["nosp", "sp"])
def test_an_moe_block_moves_the_rows_tp_comm_passes_prices(counted: dict, model: str, layout: str) -> None:
    scores = MOE_TOKENS * MOE_TOP_K / MOE_HIDDEN
    forward, backward = 2 * MOE_TOKENS, 2 * MOE_TOKENS + scores
    none = counted[model][layout]["none"]
    assert _all_reduce_rows(none["forward_rows"]) == forward
    assert _all_reduce_rows(none["backward_rows"]) == backward
    assert _priced_rows(model, layout, "none") == (pytest.approx(forward), pytest.approx(backward))


@pytest.mark.parametrize("model", ["tiny-moe", "tiny-moe-shared"])
@pytest.mark.parametrize("layout", ["nosp", "sp"])
def test_an_moe_block_recomputes_all_but_its_exit_reduction(counted: dict, model: str, layout: str) -> None:
    none, full = counted[model][layout]["none"], counted[model][layout]["full"]
    rerun = _all_reduce_rows(full["backward_rows"]) - _all_reduce_rows(none["backward_rows"])
    exit_reduction = MOE_TOKENS / 2 if layout == "sp" else MOE_TOKENS
    assert rerun == _all_reduce_rows(none["forward_rows"]) - exit_reduction
    forward, backward = _priced_rows(model, layout, "full")
    assert backward - forward == pytest.approx(rerun + MOE_TOKENS * MOE_TOP_K / MOE_HIDDEN)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt", "tiny-moe", "tiny-moe-shared"])
@pytest.mark.parametrize("layout", ["nosp", "sp"])
@pytest.mark.parametrize("recompute", ["none", "full"])
def test_a_sharded_layer_computes_what_the_unsharded_layer_computes(counted: dict, model: str, layout: str,
                                                                    recompute: str) -> None:
    """Output, input gradient and (MoE) router gradient of the tp-2 layer against the same layer on one rank: the
    MoE block's partial outputs, its once-reduced input gradient and its all-reduced score gradient included."""
    assert counted[model][layout][recompute]["max_relative_error"] <= 1e-5


# -- expert parallelism: the all-to-alls the runtime runs are the ones costmodels.experts.dispatch_ops prices ---------
#
# tiny-moe with its 8 experts split over the 2 ranks (ep 2, tp 1), T = 32 tokens a rank, top-2. F exchanges the
# tokens-per-expert counts (8 each way), dispatches the rank's T·k = 64 routed rows (its own experts' share included:
# the runtime sends every row through the all-to-all) and combines the outputs back; B runs the two in reverse:
# the exchanges dispatch_ops lists, in its order (it prices each at the busiest rank's received rows, routed_rows,
# which one random routing cannot pin).


def test_an_moe_block_under_ep_runs_the_all_to_alls_dispatch_ops_prices(counted: dict) -> None:
    exchanges = counted["expert_parallel"]["tiny-moe"]
    ops = dispatch_ops(load_model("tiny-moe"), LayerShape(1, 2, 16, False, "none", 2, ep=2, moe=True), load_stack("ppplan-torch").kernels)
    assert [op.name for op in ops.forward] == ["moe.counts", "moe.dispatch", "moe.combine"]
    assert len(exchanges["forward"]) == 3 and len(exchanges["backward"]) == len(ops.backward_input) == 2
    counts, dispatch, combine = exchanges["forward"]
    assert counts == [8, 8]
    assert dispatch[0] == MOE_TOKENS * MOE_TOP_K
    assert combine == dispatch[::-1]  # each output returns to the rank that sent the row
    assert exchanges["backward"] == [dispatch, combine]  # the gradients retrace them


# -- sequence-parallel inputs kept as shards (ParallelConfig.sp_regather, launch.runtime.regather) -----------------
#
# The forward is the sequence-parallel layer's; B gathers the attention's and the MLP's (or MoE block's) inputs once
# more, two all-gathers of T = 2 x 16 positions, which the estimate prices (costmodels.stage_plan.sp_regather_passes);
# the forward keeps each input as its 16-position shard, (1 - 1/tp) of T·h values less per input than the layer
# that keeps them gathered, as costmodels.memory.layer_activation_bytes counts.


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt", "tiny-moe", "tiny-moe-shared"])
def test_a_layer_keeping_its_input_shards_gathers_them_again_in_b(counted: dict, model: str) -> None:
    kept, shards = counted[model]["sp"]["none"], counted[model]["sp_regather"]["none"]
    assert shards["forward"] == kept["forward"]
    extra = Counter(shards["backward"])
    extra.subtract(kept["backward"])
    assert dict(+extra) == {"all_gather_into_tensor": 2} and not dict(-extra)
    gathered = _all_reduce_rows(shards["backward_rows"]) - _all_reduce_rows(kept["backward_rows"])
    assert gathered == MOE_TOKENS  # two all-gathers of T rows, each half an all-reduce's
    spec = load_model("tiny-moe" if model.startswith("tiny-moe") else model)
    cluster = load_cluster("dgx-h100")  # one device per rank: no time-sharing factor
    priced = sp_regather_passes(spec, TrainSpec(global_batch=2, seq_len=16, precision="fp32"), cluster, UNIT, 2, 2, 1, "none",
                                sequence_parallel=True, sp_regather=True)
    row = tp_all_reduce_s(1, spec.hidden_size, FP32, 2, UNIT)
    assert priced.backward_input_s / row == pytest.approx(gathered)
    assert priced.backward_weight_s == priced.split_backward_extra_s == priced.backward_input_s
    assert shards["max_relative_error"] <= 1e-5


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt", "tiny-moe", "tiny-moe-shared"])
def test_a_layer_keeping_its_input_shards_saves_what_the_memory_model_takes_off(counted: dict, model: str) -> None:
    spec = load_model("tiny-moe" if model.startswith("tiny-moe") else model)
    if model == "tiny-moe-shared":
        spec = spec.model_copy(update={"shared_expert_ffn_hidden_size": 512})
    kept, shards = counted[model]["sp"]["none"]["saved_bytes"], counted[model]["sp_regather"]["none"]["saved_bytes"]
    variant = ActivationVariant.runtime("fp32", "cpu")
    formula = [layer_activation_bytes(spec, 16, 2, 2, True, "none", v, moe=spec.is_moe)
               for v in (variant, replace(variant, sp_keeps_gathered_inputs=False))]
    assert kept - shards == formula[0] - formula[1] == 2 * FP32 * MOE_TOKENS * spec.hidden_size / 2


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt", "tiny-moe", "tiny-moe-shared"])
def test_a_split_backward_gathers_the_input_shards_again_in_w(counted: dict, model: str) -> None:
    """torch's B (stage_backward_input) runs every node that saved a block input: the reduce-scatters' gradients (2)
    and the gathers again (2); its W (stage_backward_weight) runs them again for the weight gradients: 2 more, which
    ``sp_regather_passes`` prices as the split's excess."""
    assert counted[model]["sp_regather"]["split"] == {"backward_input": 4, "backward_weight": 2}
