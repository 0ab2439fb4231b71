"""Caps on every count and size ppplan accepts (issue 14, "every bad input gets its answer").

A number above its cap is bad input (exit 2, one line naming the cap): it cannot describe a
real training job, and the planner's work grows with it (the rank grid with GPUs, the
cut-point DP with layers, the event simulator with stages x microbatches), so an absurd
value would otherwise run for hours or exhaust memory instead of failing.
Each cap sits one to two orders of magnitude above the largest published figure.
"""

from __future__ import annotations

# 2^20 GPUs: ~10x the largest clusters announced by 2026 (xAI Colossus, ~200k GPUs).
MAX_GPUS = 2**20
# Transformer layers: the deepest published LLMs have ~100-200 (Llama 3.1 405B 126, GPT-3 96);
# the cut-point DP is O(layers^2 x stages).
MAX_LAYERS = 10**4
# Microbatches per step per pipeline: published runs use <= ~10^3 (GPT-3 1T, Narayanan et al. 2021).
MAX_MICROBATCHES = 10**6
# Virtual stages x microbatches, the size of the action list the event simulator runs
# (pp=8, M=10^5 simulates in ~8 s on one core; 10^6 keeps the worst case near a minute and
# ~2 GB): largest published pp·v·M is ~2.5·10^4 (Megatron-LM GPT 1T: pp 64, M 384).
MAX_STAGE_MICROBATCHES = 10**6
# Widths (hidden, FFN, head dim, latent ranks): the largest published hidden is 25,600 (PaLM 540B
# 18,432; Megatron 1T 25,600), FFN ~10^5.
MAX_WIDTH = 2**20
MAX_HEADS = 2**16
# Vocabulary: the largest published is ~256k (Gemma); 2^24 leaves 64x.
MAX_VOCAB = 2**24
# Sequence length: 10M-token contexts are published (Llama 4 Scout); 2^24 = 16.8M.
MAX_SEQ_LEN = 2**24
# Sequences per step: published global batches are <= ~10^5 sequences.
MAX_GLOBAL_BATCH = 2**30
MAX_EXPERTS = 2**16
# multi-token prediction modules: DeepSeek-V3 trains 1; Megatron-Core allows any, a handful is what anyone runs
MAX_MTP_LAYERS = 16
# Steps of one `ppplan launch`.
MAX_STEPS = 10**6
# Plans returned by one search.
MAX_TOP_K = 1000
# Hardware figures (per GPU): memory up to 1 PiB; compute 1e-6..1e6 TFLOP/s (a B200 is ~2.3e3 dense
# bf16, one CPU core ~0.1 fp32); bandwidth 1e-6..1e12 GB/s (HBM3e ~8e3; 1e12 is "free", which
# tests use to price compute alone); latency up to 1 s.
MAX_MEMORY_GIB = 2.0**20
MIN_TFLOPS, MAX_TFLOPS = 1e-6, 1e6
MIN_BANDWIDTH_GBS, MAX_BANDWIDTH_GBS = 1e-6, 1e12
MAX_LATENCY_US = 1e6
# Seconds of one pipeline action in `ppplan simulate` (a day).
MAX_ACTION_TIME_S = 86400.0
# The shortest training step a metrics file may report: one kernel launch alone takes several
# microseconds (a CPU step of ppplan's runtime, milliseconds). 5e-324 s divided a fit into overflows.
MIN_STEP_TIME_S = 1e-6
# Timed repetitions and warm-up iterations per profiler measurement.
MAX_PROFILE_REPEATS = 10**4
# Processes of one `ppplan profile-comm` (one node) and its largest message (16 GiB).
MAX_COMM_PROCESSES = 1024
MAX_COMM_BYTES = 2**34
