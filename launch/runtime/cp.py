"""Context parallelism: the sequence split over cp ranks with causal load balance, and ring
attention over point-to-point sends.

torch's own context-parallel attention (``torch.distributed.tensor.experimental.context_parallel``)
does not run on CPU with torch 2.13: it dispatches only the CUDA flash / efficient / cuDNN SDPA
ops, and the CPU one (``_scaled_dot_product_flash_attention_for_cpu``) "does not have a sharding
strategy registered" (tried on gloo, 2 ranks). So the runtime runs its own ring on every device:

- Load balance (Megatron-Core's CP, and torchtitan's "headtail"): the sequence is cut into 2·cp
  equal chunks and rank i holds chunks i and 2cp-1-i, so every rank has the same share of the
  causal mask's work.
- Ring attention (Liu et al. 2023, "Ring Attention with Blockwise Transformers"): keys and values
  travel around the cp ranks in cp-1 point-to-point steps; each query chunk attends to each
  key/value chunk that is not entirely in its future, and the blocks are merged by their
  log-sum-exp (Milakov and Gimelshein 2018, online softmax). Scores are computed in fp32.
- Backward: each step's send/receive is an autograd function whose backward sends the gradient
  the other way round the ring (``RingShift``), so gradients of keys and values return to their
  owner; autograd keeps the received key/value blocks for the backward (cp blocks per layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


def chunk_ids(cp: int, cp_rank: int) -> tuple[int, int]:
    """The two of the 2·cp sequence chunks that rank ``cp_rank`` holds (head and tail)."""
    return cp_rank, 2 * cp - 1 - cp_rank


def context_positions(seq_len: int, cp: int, cp_rank: int, device: torch.device | None = None) -> torch.Tensor:
    """Global positions of the ``seq_len // cp`` tokens rank ``cp_rank`` holds, in local order."""
    chunk = seq_len // (2 * cp)
    return torch.cat([torch.arange(c * chunk, (c + 1) * chunk, device=device) for c in chunk_ids(cp, cp_rank)])


def context_slice(batch: torch.Tensor, cp: int, cp_rank: int) -> torch.Tensor:
    """The columns (sequence positions) of ``batch`` [rows, seq] that rank ``cp_rank`` holds."""
    if cp == 1:
        return batch
    return batch[:, context_positions(batch.shape[1], cp, cp_rank, batch.device)].contiguous()


class RingShift(torch.autograd.Function):
    """Send ``tensor`` to the next rank of the ring and return the previous rank's; backward the reverse."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup, step: int) -> torch.Tensor:
        ctx.group, ctx.step = group, step
        return _exchange(tensor.contiguous(), group, step)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _exchange(grad.contiguous(), ctx.group, -ctx.step), None, None


def _exchange(tensor: torch.Tensor, group: dist.ProcessGroup, step: int) -> torch.Tensor:
    """Send to the rank ``step`` ahead in the ring, receive from the one ``step`` behind."""
    size, me = dist.get_world_size(group), dist.get_rank(group)
    to_rank = dist.get_global_rank(group, (me + step) % size)
    from_rank = dist.get_global_rank(group, (me - step) % size)
    received = torch.empty_like(tensor)
    requests = dist.batch_isend_irecv(
        [dist.P2POp(dist.isend, tensor, to_rank, group), dist.P2POp(dist.irecv, received, from_rank, group)]
    )
    for request in requests:
        request.wait()
    return received


def _block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One block: (output [b, kv, g, sq, d], log-sum-exp [b, kv, g, sq]), both fp32; ``mask`` True = attend.
    The two GEMMs run at the inputs' precision (bf16 runs: bf16 scores, the probabilities cast back to bf16
    for ·V), the softmax, its log-sum-exp and the output in fp32."""
    scores = torch.einsum("bkgqd,bksd->bkgqs", q, k).float() * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    out = torch.einsum("bkgqs,bksd->bkgqd", probs.to(v.dtype), v).float()
    return out, lse


def _merge(acc: tuple[torch.Tensor, torch.Tensor] | None, block: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Online-softmax merge of two partial attentions over disjoint key sets."""
    if acc is None:
        return block
    (out_a, lse_a), (out_b, lse_b) = acc, block
    lse = torch.logaddexp(lse_a, lse_b)
    out = out_a * torch.exp(lse_a - lse).unsqueeze(-1) + out_b * torch.exp(lse_b - lse).unsqueeze(-1)
    return out, lse


@dataclass
class ContextParallel:
    """Rank ``rank`` of ``size`` context-parallel ranks over ``group`` (the attention and positions hooks
    of ``launch.runtime.model``)."""

    group: dist.ProcessGroup
    size: int
    rank: int

    def positions(self, local_len: int, device: torch.device) -> torch.Tensor:
        return context_positions(local_len * self.size, self.size, self.rank, device)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of the local queries over the whole sequence's keys and values,
        [batch, heads, local seq, head_dim] (GQA: fewer key/value heads)."""
        b, heads, s_local, d = q.shape
        kv_heads, half = k.shape[1], s_local // 2
        qg = q.view(b, kv_heads, heads // kv_heads, s_local, d)
        q_chunks = dict(zip(chunk_ids(self.size, self.rank), qg.split(half, dim=3)))
        kv = torch.stack((k, v))
        acc: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {c: None for c in q_chunks}
        for step in range(self.size):
            source = (self.rank - step) % self.size
            if step:
                kv = RingShift.apply(kv, self.group, 1)
            for kc, (k_part, v_part) in zip(chunk_ids(self.size, source), zip(kv[0].split(half, 2), kv[1].split(half, 2))):
                for qc, q_part in q_chunks.items():
                    if kc > qc:
                        continue  # entirely in the future of this query chunk
                    mask = torch.ones(half, half, dtype=torch.bool, device=q.device).tril() if kc == qc else None
                    acc[qc] = _merge(acc[qc], _block_attention(q_part, k_part, v_part, mask, d**-0.5))
        outs = []
        for c in chunk_ids(self.size, self.rank):
            merged = acc[c]
            assert merged is not None  # every query chunk attends at least to its own chunk
            outs.append(merged[0])
        return torch.cat(outs, dim=3).reshape(b, heads, s_local, d).to(q.dtype)
