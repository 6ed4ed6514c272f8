"""ResNet-50 bf16 training throughput on one GPU: resflax's jit data-parallel step beside
torchvision with torch.compile, channels_last and bf16 autocast (run by gpu.sh, one process
each).

    python experiments/benchmarks/gpu_bench.py resflax [BATCH] [STEPS]
    python experiments/benchmarks/gpu_bench.py torch [BATCH] [STEPS]
    python experiments/benchmarks/gpu_bench.py table ROWS.jsonl OUT.md

Synthetic data: one fixed random batch on the device. SGD with momentum 0.9, cross-entropy.
MFU = achieved FLOP/s over the card's dense bf16 peak, with FLOPs from XLA's cost analysis of
the compiled step (resflax) and from the exact multiply-adds x 6 (both implementations).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# Dense bf16 tensor-core peaks (FLOP/s), from NVIDIA's data sheets (SXM parts).
PEAKS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L4": 121e12}
RESNET50_MACS = 4_089_184_256  # resflax.cost("resnet50").macs, per 224x224 image


def peak_for(kind: str) -> float | None:
    return next((v for k, v in PEAKS.items() if k in kind), None)


def run_resflax(batch: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from resflax.models import create_model
    from resflax.train.parallel import make_parallel
    from resflax.train.state import make_init
    from resflax.train.step import train_step

    parallel = make_parallel("jit")
    model = create_model("resnet50", dtype="bfloat16")
    tx = optax.sgd(0.1, momentum=0.9)
    state = parallel.create_state(make_init(model, tx, (1, 224, 224, 3)), jax.random.key(0))
    host = {
        "image": jax.random.normal(jax.random.key(1), (batch, 224, 224, 3), jnp.float32),
        "label": jax.random.randint(jax.random.key(2), (batch,), 0, 1000),
        "mask": jnp.ones((batch,), jnp.float32),
    }
    data = parallel.shard_batch(jax.device_get(host))
    t0 = time.perf_counter()
    step = parallel.train_step(train_step).lower(state, data).compile()  # the loop's jit step
    compile_s = time.perf_counter() - t0
    cost = step.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    for _ in range(3):
        state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    dt = (time.perf_counter() - t0) / steps
    return {
        "impl": "resflax", "batch": batch, "step_s": dt, "img_s": batch / dt,
        "compile_s": compile_s, "xla_flops": float(cost.get("flops", 0.0)),
        "device": jax.devices()[0].device_kind, "jax": jax.__version__,
    }  # fmt: skip


def run_torch(batch: int, steps: int) -> dict:
    import torch
    import torchvision

    torch.backends.cudnn.benchmark = True
    model = torchvision.models.resnet50().cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = torch.compile(step)
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return {
        "impl": "torch.compile", "batch": batch, "step_s": dt, "img_s": batch / dt,
        "compile_s": compile_s, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
    }  # fmt: skip


def table(rows_path: str, out: str) -> None:
    rows = [json.loads(x) for x in Path(rows_path).read_text().splitlines() if x.strip()]
    ok = [r for r in rows if "img_s" in r]
    kind = ok[0]["device"] if ok else "unknown"
    peak = peak_for(kind)
    lines = [
        f"Device: {kind}; dense bf16 peak {peak / 1e12:.0f} TFLOP/s" if peak else f"Device: {kind}",
        "",
        "| implementation | batch | img/s | step (ms) | warm-up/compile (s) | MFU (6 x MACs) "
        "| MFU (XLA FLOPs) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ok:
        mfu = r["img_s"] * RESNET50_MACS * 6 / peak if peak else None
        xla = r.get("xla_flops")
        mfu_xla = xla / r["step_s"] / peak if peak and xla else None
        lines.append(
            f"| {r['impl']} | {r['batch']} | {r['img_s']:.0f} | {1e3 * r['step_s']:.1f} "
            f"| {r['compile_s']:.1f} | {f'{100 * mfu:.1f}%' if mfu else '—'} "
            f"| {f'{100 * mfu_xla:.1f}%' if mfu_xla else '—'} |"
        )
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('impl')} | failed: {r['error']} | | | | | |")
    by = {r["impl"]: r["img_s"] for r in ok}
    if "resflax" in by and "torch.compile" in by:
        lines += ["", f"resflax / torch.compile: {by['resflax'] / by['torch.compile']:.2f}x "
                      "(target >= 1.2x)"]  # fmt: skip
    if "resflax" in by:
        lines.append(f"resflax img/s vs the 7,500 img/s target: {by['resflax'] / 7500:.2f}x")
    Path(out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    what = sys.argv[1]
    if what == "table":
        table(sys.argv[2], sys.argv[3])
        return
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    runners = {"resflax": run_resflax, "torch": run_torch}
    if what not in runners:
        sys.exit(f"unknown implementation {what!r}; valid: resflax, torch, table")
    try:
        result = runners[what](batch, steps)
    except Exception as e:  # reported in the table rather than losing the other rows
        result = {"impl": what, "error": f"{type(e).__name__}: {str(e)[:200]}"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
