"""BatchNorm's per-channel sums alone, on every BatchNorm shape of a ResNet-50 train step: XLA's
reductions (`Ops(norm="closed")`) beside the Pallas kernel (`resflax.kernels.channel_sums`,
`Ops(norm="closed_pallas")`), for a GPU.

    python experiments/benchmarks/micro/bn_sums.py [BATCH] [OUT.jsonl] [TILE:WARPS ...]

Each shape is timed in both of its forms: the forward pass's `(sum x, sum x²)` (one input) and
the backward pass's `(sum g, sum g x)` (two). Per shape and form: median ms of jitted calls
(the inputs rotated among copies that together exceed the L2 cache), the bytes read per
millisecond, and the largest relative difference from a float32 XLA reference. The totals
weight each shape by how many BatchNorms of a ResNet-50 (v1.5, 224x224) have it: the time these
sums would take in one train step. Kernel settings `TILE:WARPS` (elements per tile, warps per
program) default to the module's and a few around them.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

# (height = width, channels): BatchNorms of that shape in ResNet-50 v1.5 (stride on the 3x3).
RESNET50_SHAPES = {
    (112, 64): 1,
    (56, 64): 6,
    (56, 256): 4,
    (56, 128): 1,
    (28, 128): 7,
    (28, 512): 5,
    (28, 256): 1,
    (14, 256): 11,
    (14, 1024): 7,
    (14, 512): 1,
    (7, 512): 5,
    (7, 2048): 4,
}
L2_BYTES = 64 << 20


def _median_ms(f, inputs, iters: int = 30) -> float:
    import jax

    jax.block_until_ready(f(*inputs[0]))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(iters):
            out = f(*inputs[i % len(inputs)])
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / iters)
    return 1e3 * statistics.median(times)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    import jax
    import jax.numpy as jnp
    import numpy as np

    from resflax.kernels import channel_sums as cs

    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    out_path = Path(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else None
    settings = [tuple(int(v) for v in s.split(":")) for s in sys.argv[3:]] or [
        (cs.TILE, cs.NUM_WARPS), (2048, 4), (8192, 8), (4096, 8),
    ]  # fmt: skip
    device = jax.devices()[0].device_kind
    rows = []
    totals: dict[str, float] = {}
    counted: dict[str, int] = {}
    interpret = jax.default_backend() != "gpu"  # a smoke test off GPU
    xla = jax.jit(cs.xla_sums)
    for (hw, c), count in RESNET50_SHAPES.items():
        shape = (batch, hw, hw, c)
        nbytes = 2 * batch * hw * hw * c
        copies = max(2, -(-2 * L2_BYTES // nbytes))
        keys = jax.random.split(jax.random.key(hw * 10_000 + c), 2 * copies)
        xs = [jax.random.normal(k, shape, jnp.bfloat16) for k in keys[:copies]]
        gs = [jax.random.normal(k, shape, jnp.bfloat16) for k in keys[copies:]]
        pairs = list(zip(gs, xs, strict=True))
        for form, inputs in (("x, x*x", [(x, x) for x in xs]), ("g, g*x", pairs)):
            same = form == "x, x*x"
            read = nbytes * (1 if same else 2)
            a, b = inputs[0]
            ref = [np.asarray(v, np.float64) for v in cs.xla_sums(a, b)]
            impls = {"xla": xla}
            for tile, warps in settings:
                if cs.plan(batch * hw * hw, c, tile) is None:
                    continue
                impls[f"pallas {tile}:{warps}"] = jax.jit(
                    lambda a, b, tile=tile, warps=warps, same=same: cs._pallas_sums(
                        a, b, same, interpret, tile, cs.TARGET_PROGRAMS, warps
                    )
                )
            for name, f in impls.items():
                try:
                    got = f(a, b)
                    err = max(
                        float(np.abs(np.asarray(g, np.float64) - r).max() / np.abs(r).max())
                        for g, r in zip(got, ref, strict=True)
                    )
                    ms = _median_ms(f, inputs)
                except Exception as e:  # a setting that does not compile: report, go on
                    row = {"shape": shape, "form": form, "impl": name, "error": str(e)[:300]}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    continue
                row = {
                    "shape": shape, "form": form, "impl": name, "count": count, "ms": ms,
                    "gb_s": read / ms / 1e6, "rel_err": err, "device": device,
                    "jax": jax.__version__,
                }  # fmt: skip
                print(json.dumps(row), flush=True)
                rows.append(row)
                totals[name] = totals.get(name, 0.0) + count * ms
                counted[name] = counted.get(name, 0) + 1
    print("\nPer train step (each shape x its count in ResNet-50, forward + backward forms):")
    for name, ms in sorted(totals.items(), key=lambda kv: kv[1]):
        print(f"  {name:>20}: {ms:7.2f} ms ({counted[name]} of {2 * len(RESNET50_SHAPES)} cases)")
    if out_path:
        with out_path.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
