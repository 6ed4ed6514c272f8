"""Process settings: XLA flags and malloc tuning, applied once before JAX starts its backends.

They belong to the process, not to a model: the same program computes the same values with or
without them, only faster. `python -m resflax.main` applies its recipe's settings; in your own
code call `setup()` first thing, before any JAX computation:

    import resflax.runtime
    resflax.runtime.setup()          # XLA:CPU flags + malloc that keeps freed memory (CPU only)

`xla_flags` (flags, the remat barrier) and `host_memory` (malloc) have the details; `platform`
reads what the process will run on without starting JAX.
"""

from __future__ import annotations

from typing import Any

from resflax.runtime.host_memory import HOST_MALLOC, apply_host_malloc
from resflax.runtime.platform import backends_started, cpu_only
from resflax.runtime.xla_flags import (
    BARRIER_FLAG,
    DEFAULT_FLAGS,
    apply_cpu_flags,
    cpu_flags,
    warn_if_remat_ineffective,
)


def setup(xla_flags: str = DEFAULT_FLAGS, host_malloc: str = "auto") -> dict[str, Any]:
    """Applies `host_malloc` ("auto" | "retain" | "system") and adds `xla_flags` (plus the remat
    barrier where JAX runs on the CPU alone) to XLA_FLAGS; flags already there win. Returns
    what took effect: {"host_malloc": ..., "xla_flags_added": [...]}. Must run before JAX
    starts its backends; afterwards it changes nothing and logs a warning."""
    # Malloc first: glibc fixes the arena limit when a second thread first allocates.
    malloc = apply_host_malloc(host_malloc)
    return {"host_malloc": malloc, "xla_flags_added": apply_cpu_flags(cpu_flags(xla_flags))}


__all__ = [
    "BARRIER_FLAG",
    "DEFAULT_FLAGS",
    "HOST_MALLOC",
    "apply_cpu_flags",
    "apply_host_malloc",
    "backends_started",
    "cpu_flags",
    "cpu_only",
    "setup",
    "warn_if_remat_ineffective",
]
