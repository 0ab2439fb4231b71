"""A decoder-only transformer built from ``ModelSpec`` shapes, in separable pieces.

One config-driven module covers both families in DESIGN.md:

- GPT style (``activation: gelu``): LayerNorm, GELU MLP, learned positions, biases.
- Llama style (``activation: swiglu``): RMSNorm, SwiGLU MLP, RoPE, grouped-query
  attention (``num_key_value_heads < num_attention_heads``), no biases.

No dropout anywhere (the runtime variant the cost model prices with a flag).

Mixture-of-experts layers (``spec.num_experts``; the layers from ``first_dense_layers`` on)
replace the MLP by ``launch.runtime.moe.MoEFeedForward``. Context parallelism hooks in
through ``ContextParallel`` (``launch.runtime.cp``): set as ``attention.context`` and
``embedding.context`` it supplies the local tokens' global positions and the ring attention.

A pipeline stage is ``[Embedding] + a contiguous range of TransformerLayer +
[Head]`` (``StageModule``); the single-process reference is the same pieces with
the whole layer range (``build_full_model``). Every piece is initialised from
its own seeded generator (``piece_seed``), so a rank that builds only its
layers holds bit-identical weights to the reference: nothing depends on build
order or the global RNG.

Public API (the profiler imports these to time single layers):
``build_embedding(spec)``, ``TransformerLayer(spec)``, ``build_head(spec)``,
``lm_loss(logits, targets)``, ``build_stage_module``, ``build_full_model``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from costmodels.params import is_moe_layer
from launch.runtime.cp import ContextParallel
from launch.runtime.moe import ExpertShard, MoEFeedForward
from profiles.schema import ModelSpec, RecomputeKind

INIT_STD = 0.02
NORM_EPS = 1e-5
ROPE_THETA = 10000.0


def piece_seed(seed: int, piece: int) -> int:
    """Seed of one piece: 0 = embedding, 1 + i = layer i, num_layers + 1 = head."""
    return seed * 1_000_003 + piece


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build_norm(spec: ModelSpec) -> nn.Module:
    """LayerNorm (GPT) or RMSNorm (Llama) over the hidden size."""
    if spec.norm == "rmsnorm":
        return nn.RMSNorm(spec.hidden_size, eps=NORM_EPS)
    return nn.LayerNorm(spec.hidden_size, eps=NORM_EPS, bias=bool(spec.linear_bias))


def rope_tables(seq_len: int, head_dim: int, device: torch.device, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of rotary embeddings (Su et al. 2021, eq. 34), shape [seq, head_dim/2], at
    ``positions`` (default 0 .. seq_len - 1; a context-parallel rank's own positions)."""
    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    if positions is None:
        positions = torch.arange(seq_len, device=device)
    angles = torch.outer(positions.to(torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of ``x`` [batch, seq, heads, head_dim]."""
    x_even, x_odd = x.float()[..., 0::2], x.float()[..., 1::2]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def core_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax(QK^T/sqrt(d))V on [batch, heads, seq, head_dim]; GQA without
    materialising repeated K and V (``enable_gqa``), so backward keeps them at kv_dim as
    the cost model counts.

    This is the part "selective" recompute re-runs (Korthikanti et al. 2022, Sec. 5).
    """
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention.

    Head counts are read from the projection outputs at run time, so the same
    code runs unsharded and with heads split over tensor-parallel ranks.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        bias = bool(spec.linear_bias)
        self.head_dim = spec.head_dim
        self.use_rope = spec.position_embedding == "rope"
        self.wq = nn.Linear(spec.hidden_size, spec.num_attention_heads * spec.head_dim, bias=bias)
        self.wk = nn.Linear(spec.hidden_size, spec.kv_dim, bias=bias)
        self.wv = nn.Linear(spec.hidden_size, spec.kv_dim, bias=bias)
        self.wo = nn.Linear(spec.num_attention_heads * spec.head_dim, spec.hidden_size, bias=bias)
        self.selective_recompute = False
        self.context: ContextParallel | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        batch, seq = q.shape[0], q.shape[1]
        q = q.view(batch, seq, -1, self.head_dim)
        k = k.view(batch, seq, -1, self.head_dim)
        v = v.view(batch, seq, -1, self.head_dim)
        if self.use_rope:
            positions = self.context.positions(seq, q.device) if self.context is not None else None
            cos, sin = rope_tables(seq, self.head_dim, q.device, positions)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        attend = self.context.attention if self.context is not None else core_attention
        if self.selective_recompute and torch.is_grad_enabled():
            out = checkpoint(attend, q, k, v, use_reentrant=False)
        else:
            out = attend(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, -1))


class FeedForward(nn.Module):
    """GELU MLP (h -> ffn -> h) or SwiGLU (Shazeer 2020: w2(silu(w1 x) * w3 x))."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        bias = bool(spec.linear_bias)
        self.swiglu = spec.activation == "swiglu"
        self.w1 = nn.Linear(spec.hidden_size, spec.ffn_size, bias=bias)
        self.w3 = nn.Linear(spec.hidden_size, spec.ffn_size, bias=bias) if self.swiglu else None
        self.w2 = nn.Linear(spec.ffn_size, spec.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w3 is not None:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(F.gelu(self.w1(x)))


class TransformerLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + ffn(norm(x)).

    ``set_recompute`` picks what the backward recomputes: "none"; "selective"
    (the core attention only); "full" (the whole layer, keeping only its input).
    """

    def __init__(self, spec: ModelSpec, feed_forward: nn.Module | None = None) -> None:
        super().__init__()
        self.attention_norm = build_norm(spec)
        self.attention = Attention(spec)
        self.ffn_norm = build_norm(spec)
        self.feed_forward = feed_forward if feed_forward is not None else FeedForward(spec)
        self.recompute: RecomputeKind = "none"

    def set_recompute(self, kind: RecomputeKind) -> None:
        self.recompute = kind
        self.attention.selective_recompute = kind == "selective"

    def _block(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.ffn_norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute == "full" and torch.is_grad_enabled():
            return checkpoint(self._block, x, use_reentrant=False)
        return self._block(x)


class Embedding(nn.Module):
    """Token embedding plus learned positions (GPT) or nothing (RoPE applies in attention)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.tok = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.pos = nn.Embedding(spec.seq_len, spec.hidden_size) if spec.position_embedding == "learned" else None
        self.context: ContextParallel | None = None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens)
        if self.pos is not None:
            seq = tokens.shape[1]
            positions = self.context.positions(seq, tokens.device) if self.context is not None else torch.arange(seq, device=tokens.device)
            x = x + self.pos(positions)
        return x


class Head(nn.Module):
    """Final norm and the logits projection (weight [vocab, hidden], no bias)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.norm = build_norm(spec)
        self.proj = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


def _init_linear(linear: nn.Linear, std: float, gen: torch.Generator) -> None:
    nn.init.normal_(linear.weight, 0.0, std, generator=gen)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


@torch.no_grad()
def init_layer(layer: TransformerLayer, spec: ModelSpec, seed: int) -> None:
    """N(0, 0.02) weights, residual outputs N(0, 0.02/sqrt(2L)) (GPT-2, Radford et al. 2019)."""
    gen = _generator(seed)
    out_std = INIT_STD / math.sqrt(2 * spec.num_layers)
    attn, ffn = layer.attention, layer.feed_forward
    for linear in (attn.wq, attn.wk, attn.wv):
        _init_linear(linear, INIT_STD, gen)
    _init_linear(attn.wo, out_std, gen)
    if isinstance(ffn, MoEFeedForward):
        ffn.init_weights(gen, seed, spec.num_layers)
        return
    _init_linear(ffn.w1, INIT_STD, gen)
    if ffn.w3 is not None:
        _init_linear(ffn.w3, INIT_STD, gen)
    _init_linear(ffn.w2, out_std, gen)


def _token_embedding_init(weight: torch.Tensor, seed: int) -> None:
    with torch.no_grad():
        nn.init.normal_(weight, 0.0, INIT_STD, generator=_generator(piece_seed(seed, 0)))


def build_embedding(spec: ModelSpec, seed: int = 0) -> Embedding:
    """The first stage's input piece, initialised from ``piece_seed(seed, 0)``."""
    emb = Embedding(spec)
    _token_embedding_init(emb.tok.weight, seed)
    if emb.pos is not None:
        with torch.no_grad():
            nn.init.normal_(emb.pos.weight, 0.0, INIT_STD, generator=_generator(piece_seed(seed, 0) + 1))
    return emb


def build_layer(spec: ModelSpec, index: int, seed: int = 0, experts: ExpertShard | None = None) -> TransformerLayer:
    """Transformer layer ``index`` (0-based), initialised from ``piece_seed(seed, 1 + index)``; an MoE
    layer holds the routed experts ``experts`` (default: all of them)."""
    feed_forward = None
    if is_moe_layer(spec, index):
        assert spec.num_experts is not None  # is_moe
        feed_forward = MoEFeedForward(spec, experts or ExpertShard(0, spec.num_experts))
    layer = TransformerLayer(spec, feed_forward)
    init_layer(layer, spec, piece_seed(seed, 1 + index))
    return layer


def build_head(spec: ModelSpec, seed: int = 0) -> Head:
    """The last stage's output piece. With tied embeddings its weight starts as a
    copy of the token embedding (the runtime keeps the copies equal by summing
    their gradients, Megatron-LM's embedding group)."""
    head = Head(spec)
    if spec.tie_embeddings:
        _token_embedding_init(head.proj.weight, seed)
    else:
        with torch.no_grad():
            nn.init.normal_(head.proj.weight, 0.0, INIT_STD, generator=_generator(piece_seed(seed, spec.num_layers + 1)))
    return head


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every token of the (micro)batch, in fp32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


class StageModule(nn.Module):
    """One virtual pipeline stage: [embedding] + layers[first:first+n] + [head].

    Layers are kept under their global index (``layers.3``) so parameter names
    match the full model whatever the cut.
    """

    def __init__(self, embedding: Embedding | None, layers: dict[int, TransformerLayer], head: Head | None) -> None:
        super().__init__()
        self.embedding = embedding
        self.layers = nn.ModuleDict({str(i): layer for i, layer in layers.items()})
        self.head = head
        self.tied = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        for layer in self.layers.values():
            x = layer(x)
        if self.head is not None:
            x = self.head(x)
        return x

    def tie_embeddings(self) -> None:
        """Share one weight between the token embedding and the logits (single-stage case)."""
        if self.embedding is not None and self.head is not None:
            self.head.proj.weight = self.embedding.tok.weight
            self.tied = True


def build_stage_module(
    spec: ModelSpec, first_layer: int, num_layers: int, with_embedding: bool, with_head: bool, seed: int = 0,
    experts: ExpertShard | None = None, prepare_layer: Callable[[TransformerLayer], TransformerLayer] | None = None,
) -> StageModule:
    """Build only what one stage holds (of each MoE layer, the routed experts ``experts``); weights equal the full model's.
    ``prepare_layer`` runs on each layer as soon as it is built (the runtime shards it there, so that at most
    one layer is ever whole in memory)."""
    prepare = prepare_layer or (lambda layer: layer)
    layers = {i: prepare(build_layer(spec, i, seed, experts)) for i in range(first_layer, first_layer + num_layers)}
    stage = StageModule(
        build_embedding(spec, seed) if with_embedding else None, layers, build_head(spec, seed) if with_head else None
    )
    if spec.tie_embeddings:
        stage.tie_embeddings()
    return stage


def build_full_model(spec: ModelSpec, seed: int = 0) -> StageModule:
    """The whole model as one stage: the single-process reference."""
    return build_stage_module(spec, 0, spec.num_layers, True, True, seed)
