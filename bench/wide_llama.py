"""What the runtime benches on CPU share: a wide, shallow Llama (hidden 2048, 8 layers, sequence 16: 205 MB of
fp32 parameters per layer, so parameters and gradients outweigh the activations) written where a bench works, and
``ppplan`` run as the user runs it (the venv's console script, one thread a rank)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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


def workspace(keep: Path | None, prefix: str) -> tuple[Path, Path]:
    """(the bench's working directory, the wide Llama's model file in it): ``keep`` (``--keep``), created if need
    be, else a new temporary directory named with ``prefix``."""
    work = keep or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "wide-llama.yaml"
    path.write_text(MODEL)
    return work, path


def ppplan(*args: str) -> None:
    """Run ``ppplan args`` from the project root; a failure ends the bench with its output."""
    done = subprocess.run([str(Path(sys.executable).with_name("ppplan")), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise SystemExit(f"ppplan {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
