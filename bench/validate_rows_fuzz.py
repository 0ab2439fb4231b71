"""Malformed corpus rows through ``ppplan validate`` (issue 12, bad input): each field of two shipped rows (an
llm-foundry MPT-7B row and a BigScience tr11 row, whose sweep has memory readings) is set in turn to an unreadable,
negative, zero, non-finite, fractional, empty or huge value, or a name no preset has, and their notes to a stated
pipeline layout that cannot be read or expands without bound; the mutated row is written beside an unmutated one to
a CSV and ``ppplan validate --runs`` runs on it in a fresh process. The contract: exit 0, the row priced or a listed
skip with its reason, never a traceback. Prints one line per case and the count; never asserts (the unit tests hold
the cases it found: ``test_published_runs.py`` source_id and the two layouts, ``test_allocator_fit.py`` one-sweep CSV).

Run: python bench/validate_rows_fuzz.py [--fit] [substring ...]   (--fit: with the family fit, slower)
"""

import csv
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "profiles" / "calibration" / "public_runs.csv"
NUMERIC = ["tp", "pp", "dp", "mbs", "global_batch", "layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab",
           "seq_len", "n_gpus", "gpus_per_node", "value", "peak_memory_gib", "v", "cp", "ep", "zero", "params_b",
           "num_experts", "experts_per_token", "etp"]  # fmt: skip
NUMBERS = ["abc", "-1", "0", "nan", "inf", "1e400", "2.5", "", "99999999999999999999"]
TEXT = ["gpu", "stack", "schedule", "recompute", "precision", "metric", "activation", "sequence_parallel", "source_id",
        "sweep", "run"]  # fmt: skip
WORDS = ["", "bogus", "\U0001f4a5", " "]
# notes a row's pipeline layout is read from (planner.trust.published_runs.STATED_LAYOUT): unreadable, an index past
# any integer, 2^60 layers by nesting
NOTES = ["layout |", "layout Et|(tt|*6tL", "layout Et|t*99999999999999999999|L", "layout E|" + "(" * 60 + "t" + ")*2" * 60 + "|L"]
BASES = {"mpt": "MPT-7b seq2048 8xa100_40gb", "tr11": "tr11 181B h14336 L72 heads64 384GPU TP8 PP6 DP8 MBS1"}


def cases(rows: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """{case name: the CSV's rows}: each mutation of each base row, beside the unmutated MPT row."""
    bases = {tag: next(r for r in rows if r["run"].startswith(prefix)) for tag, prefix in BASES.items()}
    good = bases["mpt"]
    out: dict[str, list[dict[str, str]]] = {}
    for tag, base in bases.items():
        for field, values in [(f, NUMBERS) for f in NUMERIC] + [(f, WORDS) for f in TEXT] + [("notes", NOTES)]:
            for value in values:
                out[f"{tag} {field}={value!r}"] = [{**base, field: value}, good]
    return out


def run_case(rows: list[dict[str, str]], fields: list[str], fit: bool, folder: Path) -> tuple[bool, int, str]:
    path = folder / "runs.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    argv = [sys.executable, "-c", "from planner.cli.main import main; main()", "validate", "--runs", str(path)]
    done = subprocess.run([*argv, *([] if fit else ["--no-fit"])], capture_output=True, text=True, timeout=600, cwd=ROOT)
    last = (done.stderr.strip().splitlines() or [""])[-1][:160]
    return done.returncode == 0 and "Traceback" not in done.stderr, done.returncode, last


if __name__ == "__main__":
    fit = "--fit" in sys.argv
    only = [a for a in sys.argv[1:] if a != "--fit"]
    with CORPUS.open(newline="") as fh:
        reader = csv.DictReader(fh)
        corpus, fields = list(reader), list(reader.fieldnames or [])
    results = []
    with tempfile.TemporaryDirectory(prefix="validate-fuzz-") as tmp:
        for name, rows in cases(corpus).items():
            if only and not any(o in name for o in only):
                continue
            ok, code, last = run_case(rows, fields, fit, Path(tmp))
            results.append(ok)
            print(f"{'ok  ' if ok else 'FAIL'} {name[:60]:<60} code={code} {last}", flush=True)
    print(f"\n{sum(results)}/{len(results)} cases: exit 0, no traceback")
