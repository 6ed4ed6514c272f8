"""host_malloc: with "retain", memory a worker thread frees stays in the process (no mmap'd
blocks, no page faults when it is allocated again); bad modes are named; too late says so."""

import json
import os
import subprocess
import sys

import jax
import pytest

from resflax.runtime import host_memory, platform
from resflax.runtime.host_memory import HOST_MALLOC, apply_host_malloc, check_mode
from resflax.runtime.platform import cpu_only

# A worker thread mallocs 256 MiB and touches every page, frees it, then does it again.
# mallinfo2().hblks counts the blocks malloc holds as separate mmaps; minor faults count the
# pages the kernel had to zero-fill for the second pass.
PROBE = """
import ctypes, json, resource, sys, threading
from resflax.runtime.host_memory import apply_host_malloc
mode = apply_host_malloc(sys.argv[1])
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks "
                "fsmblks uordblks fordblks keepcost".split()]

libc.mallinfo2.restype = Info
SIZE = 256 << 20
out = {"mode": mode}

def work():
    held = libc.mallinfo2().hblks
    p = libc.malloc(SIZE); ctypes.memset(p, 1, SIZE)
    out["mmapped_blocks"] = libc.mallinfo2().hblks - held
    libc.free(p)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(SIZE); ctypes.memset(p, 1, SIZE)
    out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(p)

t = threading.Thread(target=work); t.start(); t.join()
print(json.dumps(out))
"""
PAGES = (256 << 20) // os.sysconf("SC_PAGE_SIZE")
glibc = pytest.mark.skipif(
    not hasattr(os, "confstr") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""),
    reason="mallopt and mallinfo2 are glibc's",
)


def probe(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
        check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc
def test_retain_keeps_a_threads_big_block_in_the_heap():
    result = probe("retain")
    assert result["mode"] == "retain"
    assert result["mmapped_blocks"] == 0
    assert result["faults"] < PAGES // 100  # reused, not faulted in again


@glibc
def test_system_malloc_maps_and_unmaps_it():
    """The control: glibc's defaults hand the block back, and the second pass faults in
    every page again (the cost `retain` removes from XLA:CPU's steps)."""
    result = probe("system")
    assert result["mode"] == "system"
    assert result["mmapped_blocks"] == 1
    assert result["faults"] > PAGES // 2


def test_auto_follows_the_platforms(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert cpu_only()
    for platforms in ("cuda", "cpu,cuda", "tpu"):
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
        assert not cpu_only()
        assert apply_host_malloc("auto") == "system"
    monkeypatch.delenv("JAX_PLATFORMS")
    assert cpu_only() == (platform.accelerator_plugins() == [])


def test_bad_mode_is_named():
    for mode in HOST_MALLOC:
        check_mode(mode)
    with pytest.raises(ValueError, match=r"host_malloc='keep' is not one of \('auto', "):
        apply_host_malloc("keep")


def test_too_late_changes_nothing_and_says_so(caplog):
    jax.devices()  # backends started
    assert apply_host_malloc("retain") == "system"
    assert host_memory.in_effect() == "system"
    assert "host_malloc='retain' not applied: JAX's backends had already started" in caplog.text


GUARD = """
import ctypes, json
from resflax.runtime import host_memory
assert host_memory.apply_host_malloc("retain") == "retain"
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
guard = host_memory.GrowthGuard(1.5)
out = {"first": guard.check()}
size = 2 * host_memory.resident_bytes()  # the heap grows past 1.5x
p = libc.malloc(size); ctypes.memset(p, 1, size)
out["grown"] = guard.check()
out["mode"] = host_memory.in_effect()
before = host_memory.resident_bytes()
libc.free(p)
out["returned_mb"] = (before - host_memory.resident_bytes()) / 2**20
out["size_mb"] = size / 2**20
print(json.dumps(out))
"""


@glibc
def test_growth_guard_hands_memory_back_past_its_bound():
    out = subprocess.run(
        [sys.executable, "-c", GUARD], capture_output=True, text=True, timeout=120, check=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["first"] is False  # the baseline
    assert result["grown"] is True and result["mode"] == "system"
    assert "malloc's defaults restored" in out.stderr
    # Freed memory now goes back to the kernel (it stayed in the process under "retain").
    assert result["returned_mb"] > 0.9 * result["size_mb"]


def test_growth_bound_must_exceed_one():
    for bad in (1.0, 0.5, -2):
        with pytest.raises(ValueError, match=f"host_malloc_max_growth={bad!r} must be greater"):
            host_memory.GrowthGuard(bad)
