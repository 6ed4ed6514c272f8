"""What the execution policy costs, before and after it left the model, in one interleaved run.

    git worktree add /tmp/resflax-before 3b7c9a3 && cp resflax/kernels/_onednn_conv*.so \\
        /tmp/resflax-before/resflax/kernels/
    python experiments/benchmarks/cpu/ops_policy.py --before /tmp/resflax-before

Each implementation runs in its own process, round by round (A B C ... A B C ...), as
`cpu/train_step.py` does, so that the machine's drift (a 2-core VM's neighbours moved a
ResNet-50 step from 7 s to 11 s between two runs of the same code here) spreads over all of
them; ratios are taken within the run. The ResNet-50 float32 SGD step of
`harness/step_impls.py`, batch 32 at 224x224:

    before           the old checkout's `resflax` (what `python -m resflax.main` ran: the
                     recipe's process settings and the model's own compiler fields)
    resflax          this checkout's CLI: process settings and ops=auto()
    resflax_lib_auto your own code, one argument: create_model(name, ops=auto()), nothing else
    resflax_plain    the CLI's process settings, ops=plain()
    resflax_lib      your own code with defaults: create_model(name), nothing else
    torchvision_cl   torchvision channels_last, the reference of the CPU target
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from experiments.benchmarks.harness.common import (
    RESULTS,
    environment,
    fmt,
    median,
    run_child,
    write_result,
)

IMPLS = ("before", "resflax", "resflax_lib_auto", "resflax_plain", "resflax_lib",
         "torchvision_cl")  # fmt: skip
LABELS = {
    "before": "before: CLI (3b7c9a3)",
    "resflax": "after: CLI, ops=auto()",
    "resflax_lib_auto": "after: library, ops=auto() only",
    "resflax_plain": "after: CLI settings, ops=plain()",
    "resflax_lib": "after: library defaults (plain)",
    "torchvision_cl": "torchvision channels_last",
}
CHILD = "experiments/benchmarks/harness/step_impls.py"
OLD_CHILD = "experiments/benchmarks/step_impls.py"  # its path before the regrouping


def child(impl: str, model: str, batch: int, steps: int, before: Path, timeout: float) -> dict:
    # Children start from XLA's defaults; each resflax variant adds what it adds.
    env = {"XLA_FLAGS": "", "RESFLAX_MODEL_OVERRIDES": "{}", "RESFLAX_OPS": ""}
    if impl == "before":
        args = [OLD_CHILD, "resflax", model, str(batch), str(steps)]
        return run_child(args, env, timeout, root=before)
    return run_child([CHILD, impl, model, str(batch), str(steps)], env, timeout)


def table(rows: list[dict], batch: int) -> str:
    step = {i: median([t for r in rows if r["impl"] == i for t in r.get("step_s", [])])
            for i in IMPLS}  # fmt: skip
    ref = step["torchvision_cl"]
    lines = [
        "| implementation | s/step | img/s | vs torchvision channels_last | vs before |",
        "|---|---:|---:|---:|---:|",
    ]
    for impl in IMPLS:
        s = step[impl]
        img = batch / s if s else None
        vs_tv = f"{ref / s:.2f}x" if s and ref else "—"
        vs_before = f"{step['before'] / s:.2f}x" if s and step["before"] else "—"
        lines.append(f"| {LABELS[impl]} | {fmt(s)} | {fmt(img)} | {vs_tv} | {vs_before} |")
    errors = [f"- {r['impl']} round {r['round']}: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines + (["", *errors] if errors else []))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="a checkout of 3b7c9a3 with its kernel built")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", default=str(RESULTS / "ops_policy_run.md"))
    ap.add_argument("--rows", default=str(RESULTS / "ops_policy_rows.jsonl"))
    args = ap.parse_args(argv)
    before = Path(args.before).resolve()
    if not (before / OLD_CHILD).exists():
        raise SystemExit(f"--before {before}: no {OLD_CHILD} there (a checkout of 3b7c9a3?)")
    rows = []
    for r in range(args.rounds):
        for impl in IMPLS:
            row = child(impl, args.model, args.batch, args.steps, before, args.timeout)
            rows.append({**row, "impl": impl, "round": r})
            print(json.dumps(rows[-1]), flush=True)
    Path(args.rows).write_text("".join(json.dumps(row) + "\n" for row in rows))
    intro = (
        f"ResNet-50 float32 SGD train step, batch {args.batch} at 224x224, medians over "
        f"{args.rounds} interleaved rounds x {args.steps} timed steps after 3 warm-up steps per "
        f"process. Machine: {environment(('jax', 'jaxlib', 'flax', 'torch', 'torchvision'))}."
    )
    command = "python experiments/benchmarks/cpu/ops_policy.py " + " ".join(argv or sys.argv[1:])
    write_result(Path(args.out), "The execution policy: one interleaved run", command, intro,
                 table(rows, args.batch))  # fmt: skip


if __name__ == "__main__":
    main()
