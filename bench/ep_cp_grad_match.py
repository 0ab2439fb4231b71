"""Expert and context parallelism against the single-process reference (issue 13): one table row
per plan of ``tests/launch/runtime/test_grad_match_dist.py``, with the relative error of the step's
loss and the largest per-parameter gradient error (``tests/launch/runtime/grad_match.py``: per
parameter max|g - g_ref| / max(max|g_ref|, 1e-3 x the model's largest |g_ref|)) and the parameter
it belongs to, and the largest over the router and expert weights (MoE). One torchrun job per world size (gloo, fp32, 2 CPU cores here). Prints; never asserts.

Run: python bench/ep_cp_grad_match.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.launch.runtime.grad_match import gradient_errors  # noqa: E402 (after the path set-up above)
from tests.launch.runtime.runtime_plans import write_plan  # noqa: E402
from tests.launch.runtime.test_grad_match_dist import GROUPS  # noqa: E402


def run_world(world: int, tmp: Path) -> dict[str, Path]:
    args, outputs = [], {}
    for i, (name, plan) in enumerate(GROUPS[world].items()):
        outputs[name] = tmp / f"w{world}-out{i}"
        args += ["--plan", str(write_plan(plan, tmp / f"w{world}-plan{i}.json")), "--out", str(outputs[name])]
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", str(world),
            "--max-restarts", "0", "-m", "tests.launch.runtime.grad_worker", *args]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return outputs


def main() -> None:
    print(f"{'case':<80} {'world':>5} {'loss rel err':>12} {'grad rel err':>12} {'MoE rel err':>11}  worst parameter")
    with tempfile.TemporaryDirectory(prefix="ppplan-grad-match-") as tmp:
        for world in sorted(GROUPS):
            for name, out in run_world(world, Path(tmp)).items():
                loss_error, errors = gradient_errors(GROUPS[world][name], out)
                worst = max(errors, key=errors.__getitem__)
                moe = [e for n, e in errors.items() if ".experts." in n or ".router." in n]
                moe_text = f"{max(moe):.1e}" if moe else "-"
                print(f"{name:<80} {world:>5} {loss_error:>12.1e} {errors[worst]:>12.1e} {moe_text:>11}  {worst} ({len(errors)} parameters)")


if __name__ == "__main__":
    main()
