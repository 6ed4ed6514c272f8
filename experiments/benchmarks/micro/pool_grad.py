"""The stem max-pool's gradient alone: the max-pool of each execution policy's `pool` choice
(`Ops(pool="phases")`, auto()'s: row "resflax"; `Ops(pool="lax")`: JAX's own differentiation
of `reduce_window`) beside Flax's `nn.max_pool` (select-and-scatter), on the ResNet-50 stem's
output (3x3/2, padding 1).

    python experiments/benchmarks/micro/pool_grad.py [BATCH] [DTYPE] [FILE.py:FUNCTION ...]

Extra `FILE.py:FUNCTION` entries time another `f(x, window, stride, padding)` the same way
(an earlier version of the pool, say). Prints one JSON row per implementation: median ms of
the jitted gradient (a vjp with a fixed cotangent), and whether it matches select-and-scatter's;
the rows (with the date) are appended to experiments/results/pool_grad.jsonl.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "experiments" / "results" / "pool_grad.jsonl"


def _load(spec: str):
    path, name = spec.rsplit(":", 1)
    mod_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return getattr(module, name)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from experiments.benchmarks.harness.common import median
    from experiments.benchmarks.harness.step_impls import _time_steps
    from resflax.ops import Ops

    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    dtype = jnp.dtype(sys.argv[2] if len(sys.argv) > 2 else "float32")
    # "resflax": the gradient by phases (the name the rows had before the policy existed).
    impls = {
        "resflax": lambda x: Ops(pool="phases").max_pool(x, 3, 2, 1),
        "resflax (pool=lax)": lambda x: Ops(pool="lax").max_pool(x, 3, 2, 1),
        "select_and_scatter": lambda x: nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))),
    }
    for spec in sys.argv[3:]:
        f = _load(spec)
        impls[spec] = lambda x, f=f: f(x, 3, 2, 1)
    # Post-ReLU values: many exact zeros, so ties are exercised as in the network.
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (batch, 112, 112, 64))).astype(dtype)
    g = jax.random.normal(jax.random.key(1), (batch, 56, 56, 64)).astype(dtype)
    outs, rows = {}, []
    for name, pool in impls.items():
        grad = jax.jit(lambda x, g, pool=pool: jax.vjp(pool, x)[1](g)[0])
        timed = _time_steps(lambda grad=grad: jax.block_until_ready(grad(x, g)), 20)
        outs[name] = np.asarray(grad(x, g), np.float32)
        rows.append({"impl": name, "batch": batch, "dtype": str(dtype),
                     "ms": 1e3 * median(timed["step_s"]), "first_s": timed["first_s"],
                     "device": jax.devices()[0].device_kind})  # fmt: skip
    want = outs["select_and_scatter"]
    # Where windows overlap, the sum's order (and in bfloat16 its rounding) may differ.
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    atol = tol * float(np.abs(want).max())
    with RESULTS.open("a") as f:
        for row in rows:
            ok = np.allclose(outs[row["impl"]], want, rtol=tol, atol=atol)
            row["same_as_select_and_scatter"] = bool(ok)
            print(json.dumps(row), flush=True)
            f.write(json.dumps({"date": str(datetime.date.today()), **row}) + "\n")


if __name__ == "__main__":
    main()
