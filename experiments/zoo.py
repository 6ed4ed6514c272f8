"""The zoo's cost table: parameters, multiply-adds and compiled memory of every registered model.

    python experiments/zoo.py --out experiments/results/zoo.md     (make zoo)

Parameters come from `jax.eval_shape`, multiply-adds from the traced computation (exact), memory
from XLA's compiled forward pass at batch 1 and the model's native resolution. The published
figures and their sources come from the registry, beside the measured ones.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import sys
import time

from resflax.models import cost, create_model, get_entry, list_models


def row(name: str, memory: bool, scan_above: int) -> str:
    entry = get_entry(name)
    # XLA:CPU takes many minutes (and >8 GB) to compile the unrolled 1000+ layer nets, so
    # their memory is measured with scanned stages (same function and counts, constant
    # compile time).
    deep = memory and sum(entry.config["stage_sizes"]) > scan_above
    shape = (1, entry.resolution, entry.resolution, 3)
    c = cost(create_model(name, scan=deep), shape, memory=memory)
    mem = f"{c.memory_bytes / 2**20:,.0f}" + (" †" if deep else "") if memory else "—"
    same = "=" if c.params == entry.params else f"≠ {entry.params:,}"
    if entry.gmacs:
        diff = 100 * (c.gmacs - entry.gmacs) / entry.gmacs
        pub = f"{entry.gmacs:g} ({diff:+.1f}%)"
    else:
        pub = "—"
    src = entry.params_source + (f"; MACs: {entry.gmacs_source}" if entry.gmacs_source else "")
    return (
        f"| `{name}` | {entry.resolution} | {entry.num_classes} | {c.params:,} | {same} | "
        f"{c.gmacs:.3f} | {pub} | {mem} | {src} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="markdown file to write")
    ap.add_argument("--models", default="*", help="glob over registered names")
    ap.add_argument("--no-memory", action="store_true", help="skip compiling (faster)")
    ap.add_argument(
        "--scan-above", type=int, default=150,
        help="measure memory with scanned stages for nets with more blocks than this",
    )  # fmt: skip
    args = ap.parse_args()
    names = list_models(args.models)
    if not names:
        sys.exit(f"--models={args.models!r} matches no registered model")
    header = [
        "| model | res | classes | params | published params | GMACs | published GMACs "
        "(ours vs it) | memory (MiB) | sources |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    lines = []
    t0 = time.perf_counter()
    for name in names:
        lines.append(row(name, memory=not args.no_memory, scan_above=args.scan_above))
        print(lines[-1], flush=True)
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("jax", "jaxlib", "flax"))
    text = "\n".join(
        [
            "# resflax model zoo",
            "",
            f"Made by `make zoo` (`python {' '.join(sys.argv)}`) on {datetime.date.today()}, "
            f"{platform.machine()}, {versions}, in {time.perf_counter() - t0:.0f} s.",
            "",
            "GMACs: multiply-adds of one forward pass of one image at the native resolution, "
            "counted exactly from the jaxpr (convolutions and dense layers). Memory: XLA's "
            "compiled footprint (arguments + outputs + temporaries) of that forward pass on "
            "this backend (†: measured with `scan=True`, because XLA:CPU needs many minutes "
            "and >8 GB to compile the unrolled 1000+ layer nets). 'published params' shows "
            "`=` when our count equals the published one exactly.",
            "",
            *header,
            *lines,
            "",
        ]
    )
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
