"""Whether XLA:CPU still needs the barrier flag that `resflax.runtime.cpu_flags` adds, measured
with the jax of the interpreter that runs this file:

    .venv/bin/python experiments/benchmarks/cpu/barrier_flag.py
    .venv-newest/bin/python experiments/benchmarks/cpu/barrier_flag.py   # the newest jax

`--xla_disable_hlo_passes=cse_barrier_expander` keeps optimisation barriers, which XLA:CPU
otherwise deletes early (resflax/runtime/xla_flags.py). Two things rest on them:

    remat      a tiny bottleneck ResNet's gradient, remat=False and True, with and without
               the flag: the compiled temporary bytes (remat saves memory only if the
               recomputation is not merged back into the forward pass)
    the step   ResNet-50's float32 SGD step, batch 32 at 224x224, as the CLI runs it (recipe
               process settings, ops=auto(), whose relu_stored stores ReLU's output behind a
               barrier), with and without the flag: s/step and temporary bytes

Rows are appended to experiments/results/barrier_flag_rows.jsonl (one per jax version and
measurement) and the table over every jax version measured is rewritten in barrier_flag.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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

BARRIER = "--xla_disable_hlo_passes=cse_barrier_expander"
REMAT_CHILD = """
import json, sys
from resflax.runtime.xla_flags import apply_cpu_flags
apply_cpu_flags(sys.argv[1])
import jax
from resflax.models import ResNet
x = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
out = {}
for remat in (False, True):
    m = ResNet(stage_sizes=(3, 3), block="bottleneck", widths=(8, 16), stem="cifar",
               stem_width=8, num_classes=5, remat=remat)
    v = m.init(jax.random.key(0), x)
    loss = lambda p: m.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])[0].sum()
    c = jax.jit(jax.grad(loss)).lower(v["params"]).compile()
    out[str(remat)] = c.memory_analysis().temp_size_in_bytes
print(json.dumps(out))
"""


def remat_row(flags: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", REMAT_CHILD, flags], env=env,
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    temp = json.loads(done.stdout.strip().splitlines()[-1])
    return {"plain_temp": temp["False"], "remat_temp": temp["True"]}


def step_rows(rounds: int, steps: int) -> list[dict]:
    rows = []
    harness = str(Path(__file__).resolve().parents[1] / "harness" / "step_impls.py")
    for r in range(rounds):
        for impl, flag in (("resflax", True), ("resflax_no_barrier", False)):
            row = run_child([harness, impl, "resnet50", "32", str(steps)])
            rows.append({"kind": "step", "barrier": flag, "round": r, **row})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| jax | remat temp / plain temp, with flag | without flag | ResNet-50 step s, with "
        "flag | without flag | step temp GB, with | without |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for version in sorted({r["jax"] for r in rows}):
        mine = [r for r in rows if r["jax"] == version]

        def remat(flag: bool, mine=mine) -> str:
            got = [r for r in mine if r["kind"] == "remat" and r["barrier"] == flag]
            return f"{got[-1]['remat_temp'] / got[-1]['plain_temp']:.2f}" if got else "—"

        def step(flag: bool, key: str, mine=mine) -> float | None:
            got = [r for r in mine if r["kind"] == "step" and r["barrier"] == flag and key in r]
            if key == "temp_bytes":
                return got[-1][key] / 1e9 if got else None
            return median([t for r in got for t in r[key]]) if got else None

        out.append(
            f"| {version} | {remat(True)} | {remat(False)} | {fmt(step(True, 'step_s'))} | "
            f"{fmt(step(False, 'step_s'))} | {fmt(step(True, 'temp_bytes'))} | "
            f"{fmt(step(False, 'temp_bytes'))} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-step", action="store_true", help="only the remat rows (seconds)")
    ap.add_argument("--out", default=str(RESULTS / "barrier_flag.md"))
    ap.add_argument("--rows", default=str(RESULTS / "barrier_flag_rows.jsonl"))
    args = ap.parse_args(argv)
    import jax

    where = {"jax": jax.__version__, "python": sys.version.split()[0],
             "machine": environment(("jax", "jaxlib"))}  # fmt: skip
    new = [{"kind": "remat", "barrier": flag, **where, **remat_row(BARRIER if flag else "")}
           for flag in (True, False)]  # fmt: skip
    if not args.no_step:
        new += [{**where, **row} for row in step_rows(args.rounds, args.steps)]
    rows_path = Path(args.rows)
    with rows_path.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in new)
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    intro = (
        "Whether XLA:CPU still needs the barrier flag (`" + BARRIER + "`) that "
        "`resflax.runtime.cpu_flags` adds, per jax version. Remat: the compiled temporary "
        "bytes of a tiny bottleneck ResNet's gradient with remat over those without (below 1: "
        "remat saves memory). Step: ResNet-50 float32 SGD, batch 32 at 224x224, the CLI's "
        "process settings and ops=auto(), medians over the rounds' timed steps. Rows: "
        f"[{rows_path.name}]({rows_path.name}); machines: "
        + "; ".join(sorted({f"jax {r['jax']}: {r['machine']}" for r in rows}))
        + "."
    )
    command = "python experiments/benchmarks/cpu/barrier_flag.py " + " ".join(argv or sys.argv[1:])
    write_result(Path(args.out), "The XLA:CPU barrier flag, per jax version", command.strip(),
                 intro, table(rows))  # fmt: skip


if __name__ == "__main__":
    main()
