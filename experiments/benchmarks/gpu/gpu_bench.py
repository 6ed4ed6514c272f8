"""ResNet-50 bf16 training throughput on one GPU: resflax's jit data-parallel step beside
torchvision (eager, and with torch.compile), channels_last and bf16 autocast in both (run by
gpu.sh, one process per framework).

    python experiments/benchmarks/gpu/gpu_bench.py resflax BATCH STEPS [VARIANT ...]
    python experiments/benchmarks/gpu/gpu_bench.py torch BATCH STEPS
    python experiments/benchmarks/gpu/gpu_bench.py table ROWS.jsonl OUT.md

resflax runs as `python -m resflax.main` would: the execution policy resflax.ops.auto() for
bf16 on this machine. A VARIANT is `default` or comma-separated items: first, optionally, the
base policy (`auto`, the default, or `plain`: pure JAX); then `field=value` for an `Ops` field
(`stem_conv=lax`, `norm=flax`, `fuse_relu=false`), `batch=512`, or any other ResNet
field (`remat=true`). Each prints one JSON row (with the policy it resolved to) as soon as it
is measured, so a process stopped at its time limit keeps the rows before.

Synthetic data: one fixed random batch on the device. SGD with momentum 0.9, cross-entropy.
Step time: the median of three timed windows of STEPS/3 steps after three warm-up steps.
MFU = achieved FLOP/s over the card's dense bf16 peak (data sheet) and over a bf16 matrix
product measured in the same process, with FLOPs as the exact multiply-adds x 6 for both
implementations. (XLA's cost analysis is kept in the raw rows but not used: on GPU it leaves
out the convolutions, which run as cuDNN custom calls, and reported 1.0e11 FLOPs for a step
of 6.3e12.)
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from experiments.benchmarks.harness.common import OPS_BASES, parse_ops_spec
from resflax.ops import Ops

# Dense bf16 tensor-core peaks (FLOP/s), from NVIDIA's data sheets (SXM parts).
PEAKS = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L4": 121e12}
RESNET50_MACS = 4_089_184_256  # resflax.cost("resnet50").macs, per 224x224 image
WINDOWS = 3


def peak_for(kind: str) -> float | None:
    return next((v for k, v in PEAKS.items() if k in kind), None)


def timed(step, sync, steps: int) -> float:
    """Median seconds per step over WINDOWS windows (after three warm-up steps)."""
    for _ in range(3):
        step()
    sync()
    per = max(1, steps // WINDOWS)
    times = []
    for _ in range(WINDOWS):
        t0 = time.perf_counter()
        for _ in range(per):
            step()
        sync()
        times.append((time.perf_counter() - t0) / per)
    return statistics.median(times)


OPS_FIELDS = tuple(f.name for f in dataclasses.fields(Ops))
# The model fields that were execution settings before `Ops`: the ops field each became.
LEGACY = {"conv_grad": "conv", "stem_s2d": "stem_conv", "bn_grad": "norm", "bn_sums": "norm",
          "bn_fuse_relu": "fuse_relu", "stored_act": "act"}  # fmt: skip


def parse_variant(spec: str) -> dict:
    """`"plain,norm=closed,batch=512,remat=true"` -> {"ops": "plain,norm=closed", "batch": 512,
    "model": {"remat": True}}; "ops" is a policy string for `harness.common.parse_ops`."""
    out: dict = {"ops": "auto", "batch": None, "model": {}}
    if spec == "default":
        return out
    items = spec.split(",")
    ops = [items.pop(0)] if items[0] in OPS_BASES else []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"variant item {item!r} is not key=value (e.g. stem_conv=lax)")
        if key in LEGACY:
            raise ValueError(f"variant item {item!r}: {key} is now the ops field {LEGACY[key]!r}")
        if key in OPS_FIELDS:
            ops.append(item)
        elif key == "batch":
            out["batch"] = int(value)
        else:
            flag = {"true": True, "false": False}.get(value.lower())
            number = int(value) if value.isdigit() else value
            out["model"][key] = flag if flag is not None else number
    out["ops"] = ",".join(ops) or "auto"
    parse_ops_spec(out["ops"])  # a bad field or value, named before any device time is spent
    return out


def matmul_rate(n: int = 8192) -> float:
    """Measured bf16 FLOP/s of an n^3 product (the same card's practical ceiling)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(20):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * 20 / (time.perf_counter() - t0)


def resflax_setup(batch: int, ops: str = "auto", model_fields: dict | None = None) -> tuple:
    """(parallel, state, data, step function, Ops) for ResNet-50 bf16 as the training loop runs
    it, under the policy `ops` (a `harness.common.parse_ops` string; auto: the CLI's)."""
    import jax
    import jax.numpy as jnp
    import optax

    from experiments.benchmarks.harness.common import parse_ops
    from resflax.models import create_model
    from resflax.train.parallel import make_parallel
    from resflax.train.state import make_init
    from resflax.train.step import train_step

    fields = model_fields or {}
    parallel = make_parallel("jit")
    policy = parse_ops(ops, scan=bool(fields.get("scan", False)), dtype="bfloat16",
                       devices=parallel.global_devices)  # fmt: skip
    model = create_model("resnet50", dtype="bfloat16", ops=policy, **fields)
    tx = optax.sgd(0.1, momentum=0.9)
    state = parallel.create_state(make_init(model, tx, (1, 224, 224, 3)), jax.random.key(0))
    host = {
        "image": jax.random.normal(jax.random.key(1), (batch, 224, 224, 3), jnp.float32),
        "label": jax.random.randint(jax.random.key(2), (batch,), 0, 1000),
        "mask": jnp.ones((batch,), jnp.float32),
    }
    data = parallel.shard_batch(jax.device_get(host))
    return parallel, state, data, parallel.train_step(train_step), policy


def run_resflax(batch: int, steps: int, spec: str, matmul: float) -> dict:
    import jax
    import optax

    variant = parse_variant(spec)
    batch = variant["batch"] or batch
    _, state, data, train_step, policy = resflax_setup(batch, variant["ops"], variant["model"])
    t0 = time.perf_counter()
    compiled = train_step.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    box = {"state": state, "metrics": None}

    def step():
        box["state"], box["metrics"] = compiled(box["state"], data)

    dt = timed(step, lambda: jax.block_until_ready(box["metrics"]), steps)
    return {
        "impl": "resflax" if spec == "default" else f"resflax ({spec})", "batch": batch,
        "execution": {"ops": policy.as_dict()}, "step_s": dt, "img_s": batch / dt,
        "compile_s": compile_s,
        "xla_flops": float(cost.get("flops", 0.0)), "matmul_flops": matmul,
        "device": jax.devices()[0].device_kind, "jax": jax.__version__,
        "flax": importlib.metadata.version("flax"), "optax": optax.__version__,
    }  # fmt: skip


def torch_step(batch: int, compiled: bool):
    """One SGD step of torchvision's ResNet-50, channels_last with bf16 autocast."""
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = torchvision.models.resnet50().cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device="cuda")
    net = torch.compile(model) if compiled else model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    return step


def run_torch(batch: int, steps: int, compiled: bool, matmul: float) -> dict:
    import torch

    step = torch_step(batch, compiled)
    t0 = time.perf_counter()
    step()  # torch.compile compiles here (and cudnn.benchmark picks its algorithms)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    dt = timed(step, torch.cuda.synchronize, steps)
    return {
        "impl": "torch.compile" if compiled else "torch eager", "batch": batch, "step_s": dt,
        "img_s": batch / dt, "compile_s": compile_s, "matmul_flops": matmul,
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
    }  # fmt: skip


def torch_matmul_rate(n: int = 8192) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    a @ a
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
    return 2 * n**3 * 20 / (time.perf_counter() - t0)


def _pct(x: float | None) -> str:
    return f"{100 * x:.1f}%" if x else "—"


def table(rows_path: str, out: str) -> None:
    rows = [json.loads(x) for x in Path(rows_path).read_text().splitlines() if x.strip()]
    ok = [r for r in rows if "img_s" in r]
    kind = ok[0]["device"] if ok else "unknown"
    peak = peak_for(kind)
    names = ("jax", "flax", "optax", "torch")
    versions = sorted({f"{k} {r[k]}" for r in ok for k in names if k in r})
    lines = [
        f"Device: {kind}; dense bf16 peak (data sheet) "
        + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown")
        + f"; {', '.join(versions)}",
        "",
        "| implementation | batch | img/s | step (ms) | first step / compile (s) "
        "| MFU (6 x MACs) | of measured bf16 matmul |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ok:
        flops = r["img_s"] * RESNET50_MACS * 6
        mfu = flops / peak if peak else None
        of_mm = flops / r["matmul_flops"] if r.get("matmul_flops") else None
        lines.append(
            f"| {r['impl']} | {r['batch']} | {r['img_s']:.0f} | {1e3 * r['step_s']:.1f} "
            f"| {r['compile_s']:.1f} | {_pct(mfu)} | {_pct(of_mm)} |"
        )
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('impl')} | failed: {r['error']} | | | | | |")
    mm = {
        fw: r["matmul_flops"] / 1e12 for r in ok for fw in ("jax", "torch") if fw in r
    }  # fmt: skip
    policies = [(r["impl"], Ops(**r["execution"]["ops"]).describe()) for r in ok
                if "execution" in r]  # fmt: skip
    if policies:
        lines += ["", "Execution policies (resflax.ops, as resolved on this device): "
                  + "; ".join(f"{i}: {d}" for i, d in dict(policies).items()) + "."]  # fmt: skip
    if mm:
        rates = ", ".join(f"{v:.0f} TFLOP/s ({fw})" for fw, v in mm.items())
        lines += ["", f"Measured 8192^3 bf16 matmul in the same processes: {rates}."]
    by = {(r["impl"], r["batch"]): r["img_s"] for r in ok}
    base = [b for (i, b) in by if i == "resflax"]
    if base and ("torch.compile", base[0]) in by:
        ratio = by[("resflax", base[0])] / by[("torch.compile", base[0])]
        lines += ["", f"resflax / torch.compile at batch {base[0]}: {ratio:.2f}x (target >= 1.2x)"]
    if base:
        lines.append(
            f"resflax img/s vs the 7,500 img/s target (set for an H100): "
            f"{by[('resflax', base[0])] / 7500:.2f}x"
        )
    Path(out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    what = sys.argv[1]
    if what == "table":
        table(sys.argv[2], sys.argv[3])
        return
    if what not in ("resflax", "torch"):
        sys.exit(f"unknown implementation {what!r}; valid: resflax, torch, table")
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    if what == "resflax":
        jobs = [(spec, run_resflax) for spec in (sys.argv[4:] or ["default"])]
        matmul = matmul_rate()
    else:
        jobs = [(False, run_torch), (True, run_torch)]
        matmul = torch_matmul_rate()
    for arg, runner in jobs:
        try:
            result = runner(batch, steps, arg, matmul)
        except Exception as e:  # reported in the table rather than losing the other rows
            label = f"resflax ({arg})" if what == "resflax" else f"torch compiled={arg}"
            result = {"impl": label, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
