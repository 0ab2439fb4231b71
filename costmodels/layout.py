"""Where things sit in the pipeline: the one stage-layout type.

A ``StageLayout`` is one virtual stage: the transformer layers it holds, whether
it holds the embedding (the first stage) and the final norm + logits + loss (the
last stage), and the pipeline rank that runs it (the schedule's placement,
``costmodels.rank_grid.stage_to_rank``). The estimate prices these stages and
the runtime builds exactly these modules, so the two never disagree on where
the embedding and the head go.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodels.rank_grid import stage_to_rank, stages_of_rank
from profiles.schema import ParallelConfig


@dataclass(frozen=True)
class StageLayout:
    """One virtual stage: layers ``[first_layer, first_layer + num_layers)`` and its extras."""

    stage: int
    first_layer: int
    num_layers: int
    has_embedding: bool
    has_head: bool
    pipeline_rank: int


def layouts_of(stage_layers: list[int], pp: int, v: int, schedule: str) -> list[StageLayout]:
    """Every virtual stage in pipeline order for ``stage_layers`` (embedding on the first stage,
    final norm + logits + loss on the last)."""
    layouts: list[StageLayout] = []
    first = 0
    last_stage = len(stage_layers) - 1
    for stage, count in enumerate(stage_layers):
        layouts.append(
            StageLayout(
                stage=stage,
                first_layer=first,
                num_layers=count,
                has_embedding=stage == 0,
                has_head=stage == last_stage,
                pipeline_rank=stage_to_rank(stage, pp, v, schedule),
            )
        )
        first += count
    return layouts


def stage_layouts(cfg: ParallelConfig) -> list[StageLayout]:
    """The plan's virtual stages in pipeline order (from ``cfg.stage_layers``)."""
    return layouts_of(cfg.stage_layers, cfg.pp, cfg.v, cfg.schedule)


def local_stages(cfg: ParallelConfig, pipeline_rank: int) -> list[StageLayout]:
    """The virtual stages pipeline rank ``pipeline_rank`` holds, in stage order."""
    layouts = stage_layouts(cfg)
    return [layouts[s] for s in stages_of_rank(pipeline_rank, cfg.pp, cfg.v, cfg.schedule)]


def loss_pipeline_rank(cfg: ParallelConfig) -> int:
    """The pipeline rank that computes the loss (holds the last virtual stage;
    rank 0 for the V-shaped ZBV / DualPipeV placement)."""
    return stage_to_rank(cfg.num_stages - 1, cfg.pp, cfg.v, cfg.schedule)


def uniform_split(num_layers: int, stages: int) -> list[int]:
    """Megatron-LM's default: layers spread as evenly as possible, the extra ones on the
    earliest stages."""
    base, extra = divmod(num_layers, stages)
    return [base + (1 if j < extra else 0) for j in range(stages)]


def min_layers_for(stages: int) -> int:
    """The fewest transformer layers ``stages`` virtual stages can hold: one each, except that the
    first may hold the embedding alone and the last the head alone."""
    return max(1, stages - 2)


@dataclass(frozen=True)
class EndSlots:
    """Megatron-LM's split with the embedding and/or the loss counted as one layer each
    (``--account-for-embedding-in-pipeline-split``, ``--account-for-loss-in-pipeline-split``,
    ``megatron/core/transformer/transformer_block.py`` ``get_num_layers_to_build``): every virtual
    stage holds ``per_stage`` slots, the first gives one to the embedding, the last one to the head."""

    per_stage: int
    embedding: bool
    loss: bool


def end_slot_split(num_layers: int, stages: int, *, embedding: bool = True, loss: bool = True) -> list[int] | None:
    """Layers per virtual stage with the embedding and/or the loss taking one slot each (``EndSlots``);
    None when the slots do not divide evenly or a stage would hold nothing else."""
    if stages < 2:
        return None
    per, rest = divmod(num_layers + embedding + loss, stages)
    if rest or per < 1:
        return None
    layers = [per] * stages
    layers[0] -= embedding
    layers[-1] -= loss
    return layers


def end_stage_floors(stages: int) -> list[int]:
    """The fewest layers each of ``stages`` virtual stages may hold: 0 for the first and the last
    (the embedding or the head alone), 1 for the others; 1 for a single stage."""
    if stages < 2:
        return [1] * stages
    return [0] + [1] * (stages - 2) + [0]


def default_split(num_layers: int, stages: int) -> list[int] | None:
    """The split ppplan uses when none is given: ``uniform_split`` where every stage gets a layer;
    with one layer short the last stage holds the head alone (it is the heavier end: logits and
    loss against an embedding lookup), with two short the embedding and the head each hold a stage
    alone (``end_slot_split``); None below that."""
    if num_layers >= stages:
        return uniform_split(num_layers, stages)
    if num_layers == stages - 1:
        return end_slot_split(num_layers, stages, embedding=False)
    return end_slot_split(num_layers, stages) if num_layers == stages - 2 else None


def end_slots_of(stage_layers: list[int]) -> EndSlots | None:
    """The ``EndSlots`` that build ``stage_layers`` (at least one end accounted for), or None."""
    if len(stage_layers) < 2:
        return None
    middle = stage_layers[1:-1]
    per = middle[0] if middle else max(stage_layers[0], stage_layers[-1])
    if any(n != per for n in middle):
        return None
    embedding, loss = stage_layers[0] == per - 1, stage_layers[-1] == per - 1
    if not (embedding or loss) or stage_layers[0] not in (per, per - 1) or stage_layers[-1] not in (per, per - 1):
        return None
    return EndSlots(per, embedding, loss)


@dataclass(frozen=True)
class FirstLast:
    """Layers on the first rank, each middle rank and the last rank (totals over the rank's chunks)."""

    first: int
    middle: int
    last: int


def stage_layers_of(split: FirstLast, pp: int, v: int) -> list[int]:
    """Layers per virtual stage (pipeline order) that Megatron builds for ``split``."""
    per_rank = [split.first] + [split.middle] * (pp - 2) + [split.last] if pp > 1 else [split.first]
    return [per_rank[j % pp] // v for j in range(pp * v)]


def first_last_of(stage_layers: list[int], pp: int, v: int) -> FirstLast | None:
    """The first/middle/last split equal to ``stage_layers``, or None when it has another shape."""
    by_rank = [[stage_layers[j] for j in range(r, pp * v, pp)] for r in range(pp)]
    if any(len(set(chunks)) != 1 for chunks in by_rank):
        return None
    totals = [sum(chunks) for chunks in by_rank]
    middle = totals[1:-1]
    if len(set(middle)) > 1:
        return None
    mid = middle[0] if middle else totals[0]
    return FirstLast(totals[0], mid, totals[-1])
