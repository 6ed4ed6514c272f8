"""Memory and time of the resnet50 train step (batch 32, 224x224, float32) with and without
rematerialisation (`remat=True`: each block's activations are recomputed in the backward
pass; `remat_policy` chooses what is kept).

    python experiments/benchmarks/cpu/memory.py            # make bench-memory; ~4 min on 2 cores
    python experiments/benchmarks/cpu/memory.py --ops plain   # under another execution policy

Memory is XLA's compiled temporary-buffer size (`compiled.memory_analysis()`), the part that
activations occupy; parameters and optimizer state are the same in every variant. Each
variant runs in its own process (harness/step_impls.py's "resflax": the recipe's process
settings, as the CLI), interleaved over rounds; step time is the median. The execution policy
is --ops (default auto, the CLI's: `harness.common.parse_ops`, e.g. "auto,conv=lax").
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
    median,
    parse_ops_spec,
    run_child,
    write_result,
)

VARIANTS = {
    "no remat": {},
    "remat (save nothing)": {"remat": True},
    # Under auto() on CPU 1x1 convolutions are matrix products (ops conv="dot", or "onednn"
    # whose 1x1s are products too): "dots" keeps their outputs.
    "remat (policy dots)": {"remat": True, "remat_policy": "dots"},
}
CHILD = "experiments/benchmarks/harness/step_impls.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ops", default="auto", help="execution policy, e.g. auto,conv=dot")
    ap.add_argument("--out", default=str(RESULTS / "memory.md"))
    args = ap.parse_args()
    try:
        parse_ops_spec(args.ops)
    except ValueError as e:
        sys.exit(str(e))
    rows = []
    for _ in range(args.rounds):
        for name, overrides in VARIANTS.items():
            env = {"XLA_FLAGS": "", "RESFLAX_MODEL_OVERRIDES": json.dumps(overrides),
                   "RESFLAX_OPS": args.ops}  # fmt: skip
            r = run_child(
                [CHILD, "resflax", args.model, str(args.batch), str(args.steps)], env, timeout=900
            )
            r["variant"] = name
            print(json.dumps(r), flush=True)
            rows.append(r)
    lines = [
        "| variant | temp memory (GB) | x no remat | step (s) | x no remat |",
        "|---|---:|---:|---:|---:|",
    ]
    stats = {}
    for name in VARIANTS:
        ok = [r for r in rows if r["variant"] == name and "error" not in r]
        if not ok:
            err = next(r["error"] for r in rows if r["variant"] == name)
            lines.append(f"| {name} | — | — | — | {err} |")
            continue
        stats[name] = (ok[0]["temp_bytes"] / 1e9, median([t for r in ok for t in r["step_s"]]))
    base = stats.get("no remat")
    for name, (mem, step) in stats.items():
        rm = f"{mem / base[0]:.2f}" if base else "—"
        rs = f"{step / base[1]:.2f}" if base else "—"
        lines.append(f"| {name} | {mem:.2f} | {rm} | {step:.2f} | {rs} |")
    verdicts = []
    for name in ("remat (save nothing)", "remat (policy dots)"):
        if base and name in stats:
            m, t = stats[name][0] / base[0], stats[name][1] / base[1]
            ok = m <= 0.4 and t <= 1.35
            verdicts.append(
                f"- {name}: {'met' if ok else 'NOT met'} (target temp <= 0.4x, step <= 1.35x): "
                f"{m:.2f}x memory, {t:.2f}x time"
            )
    text = "\n".join([*lines, "", "Targets (issue 7):", "", *verdicts])
    print(text)
    from resflax.ops import Ops

    # The policy the children resolved (auto's choice on this machine), as the CLI logs it.
    ops_used = next((Ops(**r["execution"]["ops"]).describe() for r in rows if "execution" in r),
                    None)  # fmt: skip
    intro = __doc__.split("\n\n", 2)[2].strip()
    intro += (
        f"\n\nMachine: {environment()}. {args.model}, batch {args.batch}, "
        f"{args.rounds} rounds of {args.steps} timed steps, ops {args.ops!r}"
        + (f" ({ops_used})." if ops_used else ".")
    )
    cmd = "python experiments/benchmarks/cpu/memory.py " + " ".join(sys.argv[1:])
    write_result(Path(args.out), "Train-step memory with and without remat", cmd.strip(), intro,
                 text)  # fmt: skip


if __name__ == "__main__":
    main()
