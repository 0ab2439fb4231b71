"""What the runtime benches on CPU share: a wide, shallow Llama (hidden 2048, 8 layers, sequence 16: 205 MB of
fp32 parameters per layer, so parameters and gradients outweigh the activations) written where a bench works, and
``ppplan`` run as the user runs it (the venv's console script, one thread a rank)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = """name: wide-llama
num_layers: 8
hidden_size: 2048
num_attention_heads: 16
vocab_size: 1024
seq_len: 16
num_key_value_heads: 8
ffn_hidden_size: 5632
activation: swiglu
tie_embeddings: false
"""


def write_model(work: Path) -> Path:
    """The wide Llama's model file in ``work``."""
    path = work / "wide-llama.yaml"
    path.write_text(MODEL)
    return path


def ppplan(*args: str) -> None:
    """Run ``ppplan args`` from the project root; a failure ends the bench with its output."""
    done = subprocess.run([str(Path(sys.executable).with_name("ppplan")), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise SystemExit(f"ppplan {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
