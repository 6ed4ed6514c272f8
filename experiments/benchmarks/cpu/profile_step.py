"""Where a train step's time goes on XLA:CPU: one step under `jax.profiler`, each executed HLO
op matched to the optimised HLO (dumped by XLA), summed by kind.

    python experiments/benchmarks/cpu/profile_step.py resnet50 --batch 32
    python experiments/benchmarks/cpu/profile_step.py resnet56 --batch 128 --flags "--xla_cpu_..."
    python experiments/benchmarks/cpu/profile_step.py resnet50 --dtype bfloat16
    python experiments/benchmarks/cpu/profile_step.py resnet50 --ops auto,conv=dot

XLA:CPU runs convolutions and some products (the 1x1 convolutions' weight gradients) in Eigen
asynchronously: their events record only the dispatch, so their time is in neither the kinds
nor the ops below; the first lines say how much of the step the recorded ops cover (the rest
is those Eigen ops; time them alone with micro/products.py). oneDNN's convolutions
(ops `conv="onednn"`, auto()'s choice on one CPU device where built) run synchronously and are
recorded. The step runs as the CLI runs it: the recipe's process settings and --ops (default
auto: `resflax.ops.auto()`; see `harness.common.parse_ops`).

Kinds: "ynn ..." are YNNPACK fusions (matrix products, reductions,
elementwise), "xla ..." XLA's own loop fusions and convolutions, "copy/transpose" layout
changes (mostly activations transposed for weight gradients). Thread time can exceed wall
time where ops overlap. Run it alone: it times the machine.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))


def hlo_index(text: str) -> tuple[dict, dict]:
    """Instruction name -> (opcode, shape, called computation, rest), computation -> body."""
    comps = {}
    for m in re.finditer(r"^%?([\w.\-]+) \(.*?\{\n(.*?)\n\}", text, re.S | re.M):
        comps[m.group(1)] = m.group(2)
    inst = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)$", text, re.M):
        name, shape, op, rest = m.groups()
        calls = re.search(r"calls=%?([\w.\-]+)", rest)
        inst[name] = (op, shape, calls.group(1) if calls else None, rest)
    return inst, comps


def kind(name: str, inst: dict, comps: dict) -> str:
    if name not in inst:
        return "other"
    op, _, calls, rest = inst[name]
    body = comps.get(calls, "") if calls else ""
    if op == "fusion" and "__ynn_fusion" in rest:
        if " dot(" in body or " convolution(" in body:
            return "ynn product/convolution"
        return "ynn elementwise/reduction"
    if op == "custom-call" and "resflax_onednn_conv" in rest:
        return "onednn convolution"
    if op == "convolution":
        return "xla convolution"
    if op == "fusion":
        if "transpose" in name or "copy" in name:
            return "copy/transpose"
        if "reduce-window" in body or "scatter" in body:
            return "xla pooling"
        return "xla elementwise fusion"
    return f"xla {op}"


def coverage(spans: list[tuple[int, int]]) -> tuple[int, int]:
    """(first start to last end, time inside at least one span) of (start, end) pairs."""
    if not spans:
        return 0, 0
    spans = sorted(spans)
    covered, (lo, hi) = 0, spans[0]
    for start, end in spans[1:]:
        if start > hi:
            covered += hi - lo
            lo, hi = start, end
        else:
            hi = max(hi, end)
    return max(e for _, e in spans) - spans[0][0], covered + hi - lo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="resnet18 | resnet50 | resnet56 | resnet20")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--flags", default=None, help="XLA:CPU flags (default: the model's recipe)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--ops", default="auto", help="execution policy, e.g. plain or auto,conv=dot")
    args = ap.parse_args()
    from experiments.benchmarks.harness.common import parse_ops, parse_ops_spec
    from experiments.benchmarks.harness.step_impls import WORKLOADS, jax_setup, recipe_config

    if args.model not in WORKLOADS:
        sys.exit(f"unknown model {args.model!r}; valid: {', '.join(WORKLOADS)}")
    try:
        parse_ops_spec(args.ops)
    except ValueError as e:
        sys.exit(str(e))
    dump = tempfile.mkdtemp(prefix="resflax-hlo-")
    config = recipe_config(args.model)
    from resflax.runtime import apply_host_malloc, cpu_flags

    # As the CLI: the recipe's flags (or --flags) and XLA:CPU's optimisation barriers kept.
    flags = cpu_flags(args.flags if args.flags is not None else config.xla_cpu_flags)
    apply_host_malloc(config.host_malloc)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_dump_to={dump} --xla_dump_hlo_as_text".strip()
    import jax
    from jax._src.lib import _profile_data

    from resflax.models import create_model, get_entry
    from resflax.train.step import train_step

    size, classes, name = WORKLOADS[args.model]
    scan = bool(get_entry(name).config.get("scan", False))
    ops = parse_ops(args.ops, scan=scan, dtype=args.dtype)
    model = create_model(name, num_classes=classes, dtype=args.dtype, ops=ops)
    state, batch = jax_setup(model, size, classes, args.batch)
    step = jax.jit(train_step, donate_argnums=0)
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    trace = tempfile.mkdtemp(prefix="resflax-trace-")
    with jax.profiler.trace(trace):
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    hlo = glob.glob(f"{dump}/*jit_train_step*after_optimizations.txt")
    inst, comps = hlo_index(Path(hlo[0]).read_text())
    data = _profile_data.ProfileData.from_file(
        glob.glob(f"{trace}/**/*.xplane.pb", recursive=True)[0]
    )
    by_kind: collections.Counter = collections.Counter()
    by_op: collections.Counter = collections.Counter()
    spans = []
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                if ev.name in inst:
                    by_kind[kind(ev.name, inst, comps)] += ev.duration_ns
                    by_op[ev.name] += ev.duration_ns
                    spans.append((ev.start_ns, ev.start_ns + ev.duration_ns))
    total = sum(by_kind.values())
    print(f"{args.model} batch {args.batch} {args.dtype}, ops {ops.describe()}, XLA flags "
          f"{flags!r}: {total / 1e9:.2f} s thread time")  # fmt: skip
    step, covered = coverage(spans)
    print(
        f"  the ops' events cover {covered / 1e9:.2f} s of the {step / 1e9:.2f} s step; in the "
        "rest run Eigen's convolutions and products, whose events end at their dispatch"
    )
    for k, v in by_kind.most_common():
        print(f"  {v / 1e6:8.0f} ms {100 * v / total:5.1f}%  {k}")
    print(f"top {args.top} ops:")
    for k, v in by_op.most_common(args.top):
        _, shape, calls, rest = inst[k]
        where = re.search(r'op_name="([^"]+)"', comps.get(calls, "") if calls else rest)
        print(f"  {v / 1e6:8.0f} ms  {k} {shape[:36]}  {where.group(1)[-60:] if where else ''}")
    print(f"optimised HLO in {dump}, trace in {trace}")


if __name__ == "__main__":
    main()
