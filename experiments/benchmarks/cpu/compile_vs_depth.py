"""Train-step compile time and steady-state step time versus depth, unrolled and scanned.

    python experiments/benchmarks/cpu/compile_vs_depth.py --out experiments/results/compile.md

For each CIFAR ResNet (He et al. 2015 §4.2) and each stage layout, one process per measurement
(so caches and memory of one run do not colour the next) compiles a train step (forward,
backward, BatchNorm statistics and an SGD update, batch 128 at 32x32) and times it.
A layout is model fields (scan, remat) and changes to the execution policy; the policy they
change is --ops (default auto: `resflax.ops.auto(scan=...)` for the layout, the CLI's; see
`harness.common.parse_ops`). No process settings: XLA's default flags.
Prints a table and writes it, with the machine and versions, to --out.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

# layout -> (model fields, changes to the --ops policy as "field=value,...").
LAYOUTS = {
    "unrolled": ({}, ""),
    "scan": ({"scan": True}, ""),  # a plain loop: one block per trip
    "scan_unroll2": ({"scan": True, "scan_unroll": 2}, ""),
    "scan_unroll4": ({"scan": True, "scan_unroll": 4}, ""),
    "scan_remat": ({"scan": True, "remat": True}, ""),
    "unrolled_canonical_grad": ({}, "conv=canonical"),
    # The naive scan: JAX's own convolution gradients inside the loop (see README, "scan").
    "scan_lax_grad": ({"scan": True}, "conv=lax"),
    # The CPU formulation forced on other backends, to compare.
    "scan_canonical_grad": ({"scan": True}, "conv=canonical"),
}


def layout_ops(ops: str, layout: str) -> str:
    """The policy string of `layout` under the base policy `ops` (its changes win)."""
    return ",".join(x for x in (ops, LAYOUTS[layout][1]) if x)


def measure(model_name: str, layout: str, batch: int, steps: int, ops: str = "auto") -> dict:
    """Runs in a child process: compile once, then time `steps` steps."""
    import jax
    import jax.numpy as jnp

    from experiments.benchmarks.harness.common import parse_ops
    from resflax.models import create_model

    fields = LAYOUTS[layout][0]
    policy = parse_ops(layout_ops(ops, layout), scan=bool(fields.get("scan", False)))
    model = create_model(model_name, ops=policy, **fields)
    x = jax.random.normal(jax.random.key(0), (batch, 32, 32, 3))
    y = jax.random.randint(jax.random.key(1), (batch,), 0, 10)
    # Block: init runs asynchronously and would otherwise overlap the compile being timed.
    variables = jax.block_until_ready(model.init(jax.random.key(2), x[:2]))

    def train_step(params, stats, x, y):
        def loss_fn(p):
            logits, upd = model.apply(
                {"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
            )
            onehot = jax.nn.one_hot(y, logits.shape[-1])
            return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1)), upd

        (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
        return params, upd["batch_stats"], loss

    step = jax.jit(train_step, donate_argnums=(0, 1))
    params, stats = variables["params"], variables["batch_stats"]
    t0 = time.perf_counter()
    compiled = step.lower(params, stats, x, y).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    row = {"model": model_name, "layout": layout, "ops": policy.describe(), "compile_s": compile_s}
    row["temp_gb"] = mem.temp_size_in_bytes / 1e9
    if steps == 0:
        return row
    params, stats, loss = compiled(params, stats, x, y)  # warm-up
    jax.block_until_ready(loss)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, stats, loss = compiled(params, stats, x, y)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - t0)
    return {**row, "step_s": statistics.median(times), "loss_finite": bool(jnp.isfinite(loss))}


def run_child(model: str, layout: str, batch: int, steps: int, timeout: float, ops: str) -> dict:
    cmd = [sys.executable, __file__, "--child", model, layout, str(batch), str(steps), ops]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return {"model": model, "layout": layout, "error": f"over {timeout:.0f} s"}
    except subprocess.CalledProcessError as e:
        last = (e.stderr.strip().splitlines() or [f"exit code {e.returncode}"])[-1]
        if e.returncode < 0:
            last = f"killed by signal {-e.returncode} (out of memory?)"
        return {"model": model, "layout": layout, "error": last[:120]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def environment() -> str:
    import jax

    dev = jax.devices()[0]
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("jax", "jaxlib", "flax"))
    return (
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, backend {jax.default_backend()} ({dev.device_kind}), {versions}"
    )


def _medians(rows: list[dict]) -> list[dict]:
    """One row per (model, layout), in first-seen order: medians over repeated measurements."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["layout"]), []).append(r)
    out = []
    for (model, layout), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            out.append(rs[-1])
            continue
        row = {"model": model, "layout": layout}
        for key in ("compile_s", "temp_gb", "step_s"):
            values = [r[key] for r in ok if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        out.append(row)
    return out


def _depth(row: dict) -> int:
    from resflax.models import get_entry

    return sum(get_entry(row["model"]).config["stage_sizes"])


def table(rows: list[dict]) -> str:
    """Rows with timed steps get step time and its ratio to the unrolled step of the same
    model; compile-only rows (--steps 0) get their compile time and its ratio to the same
    layout's shallowest model."""
    lines = [
        "| model | layout | compile (s) | compile / shallowest | step (s) | step / unrolled "
        "| temp memory (GB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    rows = _medians(rows)
    base = {r["model"]: r["step_s"] for r in rows if r["layout"] == "unrolled" and r.get("step_s")}
    shallowest: dict[str, dict] = {}
    for r in rows:
        known = shallowest.get(r["layout"])
        if "error" not in r and (known is None or _depth(r) < _depth(known)):
            shallowest[r["layout"]] = r
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['layout']} | — | — | — | — | {r['error']} |")
            continue
        c0 = shallowest[r["layout"]]["compile_s"]
        step = r.get("step_s")
        ratio = f"{step / base[r['model']]:.2f}" if step and r["model"] in base else "—"
        lines.append(
            f"| {r['model']} | {r['layout']} | {r['compile_s']:.1f} | {r['compile_s'] / c0:.2f} "
            f"| {f'{step:.3f}' if step else '—'} | {ratio} | {r['temp_gb']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, layout, batch, steps = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        ops = sys.argv[6] if len(sys.argv) > 6 else "auto"
        print(json.dumps(measure(model, layout, batch, steps, ops)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,resnet56,resnet110,resnet1202")
    ap.add_argument("--layouts", default="unrolled,scan,scan_remat")
    ap.add_argument("--ops", default="auto", help="base execution policy, e.g. plain or auto,...")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="timed steps; 0 = compile only")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    ap.add_argument("--repeat", type=int, default=1, help="measure everything N times, interleaved")
    ap.add_argument("--out", default=None, help="markdown file to append the table to")
    ap.add_argument(
        "--rows", default=None, help="JSON-lines file: each measured row is appended to it"
    )
    ap.add_argument(
        "--table-from", default=None, help="only print/write the table of a --rows file"
    )
    args = ap.parse_args()
    if args.table_from:
        with open(args.table_from) as f:
            text = table([json.loads(line) for line in f if line.strip()])
        print(text)
        if args.out:
            with open(args.out, "a") as f:
                f.write("\n" + text + "\n")
        return
    layouts = args.layouts.split(",")
    bad = [x for x in layouts if x not in LAYOUTS]
    if bad:
        sys.exit(f"unknown layout(s) {bad}; valid: {list(LAYOUTS)}")
    from experiments.benchmarks.harness.common import parse_ops_spec

    try:
        for layout in layouts:
            parse_ops_spec(layout_ops(args.ops, layout))
    except ValueError as e:
        sys.exit(str(e))
    rows = []
    plan = [(m, lay) for _ in range(args.repeat) for m in args.models.split(",") for lay in layouts]
    for model, layout in plan:
        r = run_child(model, layout, args.batch, args.steps, args.timeout, args.ops)
        print(json.dumps(r), flush=True)
        rows.append(r)
        if args.rows:
            with open(args.rows, "a") as f:
                f.write(json.dumps(r) + "\n")
    env = environment()
    text = (
        f"## batch {args.batch}, 32x32, {args.steps} timed steps (median), ops {args.ops}"
        f"\n\n{env}\n\n"
        f"`{' '.join(['python', *sys.argv])}`\n\n{table(rows)}\n"
    )
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
