"""A seeded, learnable synthetic token stream.

Only an "active" subset of ``vocab / ACTIVE_FRACTION`` tokens ever occurs, and
each active token has ``BRANCHING`` possible successors drawn once from the seed
(a sparse random bigram table); a sequence starts at a random active token and
walks the table, picking a successor uniformly. Two levels of structure: the
unigram one (ln(vocab) -> ln(active), 6.93 -> 4.16 nats for vocab 1024) is
picked up within a few steps, so the loss falls from the first steps; the
bigram one takes longer and has the floor ln(BRANCHING) = 1.39 nats.

Batches are a pure function of (seed, step): every rank, and the
single-process reference, computes the same global batch and takes its slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BRANCHING = 4
ACTIVE_FRACTION = 16


@dataclass(frozen=True)
class SyntheticTokens:
    """Global batches of ``[global_batch, seq_len]`` inputs and next-token targets."""

    vocab_size: int
    seq_len: int
    seed: int = 0

    def successor_table(self) -> torch.Tensor:
        """``[vocab, BRANCHING]`` successors of each token (all active tokens), fixed by the seed."""
        gen = torch.Generator().manual_seed(self.seed)
        active = self.active_tokens()
        picks = torch.randint(0, active.numel(), (self.vocab_size, BRANCHING), generator=gen)
        return active[picks]

    def active_tokens(self) -> torch.Tensor:
        """The tokens that occur in the stream, fixed by the seed."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        count = max(2, self.vocab_size // ACTIVE_FRACTION)
        return torch.randperm(self.vocab_size, generator=gen)[:count]

    def global_batch(self, step: int, global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), both int64 ``[global_batch, seq_len]``, for optimizer step ``step``."""
        table = self.successor_table()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * (step + 1))
        tokens = torch.empty(global_batch, self.seq_len + 1, dtype=torch.long)
        active = self.active_tokens()
        tokens[:, 0] = active[torch.randint(0, active.numel(), (global_batch,), generator=gen)]
        choices = torch.randint(0, BRANCHING, (global_batch, self.seq_len), generator=gen)
        for t in range(self.seq_len):
            tokens[:, t + 1] = table[tokens[:, t], choices[:, t]]
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def dp_slice(batch: torch.Tensor, dp: int, dp_index: int) -> torch.Tensor:
    """Rows of the global batch that data-parallel replica ``dp_index`` trains on."""
    rows = batch.shape[0] // dp
    return batch[dp_index * rows : (dp_index + 1) * rows]
