"""Does the training loop keep the device busy? Throughput of the full CLI run
(`python -m resflax.main`, fake data, as `make train CONFIG=experiments/configs/fake_data.py`)
beside the bare jitted train step of the same model and batch, each in its own process.

    python experiments/benchmarks/cpu/loop_overhead.py      # make bench-loop; ~3 min on 2 cores

Both are throughput: the loop's rate is images over wall time per log window (median over
the windows after the first, which holds the compile), the bare step's is images over the
summed time of its timed steps (one rate per process). Both therefore include the occasional
slow step (XLA:CPU runs here take 1.5-2.5x the median every few steps), which a median step
time would hide. Medians over rounds. Target (issue 7): within 5%.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from experiments.benchmarks.harness.common import (
    RESULTS,
    environment,
    median,
    run_child,
    write_result,
)
from experiments.benchmarks.harness.step_impls import recipe_flags

CHILD = "experiments/benchmarks/harness/step_impls.py"


def loop_rate(model: str, batch: int, steps: int, log_every: int) -> float | str:
    with tempfile.TemporaryDirectory() as workdir:
        args = [
            "-m", "resflax.main", f"--config=experiments/configs/fake_data.py:{model}",
            f"--workdir={workdir}", f"--config.batch_size={batch}",
            f"--config.num_steps={steps}", f"--config.log_every_steps={log_every}",
            f"--config.xla_cpu_flags={recipe_flags(model)}",  # as the bare step's
        ]  # fmt: skip
        # run_child wants JSON on the last line: print the summary after the run.
        code = (
            "import runpy, sys, json, pathlib; sys.argv = ['resflax.main'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('resflax.main', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            f"print(json.dumps(json.loads(pathlib.Path({workdir!r}, 'summary.json').read_text())))"
        )
        r = run_child(["-c", code, *args[2:]], {"XLA_FLAGS": ""}, timeout=1200)
    return r.get("images_per_sec") or r.get("error", "no rate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20:128:60,resnet56:128:30",
                    help="model:batch:steps,...")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "loop_overhead.md"))
    args = ap.parse_args()
    specs = [(m, int(b), int(s)) for m, b, s in (x.split(":") for x in args.models.split(","))]
    loop: dict[str, list[float]] = {}
    bare: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for model, batch, steps in specs:
            rate = loop_rate(model, batch, steps, log_every=max(steps // 6, 1))
            print(json.dumps({"model": model, "loop_img_s": rate}), flush=True)
            if isinstance(rate, float):
                loop.setdefault(model, []).append(rate)
            # The bare step as the CLI sets it up: recipe settings, ops=auto() (as the loop's).
            env = {"XLA_FLAGS": "", "RESFLAX_MODEL_OVERRIDES": "{}", "RESFLAX_OPS": ""}
            r = run_child([CHILD, "resflax", model, str(batch), str(steps // 2)], env)
            print(json.dumps(r), flush=True)
            if "step_s" in r:
                bare.setdefault(model, []).append(batch * len(r["step_s"]) / sum(r["step_s"]))
    lines = ["| model | batch | bare step (img/s) | `resflax.main` loop (img/s) | loop / bare |"]
    lines.append("|---|---:|---:|---:|---:|")
    verdicts = []
    for model, batch, _ in specs:
        b, lp = median(bare.get(model, [])), median(loop.get(model, []))
        ratio = lp / b if b and lp else None
        lines.append(
            f"| {model} | {batch} | {b or float('nan'):.1f} | {lp or float('nan'):.1f} "
            f"| {f'{ratio:.3f}' if ratio else '—'} |"
        )
        if ratio:
            verdicts.append(
                f"- {model}: {'met' if ratio >= 0.95 else 'NOT met'} (loop within 5% of the "
                f"bare step): {100 * (1 - ratio):+.1f}% slower"
            )
    text = "\n".join([*lines, "", "Target (issue 7):", "", *verdicts])
    print(text)
    intro = __doc__.split("\n\n", 2)[2].strip() + f"\n\nMachine: {environment()}."
    cmd = "python experiments/benchmarks/cpu/loop_overhead.py " + " ".join(sys.argv[1:])
    write_result(Path(args.out), "Training-loop overhead", cmd.strip(), intro, text)


if __name__ == "__main__":
    main()
