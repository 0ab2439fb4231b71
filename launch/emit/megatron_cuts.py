"""Megatron-LM's ways of cutting layers into pipeline stages, and the closest one to a plan.

Sources (NVIDIA/Megatron-LM at d98e8a6, 2026-08-22):
- ``megatron/core/transformer/transformer_block.py`` ``get_num_layers_to_build``:
  without flags every pipeline rank gets ``num_layers / pp`` layers; with
  ``--decoder-first-pipeline-num-layers`` / ``--decoder-last-pipeline-num-layers``
  the first / last rank gets that many and the other ranks share the rest
  equally; with virtual stages each rank's count is split equally over its
  ``v`` chunks. Virtual stage ``j`` (pipeline order) lives on rank ``j % pp``.
- ``megatron/training/arguments.py``: ``--num-layers-per-virtual-pipeline-stage``
  cannot be combined with first/last counts (use
  ``--num-virtual-stages-per-pipeline-rank``); at most one of those two and
  ``--pipeline-model-parallel-layout`` may be set.
- ``megatron/core/transformer/pipeline_parallel_layer_layout.py``
  (``--pipeline-model-parallel-layout``, core >= 0.13): stages separated by
  ``|`` in virtual-stage order, ``E`` embedding, ``t`` a transformer layer,
  ``m`` a multi-token prediction module, ``L`` the loss, ``t*3`` repeats; any cut is expressible
  (``E|t|...|t|L``: end stages with the embedding or the loss alone).
- ``--account-for-embedding-in-pipeline-split`` / ``--account-for-loss-in-pipeline-split``
  (same ``get_num_layers_to_build``): the embedding / the loss counts as one layer, so the first /
  last virtual stage builds one layer fewer than the others (none when each holds one slot).
"""

from __future__ import annotations

from costmodels.layout import EndSlots, FirstLast, end_slots_of, first_last_of, stage_layers_of

Arg = tuple[str, "str | None"]


def first_last_args(split: FirstLast, pp: int, v: int) -> list[Arg]:
    """Flags for ``split``: first/last counts where they differ from the middle, then the virtual-stage count."""
    args: list[Arg] = []
    uniform = split.first == split.middle == split.last
    if not uniform:
        both = pp == 2
        if both or split.first != split.middle:
            args.append(("--decoder-first-pipeline-num-layers", str(split.first)))
        if both or split.last != split.middle:
            args.append(("--decoder-last-pipeline-num-layers", str(split.last)))
    if v > 1:
        if uniform:
            args.append(("--num-layers-per-virtual-pipeline-stage", str(split.middle // v)))
        else:
            args.append(("--num-virtual-stages-per-pipeline-rank", str(v)))
    return args


def end_slot_args(slots: EndSlots, v: int) -> list[Arg]:
    """Flags for the embedding and/or the loss counted as a layer in the split (``costmodels.layout.EndSlots``;
    ``get_num_layers_to_build`` takes one layer off the first / last virtual stage for each); exclusive of the
    first/last counts and of the layout string."""
    args: list[Arg] = []
    if slots.embedding:
        args.append(("--account-for-embedding-in-pipeline-split", None))
    if slots.loss:
        args.append(("--account-for-loss-in-pipeline-split", None))
    if v > 1:
        args.append(("--num-virtual-stages-per-pipeline-rank", str(v)))
    return args


def layout_string(stage_layers: list[int], mtp_layers: int = 0) -> str:
    """``--pipeline-model-parallel-layout`` for ``stage_layers``: ``Et*3|t*3|...|t*2L``, with ``m`` for each
    multi-token prediction module before the loss on the last stage (``Et*4|...|tmL``: Megatron-Core places the
    modules after every decoder layer, in the last virtual stage of their rank, validate_layer_layout)."""
    stages = [("" if n == 0 else "t" if n == 1 else f"t*{n}") for n in stage_layers]
    stages[0] = "E" + stages[0]
    stages[-1] = stages[-1] + "m" * mtp_layers + "L"
    return "|".join(stages)


def closest_first_last(stage_layers: list[int], pp: int, v: int) -> FirstLast | None:
    """The first/last split nearest to ``stage_layers`` (least total layer moves, then least max stage).

    Every chunk keeps at least one layer, as the plan's stages do.
    """
    total = sum(stage_layers)
    best: tuple[tuple[int, int], FirstLast] | None = None
    for first in range(v, total + 1, v):
        for last in range(v, total - first + 1, v):
            split = _split_with(first, last, total, pp, v)
            if split is None:
                continue
            emitted = stage_layers_of(split, pp, v)
            score = (sum(abs(a - b) for a, b in zip(emitted, stage_layers)), max(emitted))
            if best is None or score < best[0]:
                best = (score, split)
    return best[1] if best else None


def _split_with(first: int, last: int, total: int, pp: int, v: int) -> FirstLast | None:
    if pp == 1:
        return FirstLast(total, total, total) if first == last == total else None
    if pp == 2:
        return FirstLast(first, first, last) if first + last == total else None
    rest = total - first - last
    if rest < (pp - 2) * v or rest % ((pp - 2) * v):
        return None
    return FirstLast(first, rest // (pp - 2), last)


def pipeline_args(stage_layers: list[int], pp: int, v: int, allow_layout: bool,
                  mtp_layers: int = 0) -> tuple[list[Arg], list[int], list[str]]:
    """Megatron flags for the plan's cut, the stage layers they produce, and warnings when they differ
    (``mtp_layers`` multi-token prediction modules go on the last stage either way)."""
    if pp == 1:
        return [], list(stage_layers), []
    exact = first_last_of(stage_layers, pp, v)
    if exact is not None and 0 not in (stage_layers[0], stage_layers[-1]):
        return first_last_args(exact, pp, v), list(stage_layers), []
    slots = end_slots_of(stage_layers)
    if slots is not None and not mtp_layers:
        return end_slot_args(slots, v), list(stage_layers), []
    if allow_layout:
        return [("--pipeline-model-parallel-layout", layout_string(stage_layers, mtp_layers))], list(stage_layers), []
    closest = closest_first_last(stage_layers, pp, v)
    if closest is None:
        warning = (
            f"no first/last-stage split of Megatron-LM reproduces or approximates stage_layers {stage_layers} "
            "(layer counts do not divide); emitted --pipeline-model-parallel-layout, which needs Megatron-LM core >= 0.13"
        )
        return [("--pipeline-model-parallel-layout", layout_string(stage_layers, mtp_layers))], list(stage_layers), [warning]
    emitted = stage_layers_of(closest, pp, v)
    warning = (
        f"Megatron-LM's first/last-stage flags give the first and last pipeline rank their own layer counts and "
        f"every other rank the same count (each rank's count split equally over its {v} virtual stage(s)); the "
        f"plan's stage_layers {stage_layers} are not of that shape, so the closest split {emitted} was emitted: "
        "stage times and per-rank memory differ from the plan (allow --pipeline-model-parallel-layout for the exact cut)"
    )
    return first_last_args(closest, pp, v), emitted, [warning]
