"""Read emitted configs back: Megatron-LM arguments, torchtitan TOML, torchrun lines, the allow-lists.

The ``*_plan_view`` functions re-derive the plan's parallel settings the way
the target itself would read the file (Megatron-LM's layer split rules from
``get_num_layers_to_build``, torchtitan's microbatch count from
``local_batch_size / pipeline_parallel_microbatch_size``), written here
independently of the emitters so a round trip tests them.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import tomllib

import launch
from costmodels.schedules.registry import SCHEDULES

OPTIONS_DIR = Path(launch.__file__).resolve().parent / "options"
ArgValue = str | bool | list[str]


def _tokens(text: str) -> list[str]:
    """Shell words of ``text`` with comments and line continuations removed."""
    return shlex.split(text.replace("\\\n", " "), comments=True)


def _flags(tokens: list[str]) -> dict[str, ArgValue]:
    """``--flag value...`` pairs: a switch maps to True, several values to a list."""
    out: dict[str, ArgValue] = {}
    i = 0
    while i < len(tokens):
        flag = tokens[i]
        values = []
        i += 1
        while i < len(tokens) and not tokens[i].startswith("--"):
            values.append(tokens[i])
            i += 1
        out[flag] = True if not values else values[0] if len(values) == 1 else values
    return out


def parse_megatron_args(text: str) -> dict[str, ArgValue]:
    """Flags of ``megatron_args.txt`` or of the ``pretrain_gpt.py`` call in ``megatron.sh``."""
    tokens = _tokens(text)
    script = [i for i, token in enumerate(tokens) if token.endswith("pretrain_gpt.py")]
    if script:
        tokens = tokens[script[0] + 1 :]
    return _flags([t for t in tokens if t != "exec"])


def parse_torchrun_command(text: str) -> dict[str, ArgValue]:
    """torchrun's own options (up to ``-m``/the script), from a script that calls it."""
    tokens = _tokens(text)
    start = tokens.index("torchrun") + 1
    end = start
    while end < len(tokens) and tokens[end].startswith("--"):
        end += 2 if end + 1 < len(tokens) and not tokens[end + 1].startswith("-") else 1
    return _flags(tokens[start:end])


def parse_torchtitan_toml(text: str) -> dict[str, Any]:
    """The TOML document (``tomllib``)."""
    return tomllib.loads(text)


def toml_keys(doc: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys of every value (``parallelism.tensor_parallel_degree``, ``quantize.linear.float8.recipe_name``)."""
    keys: set[str] = set()
    for key, value in doc.items():
        if isinstance(value, dict):
            keys |= toml_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def load_allowlist(name: str) -> dict[str, tuple[str, ...] | None]:
    """``launch/options/<name>``: option -> its choices (None when free-form)."""
    allowed: dict[str, tuple[str, ...] | None] = {}
    for line in (OPTIONS_DIR / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        words = line.split()
        choices = next((w.removeprefix("choices=") for w in words if w.startswith("choices=")), None)
        allowed[words[0]] = tuple(choices.split("|")) if choices else None
    return allowed


def layout_stage_layers(layout: str) -> list[int]:
    """Transformer layers per stage of a ``--pipeline-model-parallel-layout`` string (Megatron's unrolling)."""
    text = layout.replace(",", "")
    text = re.sub(r"\(([^)]+)\)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), text)
    text = re.sub(r"(.)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), text)
    return [stage.count("t") for stage in text.split("|")]


def _megatron_stage_layers(args: dict[str, ArgValue], pp: int) -> list[int]:
    num_layers = int(args["--num-layers"])
    if "--pipeline-model-parallel-layout" in args:
        return layout_stage_layers(str(args["--pipeline-model-parallel-layout"]))
    if "--num-layers-per-virtual-pipeline-stage" in args:
        per_stage = int(args["--num-layers-per-virtual-pipeline-stage"])
        return [per_stage] * (num_layers // per_stage)
    v = int(args.get("--num-virtual-stages-per-pipeline-rank", 1))
    embedding = bool(args.get("--account-for-embedding-in-pipeline-split", False))
    loss = bool(args.get("--account-for-loss-in-pipeline-split", False))
    if embedding or loss:  # get_num_layers_to_build: the embedding / the loss is a layer of the first / last virtual stage
        per_stage = (num_layers + embedding + loss) // (pp * v)
        layers = [per_stage] * (pp * v)
        layers[0] -= embedding
        layers[-1] -= loss
        return layers
    first = args.get("--decoder-first-pipeline-num-layers")
    last = args.get("--decoder-last-pipeline-num-layers")
    rest, ranks_left = num_layers, pp
    for given in (first, last):
        if given is not None:
            rest, ranks_left = rest - int(given), ranks_left - 1
    middle = rest // ranks_left if ranks_left else 0
    per_rank = [middle] * pp
    if first is not None:
        per_rank[0] = int(first)
    if last is not None:
        per_rank[-1] = int(last)
    return [per_rank[j % pp] // v for j in range(pp * v)]


def megatron_plan_view(args: dict[str, ArgValue], world_size: int | None = None) -> dict[str, Any]:
    """What Megatron-LM makes of the flags: degrees, batch, schedule, layers per virtual stage."""
    tp = int(args.get("--tensor-model-parallel-size", 1))
    pp = int(args.get("--pipeline-model-parallel-size", 1))
    stage_layers = _megatron_stage_layers(args, pp)
    v = len(stage_layers) // pp
    return {
        "tp": tp,
        "pp": pp,
        "dp": world_size // (tp * pp) if world_size else None,
        "v": v,
        "mbs": int(args["--micro-batch-size"]),
        "global_batch": int(args["--global-batch-size"]),
        "schedule": "interleaved-1f1b" if v > 1 else "1f1b",
        "stage_layers": stage_layers,
        "recompute": str(args.get("--recompute-granularity", "none")),
        "sequence_parallel": bool(args.get("--sequence-parallel", False)),
        "zero": 1 if args.get("--use-distributed-optimizer") else 0,
    }


def torchtitan_plan_view(doc: dict[str, Any]) -> dict[str, Any]:
    """What torchtitan makes of the TOML: degrees, microbatches, schedule, layers per virtual stage."""
    par, training = doc["parallelism"], doc["training"]
    pp = par.get("pipeline_parallel_degree", 1)
    parts = par.get("module_fqns_per_model_part") or []
    mbs = par.get("pipeline_parallel_microbatch_size", 1) if pp > 1 else training["local_batch_size"]
    by_torch_name = {s.torchtitan_name: name for name, s in SCHEDULES.items() if s.torchtitan_name}
    csv_path = par.get("pipeline_parallel_schedule_csv") or None
    schedule = "csv" if csv_path else by_torch_name.get(par.get("pipeline_parallel_schedule", "1F1B"))
    reshard = par.get("fsdp_reshard_after_forward", "default")
    dp_shard = par.get("data_parallel_shard_degree", -1)
    return {
        "tp": par.get("tensor_parallel_degree", 1),
        "pp": pp,
        "dp": par.get("data_parallel_replicate_degree", 1) * dp_shard,
        "v": len(parts) // pp if pp > 1 else 1,
        "mbs": mbs,
        "global_batch": training["global_batch_size"],
        "num_microbatches": training["local_batch_size"] // mbs if pp > 1 else None,
        "schedule": schedule if pp > 1 else None,
        "schedule_csv": csv_path,
        "stage_layers": [sum(1 for name in part if name.startswith("layers.")) for part in parts],
        "recompute": doc.get("activation_checkpoint", {}).get("mode", "selective"),
        "zero": 0 if dp_shard == 1 else 3 if reshard == "always" else 2,
    }
