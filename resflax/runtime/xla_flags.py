"""XLA flags that make the train step faster, applied before JAX starts its backends.

The default, `--xla_cpu_experimental_ynn_fusion_type=dot,reduce`, hands matrix products,
convolutions and reductions to YNNPACK (bundled in jaxlib): on a 2-core AVX-512 Xeon it took a
ResNet-50 train step (batch 32, 224x224, float32) from 13.9 s to 10.6 s, and with 1x1
convolutions as products (`resflax.ops.conv.conv_dot`) to 6.1 s. Adding `eltwise` helps
small images (CIFAR recipes) and hurts 224x224; oneDNN and XNNPACK fusions, also in jaxlib,
changed nothing for convolutions. docs/performance.md has the measurements.

XLA:CPU deletes optimisation barriers at the start of its pipeline (the GPU and TPU compilers
keep them until after scheduling). Its common-subexpression pass then merged each remat'ed
block's recomputed forward pass back into the original one, so `remat=True` saved no memory,
and `resflax.ops.act.relu_stored` was plain ReLU. `BARRIER_FLAG` keeps the barriers:
ResNet-50's train step (batch 32, 224x224) needs 1.26 GB of temporary buffers with remat
instead of 4.25 GB, and without remat steps in 4.85 s instead of 5.19 s. `cpu_flags` adds it
where JAX runs on the CPU alone.

XLA reads XLA_FLAGS once, when the first backend starts; a flag the installed jaxlib does not
know aborts the process, so each flag is checked against jaxlib's binaries first.
"""

from __future__ import annotations

import functools
import glob
import logging
import mmap
import os
import warnings

from resflax.runtime.platform import backends_started, cpu_only

DEFAULT_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"
BARRIER_FLAG = "--xla_disable_hlo_passes=cse_barrier_expander"
# Flags whose value is a comma-separated list: one set in XLA_FLAGS is extended, not replaced.
_LIST_FLAGS = ("xla_disable_hlo_passes",)


# The first jaxlib measured not to need BARRIER_FLAG: 0.12.0.1 keeps remat's savings without
# it, and ResNet-50's step under ops=auto() compiles to the same temporary bytes (2.68 GB) in the
# same time with and without it; 0.10.2 needs it for both (experiments/results/barrier_flag.md,
# by experiments/benchmarks/cpu/barrier_flag.py). The compiler probe in
# tests/runtime/test_xla_flags.py checks the boundary in both of CI's environments.
BARRIER_UNNEEDED_FROM = (0, 12)


def barrier_needed() -> bool:
    """Whether this jaxlib's XLA:CPU needs BARRIER_FLAG (see BARRIER_UNNEEDED_FROM)."""
    import jaxlib

    return tuple(int(p) for p in jaxlib.__version__.split(".")[:2]) < BARRIER_UNNEEDED_FROM


def cpu_flags(flags: str) -> str:
    """`flags` plus BARRIER_FLAG where JAX runs on the CPU alone and XLA:CPU still deletes
    barriers early. Accelerator compilers keep barriers until after scheduling by themselves,
    so where one may run the pass stays on."""
    return f"{flags} {BARRIER_FLAG}".strip() if cpu_only() and barrier_needed() else flags


@functools.cache
def jaxlib_knows(flag_name: str) -> bool:
    """Whether the installed jaxlib's binaries contain the flag's name (so XLA will parse
    it rather than abort). `flag_name` without the leading dashes."""
    import jaxlib

    needle = flag_name.encode()
    for path in sorted(glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "*.so"))):
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m.find(needle) >= 0:
                return True
    return False


def parse_flags(flags: str) -> list[tuple[str, str]]:
    """'--a=1 --b' -> [('a', '--a=1'), ('b', '--b')]; anything not starting with '--' is
    refused with the offending entry named."""
    out = []
    for item in flags.split():
        if not item.startswith("--") or len(item) < 3:
            raise ValueError(
                f"xla_cpu_flags entry {item!r} is not an XLA flag; expected --name=value "
                f"entries separated by spaces, e.g. {DEFAULT_FLAGS!r}"
            )
        out.append((item[2:].split("=", 1)[0], item))
    return out


def apply_cpu_flags(flags: str) -> list[str]:
    """Adds `flags` to XLA_FLAGS, except those already set there (the environment wins; a
    list-valued flag such as xla_disable_hlo_passes gets the missing entries appended) and
    those this jaxlib does not know (logged and skipped). Returns the flags added. Must run
    before the first JAX computation; afterwards it changes nothing and says so."""
    wanted = parse_flags(flags)
    if not wanted:
        return []
    if backends_started():
        logging.warning("xla_cpu_flags %r not applied: JAX's backends had already started", flags)
        return []
    current = os.environ.get("XLA_FLAGS", "").split()
    present = {item.lstrip("-").split("=", 1)[0]: i for i, item in enumerate(current)}
    added = []
    for name, item in wanted:
        if not jaxlib_knows(name):
            logging.warning("XLA flag %s skipped: the installed jaxlib does not know it", item)
            continue
        if name in present:
            if name in _LIST_FLAGS:
                i = present[name]
                merged = _merge_list_flag(current[i], item)
                if merged != current[i]:
                    current[i] = merged
                    added.append(item)
            continue
        current.append(item)
        added.append(item)
    if added:
        os.environ["XLA_FLAGS"] = " ".join(current)
    return added


def _merge_list_flag(existing: str, item: str) -> str:
    """'--f=a,b' + '--f=b,c' -> '--f=a,b,c'."""
    name, _, values = existing.partition("=")
    have = [v for v in values.split(",") if v]
    extra = [v for v in item.partition("=")[2].split(",") if v and v not in have]
    return f"{name}={','.join(have + extra)}"


_remat_warned = False


@functools.cache
def remat_effective() -> bool:
    """Whether `remat` can save memory in this process. Measured, not guessed: XLA:CPU in
    jaxlib 0.10.2 merges a remat'ed block's recomputation back into the forward pass unless
    BARRIER_FLAG is in XLA_FLAGS; jaxlib 0.12.0.1 keeps the savings by itself (a compiler probe
    in tests/runtime/test_xla_flags.py checks this boundary in both of CI's environments;
    cpu/barrier_flag.py measures it). Accelerator compilers keep the barriers themselves."""
    if not cpu_only() or not barrier_needed():
        return True
    return "cse_barrier_expander" in os.environ.get("XLA_FLAGS", "")


def warn_if_remat_ineffective() -> None:
    """Warns once per process when a model asks for remat where it would save nothing."""
    global _remat_warned
    if _remat_warned or remat_effective():
        return
    _remat_warned = True
    warnings.warn(
        f"remat=True saves no memory on XLA:CPU unless XLA_FLAGS has {BARRIER_FLAG}: call "
        "resflax.runtime.setup() before the first JAX computation, or set it in the environment",
        RuntimeWarning,
        stacklevel=3,
    )
