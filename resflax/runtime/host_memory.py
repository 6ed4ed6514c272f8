"""Keep freed host memory inside the process, so XLA:CPU stops faulting its buffers in anew
at every step.

XLA:CPU mallocs a train step's temporary buffers (4.3 GB for ResNet-50 at batch 32, 224x224)
and Eigen's convolution workspaces (up to 230 MB each) during the step and frees them at its
end. glibc serves blocks over 32 MB, and any block a worker thread's 64 MB heap cannot hold,
with a fresh mmap and returns them with munmap, so the kernel zero-fills every page again each
step: on a 2-core Xeon 1.2 million page faults and 2.4 s of system time per ResNet-50 step,
which took 6.1 s of wall time and 4.9 s without them. Transparent huge pages
(GLIBC_TUNABLES=glibc.malloc.hugetlb=1) made the faults fewer but not the system time.

"retain" sets three malloc options (mallopt(3)): one arena, so worker threads allocate from
the main heap, which grows past 64 MB; no mmap'd blocks; no trimming of the heap's top. Freed
memory is then reused by the next step; the process keeps its peak resident size until it
exits. "auto" retains when JAX can only run on the CPU: on GPU/TPU hosts the big buffers live
on the device, and one arena would make the input pipeline's threads queue for malloc. The
queueing shows on CPU too where steps are tiny: the 8x8 digits job ran 13% slower, so its
recipe says "system"; ResNet-20/56 on 32x32 ran 22-27% faster, ResNet-50 on 224x224 20%.

One heap fragments: now and then small blocks take part of the hole the step's buffer left,
and the heap grows by a whole buffer, that step taking 2-3 times as long (ResNet-50: 5.0 ->
9.0 GB resident after 10 steps, then flat for 35; in another run 5 -> 9 -> 13 GB within 16
steps). `GrowthGuard` bounds that: past a set multiple of the resident size at its first
check, malloc is handed back its defaults and the free memory returned to the kernel.
"""

from __future__ import annotations

import ctypes
import logging
import os

from resflax.runtime.platform import backends_started, cpu_only

HOST_MALLOC = ("auto", "retain", "system")

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# glibc's defaults, restored by `GrowthGuard`.
_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD = 65536, 128 * 1024
_in_effect = "system"


def in_effect() -> str:
    """The malloc setting in effect in this process: "retain" or "system"."""
    return _in_effect


def retain_freed_memory() -> bool:
    """Sets glibc's malloc to keep freed memory (see the module docstring). Returns False
    where the C library has no mallopt (not glibc) or refuses an option."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # -1 disables trimming altogether (mallopt(3)).
    options = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    return all(mallopt(option, value) == 1 for option, value in options)


def check_mode(mode: str) -> None:
    if mode not in HOST_MALLOC:
        raise ValueError(f"host_malloc={mode!r} is not one of {HOST_MALLOC}")


def apply_host_malloc(mode: str = "auto") -> str:
    """Applies `mode` ("auto", "retain", "system"); returns what is in effect: "retain" or
    "system". Must run before JAX starts its backends: glibc fixes the arena limit for good
    when a second thread first allocates, and XLA's thread pools start with the backends."""
    check_mode(mode)
    if mode == "system" or (mode == "auto" and not cpu_only()):
        return "system"
    if backends_started():
        logging.warning("host_malloc=%r not applied: JAX's backends had already started", mode)
        return "system"
    if retain_freed_memory():
        global _in_effect
        _in_effect = "retain"
        return "retain"
    logging.warning("host_malloc=%r not applied: the C library has no glibc mallopt", mode)
    return "system"


def resident_bytes() -> int | None:
    """This process's resident memory, or None where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_retained() -> None:
    """Back to glibc's defaults (big blocks mmap'd, the heap's top trimmed), and the free
    memory of the heap returned to the kernel now. The single arena stays."""
    global _in_effect
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
    libc.malloc_trim(0)
    _in_effect = "system"


class GrowthGuard:
    """Ends "retain" if the process grows past `max_growth` times its resident size at the
    first `check()` (call it where the loop logs, after the first steps)."""

    def __init__(self, max_growth: float) -> None:
        if not max_growth > 1:
            raise ValueError(f"host_malloc_max_growth={max_growth!r} must be greater than 1")
        self.max_growth = max_growth
        self.baseline: int | None = None

    def check(self) -> bool:
        """True when it has just released the retained memory."""
        if _in_effect != "retain":
            return False
        rss = resident_bytes()
        if rss is None:
            return False
        if self.baseline is None:
            self.baseline = rss
            return False
        if rss <= self.max_growth * self.baseline:
            return False
        release_retained()
        logging.warning(
            "host_malloc: resident memory grew from %.1f to %.1f GB (over %.1fx, "
            "host_malloc_max_growth); malloc's defaults restored, steps may slow down",
            self.baseline / 1e9, rss / 1e9, self.max_growth,
        )  # fmt: skip
        return True
