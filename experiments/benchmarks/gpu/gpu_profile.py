"""Where the GPU time of the ResNet-50 bf16 train step goes: a jax.profiler trace of five
resflax steps (its .xplane.pb copied to OUT), and torch.profiler's kernel table for
torchvision with torch.compile at the same batch (both on a lent GPU); `summary` reads the
trace anywhere (no GPU needed) and sums the GPU kernels by kind. resflax runs under the
execution policy OPS (default auto, the CLI's; a `harness.common.parse_ops` string such as
"auto,stem_conv=lax").

    python experiments/benchmarks/gpu/gpu_profile.py resflax OUT [BATCH] [OPS]
    python experiments/benchmarks/gpu/gpu_profile.py torch OUT [BATCH]
    python experiments/benchmarks/gpu/gpu_profile.py summary FILE.xplane.pb [STEPS]
"""

from __future__ import annotations

import collections
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from experiments.benchmarks.gpu.gpu_bench import resflax_setup, torch_step


def profile_resflax(out: Path, batch: int, ops: str = "auto") -> None:
    import jax

    _, state, data, step, policy = resflax_setup(batch, ops)
    print(f"resflax ResNet-50 bf16 batch {batch}, ops {policy.describe()}")
    for _ in range(5):
        state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    tmp = Path(tempfile.mkdtemp())
    with jax.profiler.trace(str(tmp)):
        for _ in range(5):
            state, metrics = step(state, data)
        jax.block_until_ready(metrics)
    for i, f in enumerate(sorted(tmp.rglob("*.xplane.pb"))):
        shutil.copy(f, out / f"resflax_{i}.xplane.pb")


def profile_torch(out: Path, batch: int, _: str = "") -> None:
    import torch

    step = torch_step(batch, compiled=True)
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(
        sort_by="cuda_time_total", row_limit=40, max_name_column_width=90
    )
    (out / "torch_kernels.txt").write_text(table)
    print(table)


def kernel_kind(name: str) -> str:
    """XLA names its own kernels after the fusion; library kernels keep their own names."""
    if re.match(r"(input|loop)_", name):
        if "reduce" in name:
            return "XLA reductions (BatchNorm statistics and their gradients)"
        return "XLA elementwise (normalise, ReLU, residual add, optimizer)"
    if name.startswith("nvjet") or "splitKreduce" in name:
        return "cuBLAS matrix products (1x1 convolutions)"
    if "xmma" in name or "cutlass" in name or "cudnn" in name.lower():
        return "cuDNN convolutions"
    return "other (copies, memsets)"


def summary(path: str, steps: int = 5) -> str:
    from jax._src.lib import _profile_data

    data = _profile_data.ProfileData.from_file(path)
    events = [
        e
        for plane in data.planes
        if plane.name.startswith("/device:GPU")
        for line in plane.lines
        for e in line.events
    ]
    span = max(e.start_ns + e.duration_ns for e in events) - min(e.start_ns for e in events)
    by_kind, count = collections.Counter(), collections.Counter()
    for e in events:
        by_kind[kernel_kind(e.name)] += e.duration_ns
        count[kernel_kind(e.name)] += 1
    busy = sum(by_kind.values())
    lines = [
        f"GPU busy {busy / steps / 1e6:.1f} ms per step of {span / steps / 1e6:.1f} ms "
        f"({100 * busy / span:.0f}%), {len(events) / steps:.0f} kernels per step",
        "",
        "| kernels | ms per step | share | launches per step |",
        "|---|---:|---:|---:|",
    ]
    for k, v in by_kind.most_common():
        lines.append(
            f"| {k} | {v / steps / 1e6:.2f} | {100 * v / busy:.1f}% | {count[k] / steps:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "--help"
    if what in ("-h", "--help"):
        print(__doc__)
    elif what == "summary":
        print(summary(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 5))
    elif what in ("resflax", "torch"):
        batch = int(sys.argv[3]) if len(sys.argv) > 3 else 256
        ops = sys.argv[4] if len(sys.argv) > 4 else "auto"
        Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
        {"resflax": profile_resflax, "torch": profile_torch}[what](Path(sys.argv[2]), batch, ops)
    else:
        sys.exit(f"unknown mode {what!r}; valid: resflax, torch, summary")
