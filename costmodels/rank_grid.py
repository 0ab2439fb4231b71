"""The one rank grid: which global rank is which (dp, cp, pp, tp) coordinate, which
ranks form the expert-parallel groups, and which pipeline rank holds which virtual stage.

Order is Megatron-LM's ("tp-cp-ep-dp-pp", ``megatron/core/parallel_state.py``) and
torchtitan's mesh ("pp", "dp", "cp", "tp"): tp varies fastest, then cp, then dp, then
pp, so a TP group is ``tp`` consecutive ranks (inside a node when ``tp`` divides the GPUs
per node) and pipeline neighbours are ``tp * cp * dp`` ranks apart. Expert parallelism
folds into the data x context ranks (Megatron-Core's parallel folding with expert TP =
tp; with expert TP 1 into all tp x cp x dp ranks of a stage, ``ep_group``): with ``j = dp * cp_size + cp`` the flattened data-context index, an expert-parallel
group is ``ep`` consecutive values of ``j`` and the expert-data-parallel group (ranks
holding the same experts) the values of ``j`` equal modulo ``ep``. The cost model, the
simulator and the launcher all use these functions; nothing else computes a rank.
"""

from __future__ import annotations

from dataclasses import dataclass

from costmodels.schedules.registry import schedule_spec


@dataclass(frozen=True)
class RankCoord:
    dp: int
    pp: int
    tp: int
    cp: int = 0


@dataclass(frozen=True)
class RankGrid:
    tp: int
    pp: int
    dp: int
    cp: int = 1

    @property
    def world_size(self) -> int:
        return self.tp * self.cp * self.pp * self.dp

    def rank(self, coord: RankCoord) -> int:
        return ((coord.pp * self.dp + coord.dp) * self.cp + coord.cp) * self.tp + coord.tp

    def coord(self, rank: int) -> RankCoord:
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside a world of {self.world_size}")
        tp_idx = rank % self.tp
        cp_idx = (rank // self.tp) % self.cp
        dp_idx = (rank // (self.tp * self.cp)) % self.dp
        pp_idx = rank // (self.tp * self.cp * self.dp)
        return RankCoord(dp=dp_idx, pp=pp_idx, tp=tp_idx, cp=cp_idx)

    def tp_group(self, dp: int, pp: int, cp: int = 0) -> list[int]:
        return [self.rank(RankCoord(dp, pp, t, cp)) for t in range(self.tp)]

    def dp_group(self, pp: int, tp: int, cp: int = 0) -> list[int]:
        return [self.rank(RankCoord(d, pp, tp, cp)) for d in range(self.dp)]

    def cp_group(self, dp: int, pp: int, tp: int) -> list[int]:
        return [self.rank(RankCoord(dp, pp, tp, c)) for c in range(self.cp)]

    def pp_group(self, dp: int, tp: int, cp: int = 0) -> list[int]:
        return [self.rank(RankCoord(dp, p, tp, cp)) for p in range(self.pp)]

    def data_context_group(self, pp: int, tp: int) -> list[int]:
        """The dp x cp ranks of one (pp, tp): gradients of dense weights are averaged over them
        (torchtitan's ``dp_shard_cp`` mesh), ordered by the flattened index ``j = dp * cp_size + cp``."""
        return [self.rank(RankCoord(j // self.cp, pp, tp, j % self.cp)) for j in range(self.dp * self.cp)]

    def ep_group(self, pp: int, tp: int, block: int, ep: int, etp: int | None = None) -> list[int]:
        """Expert-parallel group ``block`` of size ``ep`` at expert-TP position ``tp``. The ranks of a
        pipeline stage, tp fastest, are also the expert grid etp x ep x edp (Megatron-Core's
        ``RankGenerator`` order "tp-ep-dp" with tp = etp): with ``etp`` = tp (the default) these are
        consecutive ranks of ``data_context_group``; with etp 1, ``ep`` consecutive ranks."""
        etp = self.tp if etp is None else etp
        base = pp * self.tp * self.cp * self.dp
        return [base + (block * ep + e) * etp + tp for e in range(ep)]

    def edp_group(self, pp: int, tp: int, position: int, ep: int, etp: int | None = None) -> list[int]:
        """The ranks holding the same experts as position ``position`` of each expert-parallel group."""
        etp = self.tp if etp is None else etp
        base, ranks = pp * self.tp * self.cp * self.dp, self.tp * self.cp * self.dp
        return [base + (d * ep + position) * etp + tp for d in range(ranks // (ep * etp))]

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
