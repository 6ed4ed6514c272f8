"""Train-step throughput of resflax beside what users would otherwise run, on this machine, in
one run, with utilisation against the matmul rate measured in the same run.

    python experiments/benchmarks/cpu/train_step.py        # make bench-step; ~12 min on 2 cores

Implementations (experiments/benchmarks/harness/step_impls.py), each in its own process,
interleaved round by round (A B C A B C ...) so that drift of the machine spreads over all of
them: resflax (as `python -m resflax.main` runs it: its recipe's process settings, XLA flags
and host_malloc, and the execution policy resflax.ops.auto()), a Flax-example-style model
(baselines/flax_example_style.py: plain nn.Conv/BatchNorm/max_pool, XLA's default flags),
torchvision NCHW and channels_last, and Keras 3's ResNet50 on TensorFlow (graph mode: its
fastest CPU path here), all as their users run them; and, for ResNet-50 as a reference point
outside the targets, torchvision channels_last with resflax's malloc setting
(host_malloc="retain", which torch gains from too). By --impls only, outside the targets:
resflax computing in bf16 (`dtype="bfloat16"`, float32 parameters) and torchvision
channels_last under CPU autocast to bf16; and what the execution policy and the process
settings each give: resflax_plain (the CLI's process settings, ops=plain()), resflax_lib (a
library user's defaults: no process settings, `create_model(name)`, plain ops) and
resflax_lib_auto (no process settings, `create_model(name, ops=resflax.ops.auto())`). Every
step is SGD with momentum on one fixed random batch, float32 unless named bf16. Step time is
the median over all timed steps of all rounds, after three warm-up steps per process (the first
compiles for JAX and traces for Keras; with host_malloc="retain" the heap grows to its steady
size within them).

Utilisation: exact forward multiply-adds (resflax.cost) x 2 FLOPs x 3 (forward, and backward
for inputs and weights) per image, times img/s, over the faster of JAX's and torch's 4096^3
float32 matmul measured in the same run (bf16 rows can pass 100%: the reference is float32's).
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
    run_child,
    write_result,
)

IMPLS = ("resflax", "flax_example", "torchvision", "torchvision_cl", "keras",
         "torchvision_cl_retain")  # fmt: skip
# Outside the targets (float32), by --impls only: bf16 compute in resflax (`dtype`) and in
# torch (autocast), for CPUs with bf16 instructions.
BF16_IMPLS = ("resflax_bf16", "torchvision_cl_bf16")
# By --impls only: the execution policy apart from the process settings. CLI settings with
# plain ops; and a library user's process (no resflax.runtime) with plain ops (create_model's
# default) or with ops=resflax.ops.auto().
POLICY_IMPLS = ("resflax_plain", "resflax_lib", "resflax_lib_auto")
LABELS = {
    "resflax": "resflax",
    "flax_example": "Flax-example style",
    "torchvision": "torchvision NCHW",
    "torchvision_cl": "torchvision channels_last",
    "keras": "Keras 3 / TF (graph)",
    "torchvision_cl_retain": "torchvision channels_last + resflax's malloc",
    "resflax_bf16": "resflax bf16",
    "torchvision_cl_bf16": "torchvision channels_last bf16 autocast",
    "resflax_plain": "resflax, plain ops",
    "resflax_lib": "resflax as a library (no process settings, plain ops)",
    "resflax_lib_auto": "resflax as a library, ops=auto()",
}
DEFAULTS = {"resnet18": (32, 3), "resnet50": (32, 3), "resnet56": (128, 5)}  # batch, steps
CHILD = "experiments/benchmarks/harness/step_impls.py"


def env_for(impl: str) -> dict[str, str]:
    # Children start from XLA's defaults; resflax adds its own settings as its CLI does (the
    # resflax_lib* children add none). RESFLAX_OPS empty: each implementation's own policy.
    overrides = '{"dtype": "bfloat16"}' if impl == "resflax_bf16" else "{}"
    return {"XLA_FLAGS": "", "RESFLAX_MODEL_OVERRIDES": overrides, "RESFLAX_OPS": ""}


def applicable(impl: str, model: str) -> bool:
    # keras.applications has no 18/56; torch with resflax's malloc setting is a reference
    # point for the headline model only.
    return impl not in ("keras", "torchvision_cl_retain") or model == "resnet50"


def train_flops_per_image(model: str) -> float:
    import resflax
    from experiments.benchmarks.harness.step_impls import WORKLOADS

    size, classes, name = WORKLOADS[model]
    macs = resflax.cost(resflax.create_model(name, num_classes=classes), (1, size, size, 3)).macs
    return macs * 2 * 3


def collect(rows: list[dict]) -> dict:
    """(impl, model) -> {"img_s", "first_s", "step_s"} from the rows of every round."""
    out: dict = {}
    for r in rows:
        if "error" in r or r["impl"].startswith("matmul"):
            continue
        key = (r["impl"], r["model"])
        d = out.setdefault(key, {"steps": [], "first": [], "batch": r["batch"]})
        d["steps"] += r["step_s"]
        d["first"].append(r["first_s"] if "compile_s" not in r else r["compile_s"] + r["first_s"])
    stats = {}
    for k, v in out.items():
        step = median(v["steps"])
        stats[k] = {"img_s": v["batch"] / step, "first_s": median(v["first"]), "step_s": step}
    return stats


def matmul_rate(rows: list[dict]) -> dict[str, float]:
    n = 4096
    rates = {}
    for impl in ("matmul_jax", "matmul_torch"):
        times = [t for r in rows if r.get("impl") == impl for t in r["step_s"]]
        if times:
            rates[impl] = 2 * n**3 / median(times) / 1e9
    return rates


def tables(rows: list[dict], models: list[str], impls: list[str]) -> tuple[str, list[str]]:
    stats = collect(rows)
    rates = matmul_rate(rows)
    peak = max(rates.values()) if rates else None
    lines = ["## Throughput (img/s; first step: compile or warm-up, s)", ""]
    head = "| model | batch | " + " | ".join(LABELS[i] for i in impls) + " |"
    lines += [head, "|---|---:|" + "---:|" * len(impls)]
    for m in models:
        cells = []
        for i in impls:
            s = stats.get((i, m))
            cells.append(f"{s['img_s']:.2f} ({s['first_s']:.1f})" if s else "—")
        lines.append(f"| {m} | {DEFAULTS[m][0]} | " + " | ".join(cells) + " |")
    lines += ["", "## Ratios (resflax img/s over each)", ""]
    others = [i for i in impls if i != "resflax"]
    lines += ["| model | " + " | ".join(LABELS[i] for i in others) + " |"]
    lines += ["|---|" + "---:|" * len(others)]
    for m in models:
        ours = stats.get(("resflax", m))
        cells = []
        for i in others:
            s = stats.get((i, m))
            cells.append(f"{ours['img_s'] / s['img_s']:.2f}x" if ours and s else "—")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "## Utilisation (achieved train-step GFLOP/s; fraction of the matmul rate)", ""]
    lines.append(
        "Matmul rate in this run (4096^3 float32): "
        + ", ".join(f"{k.removeprefix('matmul_')} {v:.0f} GFLOP/s" for k, v in rates.items())
        + (f"; reference {peak:.0f} GFLOP/s." if peak else ".")
    )
    lines += ["", "| model | GFLOP/image | " + " | ".join(LABELS[i] for i in impls) + " |"]
    lines += ["|---|---:|" + "---:|" * len(impls)]
    for m in models:
        flops = train_flops_per_image(m)
        cells = []
        for i in impls:
            s = stats.get((i, m))
            if s and peak:
                achieved = s["img_s"] * flops / 1e9
                cells.append(f"{achieved:.0f} ({100 * achieved / peak:.0f}%)")
            else:
                cells.append("—")
        lines.append(f"| {m} | {flops / 1e9:.2f} | " + " | ".join(cells) + " |")
    flops50 = train_flops_per_image("resnet50") if "resnet50" in models else 0.0
    verdicts = targets(stats, peak, flops50)
    lines += ["", "## Targets (issue 7), resnet50 batch 32, CPU", ""] + [f"- {v}" for v in verdicts]
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "## Failed measurements", ""]
        lines += [f"- {r.get('impl')} {r.get('model')}: {r['error']}" for r in errors]
    return "\n".join(lines), verdicts


def targets(stats: dict, peak: float | None, flops: float) -> list[str]:
    ours = stats.get(("resflax", "resnet50"))
    if not ours:
        return ["resnet50 not measured"]
    out = []
    rivals = [(i, stats[(i, "resnet50")]) for i in ("torchvision_cl", "keras")
              if (i, "resnet50") in stats]  # fmt: skip
    if rivals:
        name, best = max(rivals, key=lambda kv: kv[1]["img_s"])
        r = ours["img_s"] / best["img_s"]
        out.append(
            f"{'met' if r >= 1.0 else 'NOT met'}: >= 1.0x the fastest of torchvision "
            f"channels_last and Keras ({LABELS[name]}, {best['img_s']:.2f} img/s): {r:.2f}x"
        )
    same = stats.get(("torchvision_cl_retain", "resnet50"))
    if same:
        out.append(
            f"reference, not a target: {ours['img_s'] / same['img_s']:.2f}x torchvision "
            f"channels_last given resflax's malloc setting ({same['img_s']:.2f} img/s)"
        )
    fe = stats.get(("flax_example", "resnet50"))
    if fe:
        r = ours["img_s"] / fe["img_s"]
        out.append(f"{'met' if r >= 2.0 else 'NOT met'}: >= 2x the Flax-example style: {r:.2f}x")
    if peak:
        u = ours["img_s"] * flops / 1e9 / peak
        out.append(f"{'met' if u >= 0.6 else 'NOT met'}: >= 60% of the matmul rate: {100 * u:.0f}%")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50,resnet56")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per process")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per process")
    ap.add_argument("--out", default=str(RESULTS / "train_step.md"))
    ap.add_argument("--rows", default=None, help="JSON-lines file to append every row to")
    ap.add_argument("--table-from", default=None, help="only rebuild the tables from --rows")
    args = ap.parse_args()
    models, impls = args.models.split(","), args.impls.split(",")
    known = IMPLS + BF16_IMPLS + POLICY_IMPLS
    bad = [m for m in models if m not in DEFAULTS] + [i for i in impls if i not in known]
    if bad:
        sys.exit(f"unknown model/implementation {bad}; models: {list(DEFAULTS)}, "
                 f"implementations: {list(known)}")  # fmt: skip
    if args.table_from:
        rows = [json.loads(x) for x in Path(args.table_from).read_text().splitlines() if x]
    else:
        rows = []
        for rnd in range(args.rounds):
            plan = [("matmul_jax", "-"), ("matmul_torch", "-")]
            plan += [(i, m) for m in models for i in impls if applicable(i, m)]
            for impl, model in plan:
                batch, steps = DEFAULTS.get(model, (0, 5))
                steps = args.steps or steps
                r = run_child([CHILD, impl, model, str(batch), str(steps)], env_for(impl),
                              args.timeout)  # fmt: skip
                r = {"impl": impl, "model": model, "batch": batch, "round": rnd, **r}
                print(json.dumps(r), flush=True)
                rows.append(r)
                if args.rows:
                    with open(args.rows, "a") as f:
                        f.write(json.dumps(r) + "\n")
    text, _ = tables(rows, models, impls)
    print(text)
    packages = (
        "jax",
        "jaxlib",
        "flax",
        "torch",
        "torchvision",
        "tensorflow|tensorflow-cpu",
        "keras",
    )
    intro = __doc__.split("\n\n", 2)[2].strip()
    intro += f"\n\nMachine: {environment(packages)}. {args.rounds} rounds."
    cmd = "python experiments/benchmarks/cpu/train_step.py " + " ".join(sys.argv[1:])
    write_result(Path(args.out), "Train-step throughput, side by side", cmd.strip(), intro, text)


if __name__ == "__main__":
    main()
