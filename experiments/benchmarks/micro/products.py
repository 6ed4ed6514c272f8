"""ResNet-50's matrix products on this CPU: XLA:CPU beside torch on the same shapes.

    python experiments/benchmarks/micro/products.py [--model resnet50] [--batch 32] [--reps 7]
        [--cores N] [--dtype float32|bfloat16]

The 1x1 convolutions (and the classifier) are matrix products in resflax's train step on CPU
(execution policy `Ops(conv="dot")`, and "onednn" and "canonical", which build on it: auto()'s
choices there; `resflax.ops.conv.conv_dot`): per layer a forward product `x @ w`
(M x ci by ci x co, M = batch x height x width), an input gradient `g @ w.T` and a weight
gradient `x.T @ g`, which contracts over the M rows (computed as resflax does,
`resflax.ops.conv_grads.weight_grad_2d`: as `(g.T @ x).T` where ci > co). The shapes come from
the jaxpr of the model under `Ops(conv="dot")`, each counted as often as it occurs. Every
product is jitted alone with the model recipe's XLA flags and malloc setting and timed (median
of `--reps`, after step_impls' warm-up calls); torch (its default BLAS) times the same products
with as many threads, in its own process (torch ran slower in a process with JAX loaded).
`--cores 1` pins both to one core: in the train step XLA:CPU runs independent products side by
side, one core each, so that is closer to the speed they get there. The sums say how much of a
train step the products take and how much faster the same products run in another library on
this machine; experiments/results/products.md (products_1core.md for one core).
`--dtype bfloat16` times them with bf16 operands and results in both (products_bf16.md): what
bf16 compute would buy on a CPU with bf16 instructions.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from experiments.benchmarks.harness.common import (
    RESULTS,
    environment,
    median,
    run_child,
    versions,
    write_result,
)

KINDS = ("forward", "input grad", "weight grad")


def product_shapes(model_name: str, batch: int) -> collections.Counter:
    """(M, ci, co) -> count, for every 2-D matrix product in the model's forward pass."""
    import jax
    import jax.numpy as jnp

    from experiments.benchmarks.harness.step_impls import WORKLOADS
    from resflax.models import create_model
    from resflax.models.cost import walk_eqns
    from resflax.ops import Ops

    size, classes, name = WORKLOADS[model_name]
    # The policy whose 1x1 convolutions are 2-D products (under plain ops they are convolutions).
    model = create_model(name, num_classes=classes, ops=Ops(conv="dot"))
    x = jnp.zeros((batch, size, size, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    shapes: collections.Counter = collections.Counter()
    for eqn in walk_eqns(jaxpr):
        if eqn.primitive.name == "dot_general":
            a, b = (v.aval.shape for v in eqn.invars)
            if len(a) == 2 and len(b) == 2:
                shapes[(a[0], a[1], b[1])] += 1
    return shapes


def _time(fn, args: tuple, reps: int) -> float:
    """Median seconds of `fn(*args)`, after the train-step benchmark's warm-up calls."""
    from experiments.benchmarks.harness.step_impls import _time_steps

    return median(_time_steps(lambda: fn(*args), reps)["step_s"])


def child_jax(model_name: str, shapes: list, reps: int, dtype: str) -> dict:
    from experiments.benchmarks.harness.step_impls import recipe_setup

    recipe_setup(model_name)
    import jax
    from jax import lax

    from resflax.ops.conv_grads import weight_grad_2d

    def contract(a, b, dims):
        return lax.dot_general(a, b, (dims, ((), ())))

    fns = {
        "forward": jax.jit(lambda x, w, g: contract(x, w, ((1,), (0,)))),
        "input grad": jax.jit(lambda x, w, g: contract(g, w, ((1,), (1,)))),
        "weight grad": jax.jit(lambda x, w, g: weight_grad_2d(x, g)),
    }
    out = {}
    for m, ci, co in shapes:
        keys = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(keys[0], (m, ci), dtype)
        w = jax.random.normal(keys[1], (ci, co), dtype)
        g = jax.random.normal(keys[2], (m, co), dtype)
        for kind, f in fns.items():
            out[f"{m},{ci},{co},{kind}"] = _time(
                lambda *a, f=f: jax.block_until_ready(f(*a)), (x, w, g), reps
            )
    return out


def child_torch(shapes: list, reps: int, dtype: str) -> dict:
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    ops = {
        "forward": lambda x, w, g: x @ w,
        "input grad": lambda x, w, g: g @ w.t(),
        "weight grad": lambda x, w, g: x.t() @ g,
    }
    out = {}
    with torch.no_grad():
        for m, ci, co in shapes:
            dt = getattr(torch, dtype)
            args = tuple(torch.randn(*s, dtype=dt) for s in ((m, ci), (ci, co), (m, co)))
            for kind, f in ops.items():
                out[f"{m},{ci},{co},{kind}"] = _time(f, args, reps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--cores", type=int, default=None, help="pin both to this many CPUs")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--shapes", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="default: products[_Ncore][_bf16].md")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if args.cores is not None and not 1 <= args.cores <= len(cpus):
        sys.exit(f"--cores {args.cores} must be between 1 and this machine's {len(cpus)} CPUs")
    args.cores = args.cores or len(cpus)
    if args.out is None:
        name = "products" if args.cores == len(cpus) else f"products_{args.cores}core"
        args.out = str(RESULTS / (name + ("_bf16" if args.dtype == "bfloat16" else "") + ".md"))
    from experiments.benchmarks.harness.step_impls import WORKLOADS

    if args.model not in WORKLOADS:
        sys.exit(f"unknown model {args.model!r}; valid: {', '.join(WORKLOADS)}")
    if args.reps < 1:
        sys.exit(f"--reps {args.reps} must be at least 1")
    if args.child:
        # Before JAX or torch starts: both size their thread pools from the affinity mask.
        os.sched_setaffinity(0, cpus[: args.cores])
        shapes = json.loads(args.shapes)
        res = (
            child_jax(args.model, shapes, args.reps, args.dtype)
            if args.child == "jax"
            else child_torch(shapes, args.reps, args.dtype)
        )
        print(json.dumps(res))
        return

    counts = product_shapes(args.model, args.batch)
    shapes = sorted(counts, key=lambda s: (-s[0], s[1], s[2]))
    common = ["--model", args.model, "--reps", str(args.reps), "--shapes", json.dumps(shapes),
              "--cores", str(args.cores), "--dtype", args.dtype]  # fmt: skip
    results = {}
    for impl in ("jax", "torch"):
        res = run_child([__file__, "--child", impl, *common])
        if "error" in res:
            sys.exit(f"{impl} products failed: {res['error']}")
        results[impl] = res
    report(args, counts, shapes, results)


def report(args, counts, shapes, results) -> None:
    rows, totals = [], {k: [0.0, 0.0, 0.0] for k in KINDS}
    for m, ci, co in shapes:
        n = counts[(m, ci, co)]
        flops = 2.0 * m * ci * co
        cells = []
        for kind in KINDS:
            key = f"{m},{ci},{co},{kind}"
            tj, tt = results["jax"][key], results["torch"][key]
            totals[kind][0] += n * tj
            totals[kind][1] += n * tt
            totals[kind][2] += n * flops
            cells.append(f"{tj * 1e3:.1f} / {tt * 1e3:.1f} ({flops / tj / 1e9:.0f} / "
                         f"{flops / tt / 1e9:.0f})")  # fmt: skip
        rows.append(f"| {m} x {ci} x {co} | {n} | " + " | ".join(cells) + " |")
    table = (
        "| M x ci x co | count | forward | input grad | weight grad |\n|---|---:|---:|---:|---:|\n"
        + "\n".join(rows)
    )
    sums = ["| product | XLA:CPU (s) | torch (s) | XLA:CPU GFLOP/s | torch GFLOP/s | "
            "XLA / torch time |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for kind in KINDS:
        tj, tt, fl = totals[kind]
        sums.append(f"| {kind} | {tj:.3f} | {tt:.3f} | {fl / tj / 1e9:.0f} | "
                    f"{fl / tt / 1e9:.0f} | {tj / tt:.2f}x |")  # fmt: skip
    all_j = sum(t[0] for t in totals.values())
    all_t = sum(t[1] for t in totals.values())
    sums.append(f"| all | {all_j:.3f} | {all_t:.3f} | | | {all_j / all_t:.2f}x |")
    body = (
        "## Sums over the model (each shape times its count)\n\n"
        + "\n".join(sums)
        + "\n\n## Per shape: ms XLA:CPU / torch (GFLOP/s XLA:CPU / torch)\n\n"
        + table
    )
    intro = (
        __doc__.split("\n\n", 2)[2].strip()
        + f"\n\nMachine: {environment(('jax', 'jaxlib'))}, {versions(('torch',))}. "
        + f"{args.model}, batch {args.batch}, median of {args.reps} runs per product, "
        + f"{args.cores} core{'s' if args.cores > 1 else ''}, {args.dtype}."
    )
    print(body)
    write_result(
        Path(args.out),
        f"Matrix products of {args.model}'s train step: XLA:CPU and torch, {args.dtype}",
        "python experiments/benchmarks/micro/products.py " + " ".join(sys.argv[1:]), intro, body,
    )  # fmt: skip


if __name__ == "__main__":
    main()
