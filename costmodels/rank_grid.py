"""The one rank grid: which global rank is which (dp, pp, tp) coordinate, and
which pipeline rank holds which virtual stage.

Order is Megatron-LM's and torchtitan's mesh ("pp", "dp", "tp"): tp varies
fastest, then dp, then pp, so a TP group is ``tp`` consecutive ranks (inside a
node when ``tp`` divides the GPUs per node) and pipeline neighbours are
``tp * dp`` ranks apart. The cost model, the simulator and the launcher all use
these functions; nothing else computes a rank.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodels.schedules.registry import schedule_spec


@dataclass(frozen=True)
class RankCoord:
    dp: int
    pp: int
    tp: int


@dataclass(frozen=True)
class RankGrid:
    tp: int
    pp: int
    dp: int

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def rank(self, coord: RankCoord) -> int:
        return (coord.pp * self.dp + coord.dp) * self.tp + coord.tp

    def coord(self, rank: int) -> RankCoord:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside a world of {self.world_size}")
        tp_idx = rank % self.tp
        dp_idx = (rank // self.tp) % self.dp
        pp_idx = rank // (self.tp * self.dp)
        return RankCoord(dp=dp_idx, pp=pp_idx, tp=tp_idx)

    def tp_group(self, dp: int, pp: int) -> list[int]:
        return [self.rank(RankCoord(dp, pp, t)) for t in range(self.tp)]

    def dp_group(self, pp: int, tp: int) -> list[int]:
        return [self.rank(RankCoord(d, pp, tp)) for d in range(self.dp)]

    def pp_group(self, dp: int, tp: int) -> list[int]:
        return [self.rank(RankCoord(dp, p, tp)) for p in range(self.pp)]

    def spans_nodes(self, group: list[int], gpus_per_node: int) -> bool:
        """True when a process group crosses a node boundary."""
        return len({r // gpus_per_node for r in group}) > 1


def stage_to_rank(stage: int, pp: int, v: int, schedule: str) -> int:
    """Pipeline rank holding virtual stage ``stage`` (torch's
    ``generate_stage_to_rank_mapping``: "loop" placement, or "v" for ZBV/DualPipeV)."""
    num_stages = pp * v
    if not 0 <= stage < num_stages:
        raise ValueError(f"stage {stage} outside {num_stages} stages")
    if schedule_spec(schedule).placement == "v":
        return stage if stage < pp else 2 * pp - 1 - stage
    return stage % pp


def stages_of_rank(rank: int, pp: int, v: int, schedule: str) -> list[int]:
    """The virtual stages pipeline rank ``rank`` holds, in stage order."""
    return [s for s in range(pp * v) if stage_to_rank(s, pp, v, schedule) == rank]
