"""Measured layer times: a ``LayerTimes`` (``costmodels.layer_costs``) backed by a profile
(read by ``profiles.loader.read_profile``).

``ProfiledTimes`` answers ``transformer / embedding / head(tp, mbs, seq_len, ...)`` from
``ppplan profile`` measurements: the measured medians where the shape was measured,
otherwise nested one-dimensional interpolation, log-log between the two bracketing
measured points, first over ``mbs``, then ``seq_len``, then ``tp`` (a time that
scales as a power of the size, as GEMM time does with tokens and with 1/tp, is
interpolated exactly). Outside the measured range it extrapolates from the nearest
two points with the log-log slope clamped to a physical range (never superlinear in
mbs, never slower with more TP), or with the ideal slope (linear in tokens, 1/tp)
when only one point exists, and says so once per distinct case.

A mixture-of-experts layer is measured with all its routed experts on one rank; expert
parallelism adds the busiest rank's excess routed load, the all-to-alls and the reorder of
received tokens (``ProfiledTimes._moe``).

Tensor-parallel communication is not in a measurement of sharded shapes on one device,
so it is added from the alpha–beta model exactly where ``RooflineTimes`` puts it, over
the cluster's link or, when given, the link fitted by ``ppplan profile-comm``. Degrees
timed in a real TP group (``ppplan profile --tp-group``) already contain it; a plan with
sequence parallelism is priced from the layers timed with it there, where they were
(``sequence_parallel_timed``), else from those timed without it, and says so.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

from costmodels.comm import US, Link, bandwidth_bytes_per_s, link_for, network_for
from costmodels.compute import operators_time_s
from costmodels.experts import SOURCE_ORDER_ACCESSES, dispatch_ops, rank_load_imbalance, routed_rows
from costmodels.layer_costs import (
    LayerTimes,
    PassTimes,
    RooflineTimes,
    bytes_per_element,
    price_operators,
    tp_comm_passes,
)
from costmodels.layer_ops import transformer_layer_ops
from costmodels.operators import LayerShape, MemoryBound
from costmodels.runtime_costs import measured_runtime_costs
from profiles.errors import PlanError
from profiles.profile_schema import (
    MOE_SHAPE_FIELDS,
    SHAPE_FIELDS,
    CommProfile,
    HardwareFingerprint,
    LayerProfile,
    ProfileFile,
    model_shape_hash,
)
from profiles.schema import ClusterSpec, ModelSpec, TrainSpec
from profiles.stack_schema import StackKernels, StackSpec

Warn = Callable[[str], None]
PASS_FIELDS = ("forward_s", "backward_input_s", "backward_weight_s")
# (ideal slope with one point, lowest and highest slope allowed when extrapolating) per axis
AXIS_SLOPES: dict[str, tuple[float, float, float]] = {
    "mbs": (1.0, 0.0, 1.0),
    "seq_len": (1.0, 0.0, 2.0),
    "tp": (-1.0, -1.0, 0.0),
}


@dataclass(frozen=True)
class Interpolated:
    value: float
    extrapolated: bool


def interpolate_loglog(points: Iterable[tuple[float, float]], x: float, axis: str) -> Interpolated:
    """``y(x)`` from measured ``(x_i, y_i)``: exact, log-log between the bracketing pair
    (linear when a bracketing ``y`` is 0), or extrapolated from the nearest two points
    with the slope clamped to ``AXIS_SLOPES[axis]``.

    Above the largest measured micro-batch or sequence the slope is at least the ideal one (1):
    a sublinear measured slope says fixed costs were still being amortized there, and carrying it
    further assumes a time per sample that keeps falling, which nothing measured. The search then
    picks plans whose micro-batch nobody timed because their price is the most optimistic:
    tiny-moe's MoE layer measured 68.1 and 111.4 ms (F+B) at mbs 4 and 8 (slope 0.71) and was
    extrapolated to 182 ms at mbs 16; timed there it took 267 ms (124.4 at mbs 8 on the same run:
    slope 1.10), and the picks at mbs 16 ran 46 % slower than priced (``bench/e2e_cpu.py``, 2026-12-03)."""
    pts = sorted(dict(points).items())
    if not pts:
        raise ValueError("no points to interpolate")
    for xi, yi in pts:
        if xi == x:
            return Interpolated(yi, False)
    below = [p for p in pts if p[0] < x]
    above = [p for p in pts if p[0] > x]
    if below and above:
        (x0, y0), (x1, y1) = below[-1], above[0]
        if y0 <= 0 or y1 <= 0:
            return Interpolated(y0 + (y1 - y0) * (x - x0) / (x1 - x0), False)
        t = math.log(x / x0) / math.log(x1 / x0)
        return Interpolated(math.exp(math.log(y0) + t * math.log(y1 / y0)), False)
    ideal, low, high = AXIS_SLOPES[axis]
    if not above and ideal > 0:
        low = max(low, ideal)  # beyond the largest measured mbs / sequence: no cheaper per sample or token
    near = above[:2] if above else below[-2:][::-1]
    x0, y0 = near[0]
    slope = ideal
    if len(near) == 2 and near[0][1] > 0 and near[1][1] > 0:
        (xa, ya), (xb, yb) = near
        slope = min(high, max(low, math.log(yb / ya) / math.log(xb / xa)))
    return Interpolated(y0 * (x / x0) ** slope, True)


def _describe(values: Iterable[int]) -> str:
    return ",".join(str(v) for v in sorted(set(values)))


# ``ppplan profile`` times ppplan's own runtime, whose full recompute is torch.utils.checkpoint(use_reentrant=False)
# with its default early stop (launch/runtime/model.py; profiles/stacks/ppplan-torch.yaml full_recompute_early_stop)
PROFILED_RUNTIME_STOPS_EARLY = True


class ProfiledTimes:
    """``LayerTimes`` from a profile file (see the module docstring)."""

    def __init__(
        self,
        profile: ProfileFile,
        model: ModelSpec,
        cluster: ClusterSpec,
        train: TrainSpec,
        allow_mismatch: bool = False,
        comm: CommProfile | None = None,
        warn: Warn | None = None,
        kernels: StackKernels | None = None,
    ) -> None:
        problems = profile_mismatches(profile, model, cluster, train) + comm_mismatches(comm, cluster)
        self._warn = warn or _log_warning
        self._said: set[str] = set()
        if problems and not allow_mismatch:
            raise PlanError(f"{problems[0]}; re-run `ppplan profile` for this model and device, or pass --allow-mismatch")
        for problem in problems:
            self.note(f"{problem} (used anyway: --allow-mismatch)")
        self.profile, self.model, self.cluster, self.train = profile, model, cluster, train
        self.tp_link_intra = comm_link(comm, "intra_node") or link_for(cluster, crosses_nodes=False)
        self.tp_link_inter = comm_link(comm, "inter_node") or link_for(cluster, crosses_nodes=True)
        self.network = network_for(cluster, (self.tp_link_intra, self.tp_link_inter))
        self.p = bytes_per_element(train.precision)
        self.kernels = kernels or StackKernels()
        self.runtime = measured_runtime_costs(comm, profile.runtime)  # costmodels.runtime_costs
        self._entries: dict[tuple[str, str, int, bool], list[LayerProfile]] = {}
        self._measured_tps = {e.tp for e in profile.layers}
        self._group_tps = {e.tp for e in profile.layers if e.tp_comm_included}
        for entry in profile.layers:
            self._entries.setdefault((entry.kind, entry.recompute, entry.cp, entry.sequence_parallel), []).append(entry)
        # the cp degrees whose rings the profile timed (``ppplan profile --cp``): a search keeps to them
        self.context_parallel_degrees: frozenset[int] = frozenset({1} | {e.cp for e in profile.layers})
        self._transformer_cached = lru_cache(maxsize=None)(self._transformer)
        self._moe_cached = lru_cache(maxsize=None)(self._moe)
        self._embedding_cached = lru_cache(maxsize=None)(self._embedding)
        self._head_cached = lru_cache(maxsize=None)(self._head)

    # the profiler times experts as ppplan's runtime splits them, over tp (a search keeps expert TP = tp)
    expert_tp_folding = False
    # the profiler leaves each timed iteration's gradients in .grad: its W holds autograd's accumulation
    grad_accumulation_measured = True

    def transformer(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str, cp: int = 1,
                    ep: int = 1, moe: bool = False, etp: int | None = None, ep_overlap: float = 0.0) -> PassTimes:
        if moe and ep > 1 and ep_overlap > 0:
            raise PlanError("the profile timed no merged forward and backward: price the combined 1F1B without --profile")
        if etp not in (None, tp):
            raise PlanError(f"the profile timed experts split over tp={tp}, not etp={etp}: price expert TP 1 without --profile")
        if cp not in self.context_parallel_degrees:
            raise PlanError(f"the profile timed no ring of cp={cp} (it has cp {_describe(self.context_parallel_degrees)}): "
                            f"re-run `ppplan profile --cp {cp}`, or price it without --profile")
        if moe:
            return self._moe_cached(tp, mbs, seq_len, sequence_parallel, recompute, ep, cp)
        return self._transformer_cached(tp, mbs, seq_len, sequence_parallel, recompute, cp)

    def embedding(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, cp: int = 1) -> PassTimes:
        return self._embedding_cached(tp, mbs, seq_len // cp, sequence_parallel, cp)

    def head(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, cp: int = 1) -> PassTimes:
        return self._head_cached(tp, mbs, seq_len // cp, sequence_parallel, cp)

    def mtp_projection(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, cp: int = 1) -> PassTimes:
        raise PlanError("the profile timed no multi-token prediction module (ppplan's runtime has none): "
                        "price a model with mtp_layers without --profile")

    def note(self, message: str, key: str | None = None) -> None:
        """Warn once per distinct ``key`` (default: the message itself)."""
        if (key or message) not in self._said:
            self._said.add(key or message)
            self._warn(message)

    # -- measured compute -------------------------------------------------------------

    def measured(self, kind: str, recompute: str, tp: int, mbs: int, seq_len: int, field: str, cp: int = 1,
                 sp: bool = False) -> float:
        """One measured quantity of ``kind`` at (tp, mbs, seq_len) on a rank of a ring of ``cp``, interpolated
        where not measured (not across cp: a ring is timed at its own degree; at a tp its ring was not
        timed at, ``_ring_at_tp`` composes it); ``sp``: as timed with sequence parallelism (``sequence_parallel_timed``)."""
        composed = None if sp else self._ring_at_tp(kind, recompute, tp, mbs, seq_len, field, cp)
        return composed if composed is not None else self._interpolated(kind, recompute, tp, mbs, seq_len, field, cp, sp)

    def sequence_parallel_timed(self, kind: str, tp: int, sequence_parallel: bool, recompute: str = "none",
                                cp: int = 1) -> bool:
        """Whether a plan with ``sequence_parallel`` prices ``kind`` at ``tp`` under ``recompute`` from layers the
        profile timed with sequence parallelism in a TP group of ``tp`` (``ppplan profile --tp-group``): their
        all-gathers, reduce-scatters and sharded norms are then inside the measurement. It needs the layer without
        recompute and with ``recompute`` timed so at this tp (a merged or edited profile may lack one: then the
        entries without sequence parallelism, timed at this tp, price it, with the caveat). A ring (cp > 1) is
        timed at tp 1, without it."""
        if not sequence_parallel or cp > 1:
            return False
        return all(any(e.tp == tp for e in self._entries.get((kind, rc, 1, True), ())) for rc in {"none", recompute})

    def _ring_at_tp(self, kind: str, recompute: str, tp: int, mbs: int, seq_len: int, field: str, cp: int) -> float | None:
        """A rank of a ring of ``cp`` at a tp whose ring was not timed (``ppplan profile --cp`` times rings at
        tp 1): the rank's own ``seq_len / cp`` positions at this tp, measured alone, plus the ring's extra
        as timed at the ring's tp ``t0`` (the ring minus those positions alone at ``t0``) times ``t0 / tp``:
        the extra is the attention of the rank's queries over the other ranks' key/value blocks and their
        transfer, and tensor parallelism splits both by heads (Megatron-Core runs CP inside each TP rank's
        heads; Liu et al. 2023, Ring Attention). Measuring the layers at tp > 1 inside the group puts TP's
        own per-call cost, which a shorter sequence does not shrink, in the first term; a fixed cost of the
        ring (p2p latency per block) is divided by ``tp / t0`` with the rest, an optimistic share. None
        where the ring was timed at this tp, or the profile lacks the positions alone (an older profile:
        then extrapolated across tp, with the note)."""
        if cp == 1:
            return None
        ring_tps = {e.tp for e in self._entries.get((kind, recompute, cp, False), [])}
        local = seq_len // cp
        alone = {e.tp for e in self._entries.get((kind, recompute, 1, False), []) if e.seq_len == local}
        if not ring_tps or tp in ring_tps:
            return None
        t0 = min(ring_tps, key=lambda t: (abs(math.log(t / tp)), t))
        if t0 not in alone or alone == {t0}:  # nothing measured says how the positions alone scale with tp
            return None
        extra = (self._interpolated(kind, recompute, t0, mbs, seq_len, field, cp)
                 - self._interpolated(kind, recompute, t0, mbs, local, field))
        return self._interpolated(kind, recompute, tp, mbs, local, field) + max(0.0, extra) * t0 / tp

    def _interpolated(self, kind: str, recompute: str, tp: int, mbs: int, seq_len: int, field: str, cp: int = 1,
                      sp: bool = False) -> float:
        entries = self._entries.get((kind, recompute, cp, sp))
        if not entries:
            ring = f" in a ring of cp={cp}" if cp > 1 else (" with sequence parallelism" if sp else "")
            raise PlanError(f"profile has no {kind} measurements with recompute '{recompute}'{ring}; re-run `ppplan profile`")
        at_tp: dict[int, float] = {}
        outside: dict[str, set[int]] = {}
        for tp_i in sorted({e.tp for e in entries}):
            rows = [e for e in entries if e.tp == tp_i]
            at_seq: dict[int, float] = {}
            for seq_i in sorted({e.seq_len for e in rows}):
                pts = [(e.mbs, float(getattr(e, field))) for e in rows if e.seq_len == seq_i]
                got = interpolate_loglog(pts, mbs, "mbs")
                at_seq[seq_i] = got.value
                if got.extrapolated:
                    outside.setdefault("mbs", set()).update(p[0] for p in pts)
            got = interpolate_loglog(at_seq.items(), seq_len, "seq_len")
            at_tp[tp_i] = got.value
            if got.extrapolated:
                outside.setdefault("seq_len", set()).update(at_seq)
        got = interpolate_loglog(at_tp.items(), tp, "tp")
        if got.extrapolated:
            outside["tp"] = set(at_tp)
        asked = {"mbs": mbs, "seq_len": seq_len, "tp": tp}
        where = (f" cp={cp}" if cp > 1 else "") + (" (sequence parallel)" if sp else "")
        for axis, measured in outside.items():
            self.note(f"profile: {kind}{where} {axis}={asked[axis]} is outside the measured {axis} {_describe(measured)}; extrapolating")
        return got.value

    def _passes(self, kind: str, recompute: str, tp: int, mbs: int, seq_len: int, cp: int = 1, sp: bool = False) -> PassTimes:
        """Measured F, B, W, and how much B + W exceed the measured unsplit backward."""
        f, b, w, unsplit = (self.measured(kind, recompute, tp, mbs, seq_len, field, cp, sp) for field in (*PASS_FIELDS, "backward_s"))
        return PassTimes(f, b, w, split_backward_extra_s=max(0.0, b + w - unsplit))

    def _full_recompute_share(self, kind: str, tp: int, mbs: int, seq_len: int, cp: int, kernels: StackKernels) -> float:
        """The share of a layer's forward a full recompute runs again with ``kernels``, by the roofline's price of its
        operators (``costmodels.layer_ops.early_stopped_recompute``): 1, or less where torch's early stop skips the
        tail."""
        shape = LayerShape(tp, mbs, seq_len, False, "full", self.p, cp=cp, moe=kind != "transformer")
        ops = transformer_layer_ops(self.model, shape, kernels)
        forward, redo = (price_operators(self.cluster, self.train.precision, part, self.network, tp, cp, 1).total_s
                         for part in (ops.forward, ops.recompute))
        return redo / forward if forward > 0 else 1.0

    def _compute(self, tp: int, mbs: int, seq_len: int, recompute: str, kind: str = "transformer", cp: int = 1,
                 sp: bool = False) -> PassTimes:
        """Measured F/B/W of a layer of ``kind`` (dense or MoE) on a rank of a ring of ``cp``; ``recompute_s``
        is B(recompute) - B(none). The profile timed ppplan's runtime, whose full recompute stops early
        (``PROFILED_RUNTIME_STOPS_EARLY``): for a stack that re-runs the whole block the measured re-run is scaled up
        by the roofline's share of the tail (``_full_recompute_share``); without full-recompute measurements the
        stack's share of the measured forward is added to B. ``sp``: the layers timed with sequence parallelism."""
        base = self._passes(kind, "none", tp, mbs, seq_len, cp, sp)
        if recompute == "none":
            return base
        if (kind, recompute, cp, sp) not in self._entries:
            stack_share = self._full_recompute_share(kind, tp, mbs, seq_len, cp, self.kernels) if recompute == "full" else 1.0
            redo = base.forward_s * stack_share if recompute == "full" else 0.0
            what = "the measured forward" if stack_share == 1.0 else "the share of the measured forward the stack re-runs"
            self.note(f"profile has no recompute '{recompute}' measurements; adding {what} to B")
            return PassTimes(base.forward_s, base.backward_input_s + redo, base.backward_weight_s, 0.0, redo,
                             split_backward_extra_s=base.split_backward_extra_s)
        got = self._passes(kind, recompute, tp, mbs, seq_len, cp, sp)
        redo = max(0.0, got.backward_input_s - base.backward_input_s)
        backward_input, weight = got.backward_input_s, got.backward_weight_s
        if recompute == "full":
            # W as the unsplit backward runs it; torch's split W re-runs the forward per parameter group
            unsplit = self.measured(kind, "full", tp, mbs, seq_len, "backward_s", cp, sp)
            weight = max(0.0, unsplit - got.backward_input_s)
            if got.backward_weight_s > 1.5 * weight + got.forward_s:
                self.note(
                    f"profile: under full recompute torch's split backward-weight took {got.backward_weight_s * 1e3:.3g} ms "
                    f"per layer against {weight * 1e3:.3g} ms unsplit (a re-run forward per parameter group); "
                    "zero-bubble schedules with full recompute will run slower than priced",
                    key="split W under full recompute",
                )
            runtime = self.kernels.model_copy(update={"full_recompute_early_stop": PROFILED_RUNTIME_STOPS_EARLY, "dropout": False})
            if runtime != self.kernels:  # the stack recomputes otherwise than the profiled runtime (ppplan-torch: as it)
                stack_share = self._full_recompute_share(kind, tp, mbs, seq_len, cp, self.kernels)
                scaled = redo * stack_share / self._full_recompute_share(kind, tp, mbs, seq_len, cp, runtime)
                backward_input, redo = backward_input + scaled - redo, scaled
        # under full recompute B + W is the unsplit backward already
        extra = 0.0 if recompute == "full" else got.split_backward_extra_s
        return PassTimes(got.forward_s, backward_input, weight, 0.0, redo, split_backward_extra_s=extra)

    # -- LayerTimes ---------------------------------------------------------------------

    def _with_comm(self, measured: PassTimes, kind: str, tp: int, mbs: int, seq_len: int, sp: bool, recompute: str,
                   ep: int = 1, moe: bool = False, cp: int = 1, sp_timed: bool = False) -> PassTimes:
        """Add the modelled TP communication, unless the profile timed this degree in a real TP
        group (then it is inside F and B and only labelled, for the breakdown); ``sp_timed``: ``measured``
        was timed with the plan's sequence parallelism (``sequence_parallel_timed``)."""
        # the profile times ppplan's runtime, whose loss gathers the logits (no vocab-parallel loss)
        comm = tp_comm_passes(self.model, kind, tp, mbs, seq_len, sp, recompute, self.p, self.network, False,
                              cp=cp, ep=ep, moe=moe, kernels=self.kernels)
        if tp in self._group_tps or (self._group_tps and tp not in self._measured_tps):
            if sp and not sp_timed:
                under = f" under recompute '{recompute}'" if recompute != "none" else ""
                self.note(f"profile: layers at tp={tp}{under} were timed in a TP group without sequence parallelism, so a "
                          "sequence-parallel plan is priced with their all-reduces and whole-sequence norms, not its "
                          "all-gathers, reduce-scatters and sharded norms (on gloo it ran 11-23 % slower than priced: "
                          "bench/e2e_cpu.py); `ppplan profile --tp-group` times them with it too",
                          key="sequence parallel in a TP group")
            inside = min(comm.tp_comm_s, measured.forward_s + measured.backward_input_s)
            return PassTimes(measured.forward_s, measured.backward_input_s, measured.backward_weight_s, inside, measured.recompute_s,
                             split_backward_extra_s=measured.split_backward_extra_s)
        return measured.plus(comm)

    def _transformer(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str, cp: int = 1) -> PassTimes:
        timed = self.sequence_parallel_timed("transformer", tp, sequence_parallel, recompute, cp)
        measured = self._compute(tp, mbs, seq_len, recompute, "transformer", cp, timed)
        return self._with_comm(measured, "transformer", tp, mbs, seq_len, sequence_parallel, recompute, cp=cp, sp_timed=timed)

    def _moe(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, recompute: str, ep: int, cp: int = 1) -> PassTimes:
        """A mixture-of-experts layer on a rank of an ``ep``-rank expert-parallel group.

        The profile timed the layer with all ``E`` routed experts on one rank (ep = 1): the rank's
        ``T·k`` assignments over ``E`` experts. With ``ep`` ranks a rank computes the assignments of all
        ``ep`` ranks that fall on its ``E / ep`` experts: ``T·k`` on average, ``rank_load_imbalance``
        of that on the busiest rank, which the group waits for (``costmodels.experts``). So the
        measured layer, plus the measured router-and-experts block ("experts") times the busiest
        rank's excess load, plus what exists only with ep > 1 and was not measured: the dispatch and
        combine all-to-alls over the measured links, and the runtime's reorder of what it receives
        into expert order and back (memory-bound, by the roofline). Under full recompute the
        backward re-runs the excess and the forward's all-to-alls."""
        timed = self.sequence_parallel_timed("moe_transformer", tp, sequence_parallel, recompute, cp)
        measured = self._compute(tp, mbs, seq_len, recompute, "moe_transformer", cp, timed)
        if ep > 1:  # the experts block has no attention: timed on one rank, at the rank's seq_len / cp positions
            excess = rank_load_imbalance(self.model.num_experts or 0, ep) - 1.0
            experts = self._passes("experts", "none", tp, mbs, seq_len // cp).scaled(excess)
            again = experts.forward_s if recompute == "full" else 0.0
            measured = measured.plus(PassTimes(experts.forward_s, experts.backward_input_s + again,
                                               experts.backward_weight_s, recompute_s=again,
                                               split_backward_extra_s=experts.split_backward_extra_s))
        passes = self._with_comm(measured, "transformer", tp, mbs, seq_len, sequence_parallel, recompute, ep, True, cp, timed)
        if ep == 1:
            return passes
        shape = LayerShape(tp, mbs, seq_len, sequence_parallel, recompute, self.p, cp=cp, ep=ep, moe=True)
        ops = dispatch_ops(self.model, shape, self.kernels)
        forward = price_operators(self.cluster, self.train.precision, ops.forward, self.network, tp, 1, ep).ep_comm_s
        backward = price_operators(self.cluster, self.train.precision, ops.backward_input, self.network, tp, 1, ep).ep_comm_s
        rows = routed_rows(self.model, shape.tokens, ep)
        reorder = operators_time_s(self.cluster, self.train.precision, (
            MemoryBound("moe.source_order", SOURCE_ORDER_ACCESSES * rows * self.model.hidden_size * self.p),))
        again = forward if recompute == "full" else 0.0
        extra = PassTimes(forward + reorder, backward + again + reorder, 0.0, ep_comm_s=forward + backward + again)
        return passes.plus(extra)

    def _embedding(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, cp: int = 1) -> PassTimes:
        return self._edge("embedding", tp, mbs, seq_len, sequence_parallel, cp)

    def _head(self, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, cp: int = 1) -> PassTimes:
        return self._edge("head", tp, mbs, seq_len, sequence_parallel, cp)

    def _edge(self, kind: str, tp: int, mbs: int, seq_len: int, sequence_parallel: bool, cp: int) -> PassTimes:
        """The embedding or the head, no recompute: ``seq_len`` is a ring rank's ``seq_len / cp`` positions,
        timed alone (``_embedding_cached`` and ``_head_cached`` are called with them)."""
        timed = self.sequence_parallel_timed(kind, tp, sequence_parallel, cp=cp)
        measured = self._passes(kind, "none", tp, mbs, seq_len, sp=timed)
        return self._with_comm(measured, kind, tp, mbs, seq_len, sequence_parallel, "none", sp_timed=timed)


# -- checks -------------------------------------------------------------------------------


def device_matches(hardware: HardwareFingerprint, cluster: ClusterSpec) -> bool:
    """A CPU profile prices a CPU cluster (``gpu.name: cpu``); a CUDA profile a cluster whose
    GPU family (the part of ``gpu.name`` before the first '-', e.g. H100) is in the device name."""
    if cluster.gpu.name.lower() == "cpu":
        return hardware.device_kind == "cpu"
    family = cluster.gpu.name.split("-")[0].lower()
    return hardware.device_kind == "cuda" and family in hardware.device_name.lower()


def _shape_difference(a: ModelSpec, b: ModelSpec) -> str:
    fields = SHAPE_FIELDS + MOE_SHAPE_FIELDS
    diffs = [f"{k} {getattr(a, k)} vs {getattr(b, k)}" for k in fields if getattr(a, k) != getattr(b, k)]
    return ", ".join(diffs) or "shape hash differs"


def profile_mismatches(profile: ProfileFile, model: ModelSpec, cluster: ClusterSpec, train: TrainSpec) -> list[str]:
    """Why ``profile`` does not describe this model on this cluster at this precision."""
    problems = []
    if profile.model_shape_hash != model_shape_hash(model):
        problems.append(
            f"profile was measured for model '{profile.model.name}', another shape than '{model.name}' "
            f"({_shape_difference(profile.model, model)})"
        )
    if not device_matches(profile.hardware, cluster):
        problems.append(
            f"profile was measured on {profile.hardware.device_kind} '{profile.hardware.device_name}', "
            f"not on cluster '{cluster.name}' ({cluster.gpu.name})"
        )
    if profile.precision != train.precision:
        problems.append(f"profile was measured in {profile.precision}, the plan runs in {train.precision}")
    return problems


def comm_mismatches(comm: CommProfile | None, cluster: ClusterSpec) -> list[str]:
    if comm is None:
        return []
    wants_cpu = cluster.gpu.name.lower() == "cpu"
    if wants_cpu != (comm.backend == "gloo"):
        return [f"comm profile was measured with {comm.backend}, which cluster '{cluster.name}' does not use"]
    return []


def comm_link(comm: CommProfile | None, tier: str) -> Link | None:
    """The tier's overall alpha–beta fit as a ``Link``, or None when not measured."""
    fit = comm.tier(tier) if comm else None
    if fit is None:
        return None
    return Link(bandwidth_bytes_per_s=bandwidth_bytes_per_s(fit.overall.bandwidth_gbs), latency_s=fit.overall.latency_us * US)


# -- loading ------------------------------------------------------------------------------


def _log_warning(message: str) -> None:
    logging.getLogger(__name__).warning(message)


def layer_times_for(
    profile: ProfileFile | None,
    comm: CommProfile | None,
    model: ModelSpec,
    cluster: ClusterSpec,
    train: TrainSpec,
    allow_mismatch: bool = False,
    warn: Warn | None = None,
    *,
    stack: StackSpec,
) -> LayerTimes:
    """The ``LayerTimes`` for a measured layer profile and/or a measured collective profile
    (either may be None; files are read by ``profiles.loader``).

    Raises ``PlanError`` (CLI exit 2) for a profile of another model shape, device or
    precision unless ``allow_mismatch`` (then it warns). ``warn`` receives one-line
    warnings (default: the ``logging`` module). ``stack`` gives the roofline its kernels.
    """
    if profile is None:
        if comm is None:
            return RooflineTimes(model, cluster, train.precision, stack=stack)
        problems = comm_mismatches(comm, cluster)
        if problems and not allow_mismatch:
            raise PlanError(f"{problems[0]}; re-run `ppplan profile-comm` with its backend, or pass --allow-mismatch")
        for problem in problems:
            (warn or _log_warning)(f"{problem} (used anyway: --allow-mismatch)")
        links = (comm_link(comm, "intra_node") or link_for(cluster, False), comm_link(comm, "inter_node") or link_for(cluster, True))
        roofline = RooflineTimes(model, cluster, train.precision, tp_links=links, stack=stack)
        roofline.runtime = measured_runtime_costs(comm)  # costmodels.runtime_costs
        return roofline
    return ProfiledTimes(profile, model, cluster, train, allow_mismatch, comm, warn, stack.kernels)
