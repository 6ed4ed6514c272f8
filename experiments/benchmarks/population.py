"""Population training's throughput: total img/s of K members of CIFAR ResNet-20 / ResNet-56
(32x32, batch 128 per member, SGD) in one vmapped step (resflax.train.population), beside one
member's own step, whose rate is also that of K separate runs one after another.

    python experiments/benchmarks/population.py                  # make bench-population (CPU)
    python experiments/benchmarks/population.py --ops auto,conv=dot --ks 1 2   # one variant
    bash experiments/benchmarks/gpu/population.sh                # on a lent GPU

Each (model, K) runs alone in a child process: the step compiled, `--warmup` steps, then the
time of `--steps` steps (throughput: images over the summed time), after the CLI's process
settings (`runtime.setup()`). The execution policy is the CLI's for the machine (`auto()`, one
device) unless `--ops` names another; under vmap oneDNN's convolution runs member by member
(its FFI call is batched sequentially), every other form becomes XLA's batched one. Writes
experiments/results/population.md (or --out) and the raw rows beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from experiments.benchmarks.harness.common import (
    RESULTS,
    environment,
    parse_ops_spec,
    run_child,
    write_result,
)

BATCH, SIZE, CLASSES = 128, 32, 10


def child(model_name: str, k: int, steps: int, warmup: int, ops_spec: str, batching: str) -> dict:
    """One measurement: K = 0 is the single run's own step (no population machinery)."""
    from resflax import runtime

    runtime.setup()  # the CLI's process settings (XLA:CPU flags, malloc), before JAX starts
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from resflax.models import create_model
    from resflax.ops import auto, plain
    from resflax.train import population
    from resflax.train import step as step_lib
    from resflax.train.optim import make_optimizer
    from resflax.train.state import make_init

    base, fields = parse_ops_spec(ops_spec)
    ops = (auto(devices=1) if base == "auto" else plain()).replace(**fields)
    model = create_model(model_name, num_classes=CLASSES, ops=ops)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(BATCH, SIZE, SIZE, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, CLASSES, BATCH), jnp.int32),
        "mask": jnp.ones((BATCH,), jnp.float32),
    }

    def tx_for(hp):
        return make_optimizer("sgd", optax.constant_schedule(hp["learning_rate"]),
                              momentum=hp["momentum"], weight_decay=hp["weight_decay"])  # fmt: skip

    shape = (1, SIZE, SIZE, 3)
    if k == 0:
        init = make_init(model, tx_for({"learning_rate": 0.1, "momentum": 0.9,
                                        "weight_decay": 1e-4}), shape)  # fmt: skip
        state = jax.jit(init)(jax.random.key(0))
        step = jax.jit(step_lib.train_step, donate_argnums=0)

        def run(state):
            return step(state, batch)
    else:
        hp = {"learning_rate": jnp.linspace(0.05, 0.2, k), "momentum": jnp.full((k,), 0.9),
              "weight_decay": jnp.full((k,), 1e-4), "label_smoothing": jnp.zeros((k,))}  # fmt: skip
        first = jax.tree_util.tree_map(lambda x: x[0], hp)
        init = make_init(model, tx_for(first), shape)
        keys = jax.random.split(jax.random.key(0), k)
        state = jax.jit(jax.vmap(init))(keys)

        def member(s, h, b):
            return step_lib.train_step(s, b, label_smoothing=h["label_smoothing"], tx=tx_for(h))

        step = jax.jit(population.train_step(member, False, batching), donate_argnums=0)

        def run(state):
            return step(state, hp, 0, batch)

    start = time.perf_counter()
    state, sums = run(state)
    jax.block_until_ready(sums)
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        state, sums = run(state)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, sums = run(state)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    members = max(k, 1)
    return {
        "model": model_name, "k": k, "batching": batching if k else "—", "ops": ops.describe(),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind, "compile_s": compile_s,
        "step_s": seconds / steps, "img_s": members * BATCH * steps / seconds,
    }  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = [
        "| model | K | batching | step (s) | total img/s | × one member's rate | compile (s) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        single = next((r for r in rows if r["model"] == model and r["k"] == 0), None)
        for r in (r for r in rows if r["model"] == model):
            if "error" in r:
                k = r["k"] or "single run"
                lines.append(f"| {model} | {k} | {r.get('batching', '')} | {r['error']} | | | |")
                continue
            ratio = r["img_s"] / single["img_s"] if single and "img_s" in single else None
            lines.append(
                f"| {model} | {r['k'] or 'single run'} | {r['batching']} | {r['step_s']:.3f} | "
                f"{r['img_s']:,.0f} | "
                f"{'—' if ratio is None else f'{ratio:.2f}×'} | {r['compile_s']:.1f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ops", default="auto", help="execution policy, e.g. auto,conv=dot")
    parser.add_argument("--batching", nargs="+", default=["vmap", "map"], choices=["vmap", "map"])
    parser.add_argument("--out", default=str(RESULTS / "population.md"))
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child[0], int(args.child[1]), args.steps, args.warmup, args.ops,
                       args.batching[0])  # fmt: skip
        print(json.dumps(result))
        return 0
    parse_ops_spec(args.ops)  # a bad policy fails here, in one line, before any child starts
    rows = []
    out = Path(args.out)
    raw = out.with_suffix(".jsonl")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text("")
    for model in args.models:
        runs = [(0, "vmap"), *((k, b) for b in args.batching for k in args.ks)]
        for k, batching in runs:
            row = run_child([__file__, "--child", model, str(k), "--steps", str(args.steps),
                             "--warmup", str(args.warmup), "--ops", args.ops,
                             "--batching", batching])  # fmt: skip
            row.setdefault("model", model)
            row.setdefault("k", k)
            row.setdefault("batching", batching if k else "—")
            print(json.dumps(row), flush=True)
            with raw.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
    device = next((f"{r['backend']} ({r['device']})" for r in rows if "device" in r), "?")
    intro = (
        f"{environment()}; {device}. K members of one model in one train step "
        "(resflax.train.population; SGD, members share the batch; batching vmap: one batched "
        "program, map: the members one after another inside the step), batch "
        f"{BATCH} per member at {SIZE}×{SIZE}, {args.steps} timed steps after {args.warmup} "
        "warm-up step(s), one "
        "process per row. 'single run' is one member's own step without the population "
        "machinery: K separate runs one after another reach exactly its img/s, so the last "
        "column is the population's gain over running its members one by one."
    )
    command = "python experiments/benchmarks/population.py " + " ".join(sys.argv[1:])
    write_result(out, "Population training throughput", command.strip(), intro, table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
