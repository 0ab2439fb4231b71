"""What torchtitan's per-op selective checkpointing keeps per block, eager and under torch.compile, and what
torch.compile's cross-entropy keeps (``StackKernels.compiled_blocks``, ``fused_cross_entropy``).

On CPU, torch 2.13: Llama blocks written as torchtitan 9dec370 writes them (composite fp32 RMSNorm, complex
rotary, repeat_kv, SDPA, SwiGLU), each wrapped in torch's checkpoint with torchtitan's op policy (every other
mm, the attention kernels, max; SDPA's CPU flash kernel stands for CUDA's), in bf16. Each run is its own
process with glibc's mmap threshold pinned (MALLOC_MMAP_THRESHOLD_), so large tensors come and go with the
resident set; what a block keeps is the slope of the resident bytes after the forward over 2 and 6 blocks,
in units of s·b·h bf16 values. The cost model's figure for the same block is printed beside it.

The loss: torchtitan's ``cross_entropy(pred.flatten(0, 1).float(), labels)`` eager and compiled, with the
tensors autograd saves (saved-tensor hooks), and the logit-sized buffers the compiled forward and backward
allocate (inductor's generated code).

Run: python bench/op_sac_compiled.py  (about 3 minutes; prints, never asserts)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

B, S, H, HEADS, KV, FFN = 2, 1024, 1024, 8, 2, 3584
REPEATS = 3


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def _blocks(n: int, compiled: bool):
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    class RMSNorm(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))

        def forward(self, x):
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).type_as(x) * self.weight

    def rotary(xq, xk, freqs):
        q = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
        k = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
        f = freqs.view(1, q.shape[1], 1, q.shape[-1])
        return torch.view_as_real(q * f).flatten(3).type_as(xq), torch.view_as_real(k * f).flatten(3).type_as(xk)

    def repeat_kv(x, n_rep: int):
        b, s, kv, d = x.shape
        return x[:, :, :, None, :].expand(b, s, kv, n_rep, d).reshape(b, s, kv * n_rep, d)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = H // HEADS
            self.wq, self.wk, self.wv = (nn.Linear(H, w * d, bias=False) for w in (HEADS, KV, KV))
            self.wo = nn.Linear(H, H, bias=False)
            self.w1, self.w3 = nn.Linear(H, FFN, bias=False), nn.Linear(H, FFN, bias=False)
            self.w2 = nn.Linear(FFN, H, bias=False)
            self.attention_norm, self.ffn_norm = RMSNorm(H), RMSNorm(H)

        def forward(self, x, freqs):
            b, s, _ = x.shape
            d = H // HEADS
            a = self.attention_norm(x)
            q, k, v = self.wq(a).view(b, s, HEADS, d), self.wk(a).view(b, s, KV, d), self.wv(a).view(b, s, KV, d)
            q, k = rotary(q, k, freqs)
            k, v = repeat_kv(k, HEADS // KV), repeat_kv(v, HEADS // KV)
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
            h = x + self.wo(o.transpose(1, 2).contiguous().view(b, s, -1))
            f = self.ffn_norm(h)
            return h + self.w2(F.silu(self.w1(f)) * self.w3(f))

    ops = torch.ops.aten
    save = {ops.mm.default, ops._scaled_dot_product_flash_attention.default,
            ops._scaled_dot_product_efficient_attention.default, ops._scaled_dot_product_flash_attention_for_cpu.default,
            ops.max.default}

    def context():
        counts: dict[str, int] = defaultdict(int)

        def policy(ctx, func, *args, **kwargs):
            key = "recompute" if ctx.is_recompute else "forward"
            if func == ops.mm.default:
                counts[key] += 1
            kept = func in save and not (func == ops.mm.default and counts[key] % 2 == 0)
            return CheckpointPolicy.MUST_SAVE if kept else CheckpointPolicy.PREFER_RECOMPUTE

        return create_selective_checkpoint_contexts(policy)

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block().to(torch.bfloat16)

        def forward(self, x, freqs):
            return checkpoint(self.block, x, freqs, use_reentrant=False, context_fn=context, preserve_rng_state=False)

    return [torch.compile(Checkpointed(), fullgraph=True) if compiled else Checkpointed() for _ in range(n)]


def kept_after_forward(n_blocks: int, compiled: bool) -> float:
    """Resident bytes after a forward through ``n_blocks`` checkpointed blocks, over s·b·h bf16 values."""
    import gc

    import torch

    torch.manual_seed(0)
    blocks = _blocks(n_blocks, compiled)
    freqs = torch.polar(torch.ones(S, H // HEADS // 2), torch.randn(S, H // HEADS // 2))
    x0 = torch.randn(B, S, H, dtype=torch.bfloat16, requires_grad=True)

    def forward():
        x = x0
        for block in blocks:
            x = block(x, freqs)
        return x

    forward().float().sum().backward()  # compiles, and allocates the gradients once
    gc.collect()
    base = _rss_bytes()
    y = forward()
    gc.collect()
    kept = _rss_bytes() - base - y.numel() * y.element_size()
    return kept / (B * S * H * 2)


def loss_saved() -> None:
    import re

    import torch
    from torch._inductor.utils import run_and_get_code

    def cross_entropy(pred, labels):
        return torch.nn.functional.cross_entropy(pred.flatten(0, 1).float(), labels.flatten(0, 1))

    vocab = 1000
    for name, fn in (("eager", cross_entropy), ("compiled", torch.compile(cross_entropy))):
        pred = torch.randn(B, 64, vocab, dtype=torch.bfloat16, requires_grad=True)
        labels = torch.randint(0, vocab, (B, 64))
        saved: dict[int, tuple] = {}

        def pack(t, saved=saved):
            saved[t.untyped_storage().data_ptr()] = (tuple(t.shape), str(t.dtype).removeprefix("torch."))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = fn(pred, labels)
        loss.backward()
        logit_sized = [v for v in saved.values() if v[0] in ((B * 64, vocab), (B, 64, vocab))]
        print(f"loss {name:8s}: saved logit-sized tensors (distinct storages) {logit_sized}")
    # what the compiled forward and backward allocate over the logits (inductor's generated code)
    pred = torch.randn(B, 64, vocab, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, vocab, (B, 64))
    compiled = torch.compile(cross_entropy)
    _, codes = run_and_get_code(lambda: compiled(pred, labels).backward())
    buffers = re.compile(r"empty_strided_cpu\(\(([\d, ]+)\), \([\d, ]*\), torch\.(\w+)\)")
    for i, code in enumerate(codes):
        sizes = [(shape, dtype) for shape, dtype in buffers.findall(code)
                 if eval("*".join(shape.replace(",", " ").split()) or "1") == B * 64 * vocab]
        print(f"loss compiled, generated graph {i} ({'forward' if i == 0 else 'backward'}): logit-sized buffers {sizes}")


def model_units(compiled: bool) -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from costmodels.memory import ActivationVariant, layer_activation_bytes
    from profiles.loader import load_stack
    from profiles.schema import ModelSpec

    model = ModelSpec(name="bench-block", num_layers=2, hidden_size=H, num_attention_heads=HEADS, num_key_value_heads=KV,
                      ffn_hidden_size=FFN, vocab_size=1000, seq_len=S, activation="swiglu")
    kernels = load_stack("torchtitan").kernels.model_copy(update={"compiled_blocks": compiled})
    variant = ActivationVariant.for_stack(kernels, "bf16")
    return layer_activation_bytes(model, S, B, 1, False, "selective", variant) / (B * S * H * 2)


def main() -> int:
    if len(sys.argv) == 3:  # one measurement, in its own process
        print(kept_after_forward(int(sys.argv[1]), sys.argv[2] == "compiled"))
        return 0
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    print(f"block: b {B}, s {S}, h {H}, {HEADS} heads ({KV} kv), ffn {FFN}, bf16; units of s·b·h bf16 values")
    for mode in ("eager", "compiled"):
        slopes = []
        for _ in range(REPEATS):
            kept = {}
            for n in (2, 6):
                out = subprocess.run([sys.executable, __file__, str(n), mode], env=env, capture_output=True, text=True,
                                     check=True)
                kept[n] = float(out.stdout.strip().splitlines()[-1])
            slopes.append((kept[6] - kept[2]) / 4)
        slopes.sort()
        print(f"{mode:8s}: kept per block {slopes[len(slopes) // 2]:5.2f} (measured, median of {REPEATS}; "
              f"{slopes[0]:.2f}-{slopes[-1]:.2f})  {model_units(mode == 'compiled'):5.2f} (ppplan, with the fp32 log-sum-exp)")
    loss_saved()
    return 0


if __name__ == "__main__":
    sys.exit(main())
