"""Held-out accuracy on published mixture-of-experts and long-context runs (issue 13, part 3).

Reads the published-run corpus in its v2 columns (``--runs``; the research copy is
``/work/research/runs/public_runs_v2.csv``, the file the issue-12 evidence work ships as
``profiles/calibration/public_runs.csv``), keeps the rows with experts (num_experts > 1) or
context parallelism (cp > 1), prices each row whose source states its configuration with the
shipped GPU-family constants (a-priori: none of them is fitted on these rows, so every error is
held-out), and prints the error by category (MoE, context-parallel, both), by source, the worst
rows, and why the others are skipped. It prints and never asserts.

Assumptions a row is priced under are listed with it (``--verbose``): the recipe defaults
Megatron-Core's NeMo recipes use where a table leaves a field out (distributed optimizer, sequence
parallelism with tp > 1, one virtual stage), MXFP8 as fp8, recomputed element-wise modules
(layernorm, moe_act) priced as no recompute, DeepSeek-V3's MLA shape from its preset, and the
source's routing: "force-balanced routing" means the busiest expert-parallel rank carries the mean
load (``costmodels.experts.EXPERT_LOAD_IMBALANCE`` otherwise).

Run: python bench/accuracy_moe_cp.py --runs /work/research/runs/public_runs_v2.csv [--verbose]
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from costmodels.estimate import estimate
from costmodels.layer_costs import RooflineTimes
from costmodels.layout import uniform_split
from costmodels.rules import config_violations
from profiles.loader import load_cluster, load_model, load_stack
from profiles.schema import ModelSpec, ParallelConfig, TrainSpec

DEFAULT_RUNS = Path(__file__).resolve().parents[1] / "profiles" / "calibration" / "public_runs.csv"
CLUSTER_OF_GPU = {"H100-SXM": "dgx-h100", "H200": "dgx-h200", "B200": "dgx-b200"}
STACKS = ("megatron-core", "torchtitan")
SCHEDULES = {"none": "1f1b", "1f1b": "1f1b", "interleaved-1f1b": "interleaved-1f1b"}
ELEMENTWISE_RECOMPUTE = ("layernorm", "moe_act", "mla_up_proj", "shared_experts")
# Architectures whose attention or experts the cost model does not have (FACTS.md section 2).
UNSUPPORTED_FAMILIES = {"gpt-oss": "gpt-oss: alternating sliding-window attention, attention sinks and biased experts"}


@dataclass(frozen=True)
class Priced:
    run: str
    source: str
    gpu: str
    category: str
    metric: str
    predicted: float
    measured: float
    assumptions: tuple[str, ...]

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.predicted - self.measured) / self.measured


class Skip(Exception):
    """A row that cannot be priced, with the reason."""


def _int(row: dict, key: str, default: int | None = None) -> int:
    text = (row.get(key) or "").strip()
    if not text:
        if default is None:
            raise Skip(f"{key} not stated")
        return default
    try:
        return int(float(text))
    except ValueError:
        raise Skip(f"{key} '{text}' is not a number") from None


def category(row: dict) -> str:
    moe = (row.get("num_experts") or "").strip() not in ("", "0", "1")
    cp = _int(row, "cp", 1) > 1
    return "moe+cp" if moe and cp else "moe" if moe else "cp"


def model_of(row: dict, assumptions: list[str]) -> ModelSpec:
    family = row["model_family"]
    if family in UNSUPPORTED_FAMILIES:
        raise Skip(UNSUPPORTED_FAMILIES[family])
    fields: dict = dict(
        name=row["run"], num_layers=_int(row, "layers"), hidden_size=_int(row, "hidden"),
        num_attention_heads=_int(row, "heads"), num_key_value_heads=_int(row, "kv_heads", _int(row, "heads")),
        ffn_hidden_size=_int(row, "ffn_hidden"), vocab_size=_int(row, "vocab"), seq_len=_int(row, "seq_len"),
        activation=row.get("activation") or "swiglu", tie_embeddings=False,
    )
    head_dim = re.search(r"head_dim (\d+)", row["notes"])
    if head_dim:
        fields["head_dim"] = int(head_dim.group(1))
    if category(row) != "cp":
        fields.update(num_experts=_int(row, "num_experts"), experts_per_token=_int(row, "experts_per_token"),
                      moe_ffn_hidden_size=_int(row, "moe_ffn_hidden"), num_shared_experts=_int(row, "shared_experts", 0),
                      first_dense_layers=_int(row, "first_dense_layers", 0))
    if family == "deepseek-v3":
        preset = load_model("deepseek-v3")
        fields.update({k: getattr(preset, k) for k in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                                                       "v_head_dim")})
        assumptions.append("MLA shape of the deepseek-v3 preset (DeepSeek-V3 config.json)")
    try:
        return ModelSpec(**fields)
    except ValidationError as exc:
        raise Skip(f"malformed shape: {exc.errors()[0]['msg']}") from None


def _recompute(row: dict, assumptions: list[str]) -> str:
    text, notes = row["recompute"].strip(), row["notes"]
    if text in ("", "not stated"):
        assumptions.append("recompute not stated: none")
        return "none"
    modules = re.search(r"recompute modules=([\w+]+)", notes)
    if text == "selective" and modules and "core_attn" not in modules.group(1):
        assumptions.append(f"recomputed modules {modules.group(1)} (element-wise) priced as no recompute")
        return "none"
    if text not in ("none", "selective", "full"):
        raise Skip(f"recompute '{text}' not expressible")
    return text


def config_of(row: dict, model: ModelSpec, stack: str, assumptions: list[str]) -> ParallelConfig:
    tp, pp, cp, ep = _int(row, "tp"), _int(row, "pp"), _int(row, "cp", 1), _int(row, "ep", 1)
    etp = _int(row, "etp", tp)
    if ep > 1 and etp != tp:
        raise Skip(f"expert TP {etp} with tp {tp}: ppplan prices expert TP = tp")
    schedule = SCHEDULES.get(row["schedule"].strip())
    if schedule is None:
        raise Skip(f"schedule '{row['schedule']}' is not a ppplan schedule")
    v = _int(row, "v", 0)
    if not v:
        v = 1
        if schedule == "interleaved-1f1b":
            raise Skip("interleaved schedule without its virtual stages")
        if pp > 1:
            assumptions.append("v = 1 (not stated)")
    if schedule == "interleaved-1f1b" and v == 1:
        schedule = "1f1b"
    dp, mbs, batch = _int(row, "dp"), _int(row, "mbs"), _int(row, "global_batch")
    zero = _int(row, "zero", 1)
    if not row.get("zero"):
        assumptions.append("distributed optimizer (ZeRO-1), the recipes' default")
    sp_text = row.get("sequence_parallel", "").strip().lower()
    sp = sp_text == "true" if sp_text in ("true", "false") else tp > 1
    if not sp_text and tp > 1:
        assumptions.append("sequence parallelism with tp > 1 (the recipes' default)")
    if batch % (dp * mbs):
        raise Skip(f"global batch {batch} not divisible by dp*mbs = {dp * mbs}")
    return ParallelConfig(stack=stack, tp=tp, cp=cp, ep=ep, pp=pp, dp=dp, v=v, mbs=mbs, num_microbatches=batch // (dp * mbs),
                          schedule=schedule, recompute=_recompute(row, assumptions), sequence_parallel=sp, zero=zero,
                          stage_layers=uniform_split(model.num_layers, pp * v) if model.num_layers >= pp * v else [1])


def price(row: dict) -> Priced:
    if "INCONSISTENT" in row["notes"] + row["derived"]:
        raise Skip("the source's degrees are inconsistent (flagged INCONSISTENT)")
    cluster_name = CLUSTER_OF_GPU.get(row["gpu"])
    if cluster_name is None:
        raise Skip(f"no cluster preset for GPU '{row['gpu']}'")
    stack_name = row["stack"]
    if stack_name not in STACKS:
        raise Skip(f"no stack preset for '{stack_name}'")
    metric = row["metric"]
    if metric not in ("step_time_s", "tokens_per_s_per_gpu"):
        raise Skip(f"metric '{metric}' (TFLOP/s counted by the source's own FLOP formula)")
    assumptions: list[str] = []
    model = model_of(row, assumptions)
    cfg = config_of(row, model, stack_name, assumptions)
    precision = row["precision"].lower().replace("mxfp8", "fp8")
    if precision != row["precision"].lower():
        assumptions.append("MXFP8 priced as fp8")
    train = TrainSpec(global_batch=cfg.num_microbatches * cfg.dp * cfg.mbs, seq_len=model.seq_len, precision=precision)
    stack, cluster = load_stack(stack_name), load_cluster(cluster_name)
    problems = config_violations(model, train, cfg.world_size, cfg, stack)
    if cfg.world_size != _int(row, "n_gpus"):
        problems.insert(0, f"tp*cp*pp*dp = {cfg.world_size} but the row has {row['n_gpus']} GPUs")
    if problems:
        raise Skip(problems[0])
    imbalance = None
    if "force-balanced" in row["notes"]:
        imbalance = 1.0
        assumptions.append("force-balanced routing: the busiest expert-parallel rank carries the mean load")
    layers = RooflineTimes(model, cluster, precision, stack=stack, expert_imbalance=imbalance)
    est = estimate(model, cluster, train, cfg, layers, stack=stack)
    measured = float(row["value"])
    if metric == "step_time_s":
        predicted = est.step_time_s
    else:
        predicted = est.tokens_per_s / cfg.world_size
    return Priced(row["run"], row["source_id"], row["gpu"], category(row), metric, predicted, measured, tuple(assumptions))


def _groups(rows: list[Priced], key) -> dict:
    out: dict = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return out


def mape(rows: list[Priced]) -> float:
    return statistics.fmean(abs(r.error_pct) for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="the corpus in its v2 columns")
    parser.add_argument("--verbose", action="store_true", help="every priced row with its assumptions")
    args = parser.parse_args()
    rows = list(csv.DictReader(args.runs.open(newline="", encoding="utf-8-sig")))
    if "num_experts" not in rows[0]:
        raise SystemExit(f"{args.runs} has no v2 columns (num_experts, cp, ep): pass --runs with the v2 corpus")
    chosen = [r for r in rows if category(r) and (r["num_experts"].strip() not in ("", "0", "1") or _int(r, "cp", 1) > 1)]
    priced: list[Priced] = []
    skipped: Counter = Counter()
    for row in chosen:
        try:
            priced.append(price(row))
        except Skip as why:
            skipped[(category(row), str(why))] += 1
    print(f"{len(chosen)} rows with experts or cp > 1 in {args.runs.name}; {len(priced)} priced, {sum(skipped.values())} skipped")
    print("\nheld-out error by category (a-priori constants; error = (predicted - measured) / measured)")
    for cat in ("moe", "cp", "moe+cp"):
        group = [r for r in priced if r.category == cat]
        if group:
            signed = statistics.median(r.error_pct for r in group)
            print(f"  {cat:<7} {len(group):>4} rows  MAPE {mape(group):5.1f} %  median signed {signed:+6.1f} %")
    print(f"  {'all':<7} {len(priced):>4} rows  MAPE {mape(priced):5.1f} %")
    print("\nby category and GPU")
    for (cat, gpu), group in sorted(_groups(priced, lambda r: (r.category, r.gpu)).items()):
        signed = statistics.median(r.error_pct for r in group)
        print(f"  {cat:<7} {gpu:<9} {len(group):>4} rows  MAPE {mape(group):5.1f} %  median signed {signed:+6.1f} %")
    print("\nby source")
    for source, group in sorted(_groups(priced, lambda r: r.source).items(), key=lambda kv: -len(kv[1])):
        cats = ",".join(sorted({r.category for r in group}))
        print(f"  {source:<24} {len(group):>4} rows ({cats})  MAPE {mape(group):5.1f} %")
    print("\nworst rows")
    for r in sorted(priced, key=lambda r: -abs(r.error_pct))[:10]:
        print(f"  {r.error_pct:+7.1f} %  {r.category:<7} {r.run}  ({r.metric} {r.predicted:.4g} vs {r.measured:.4g})")
    print("\nskipped, by reason")
    for (cat, why), n in skipped.most_common():
        print(f"  {n:>4}  {cat:<7} {why}")
    if args.verbose:
        print("\nevery priced row")
        for r in priced:
            print(f"  {r.error_pct:+7.1f} %  {r.run}: {'; '.join(r.assumptions) or 'no assumption'}")


if __name__ == "__main__":
    main()
