"""One run per workdir: an exclusive lock on `<workdir>/resflax.lock`, taken before anything
else is written there and released on exit.

The lock is an `flock` on the file, which the kernel drops when its holder dies (even by
`kill -9`), so a crashed run never blocks the next one; the file also records the holder's pid,
host and start time, to name it in the refusal and to log a takeover. Where a filesystem
grants `flock` without enforcing it, a holder recorded on this host whose pid is alive still
refuses the second run, unless the kernel has given that pid to another process since: the
record holds the holder's start time (/proc/<pid>/stat), and a pid that started at another
time is not the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from absl import logging

LOCK_FILE = "resflax.lock"


class WorkdirBusyError(ValueError):
    """Another run holds the workdir."""


def _holder(text: str) -> dict[str, Any] | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another run"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return f"pid {holder['pid']} on {holder.get('host', '?')} (since {started})"


def _start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat's 22nd field), or
    None where /proc does not say. A pid and its start time name one process: a pid the kernel
    has reused for another process since has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the recorded holder is still running: its pid exists and, where the record has
    its start time (runs since 2026-12), that pid's process started then."""
    pid = int(holder["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process
    started = holder.get("pid_start")
    return started is None or _start_time(pid) in (None, started)


class WorkdirLock:
    """`with WorkdirLock(workdir):` holds the workdir for the block; `enabled=False` (the
    processes other than 0 of a multi-process run) does nothing."""

    def __init__(self, workdir: str | Path, *, enabled: bool = True) -> None:
        self.workdir = Path(workdir)
        self.path = self.workdir / LOCK_FILE
        self.enabled = enabled
        self._fd: int | None = None

    def acquire(self) -> None:
        if not self.enabled:
            return
        if self.workdir.exists() and not self.workdir.is_dir():
            raise NotADirectoryError(f"workdir {self.workdir} is a file, not a directory")
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise WorkdirBusyError(
                f"workdir {self.workdir} is in use by {_describe(holder)}; wait for that run to "
                "end or use another --workdir"
            ) from None
        previous = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        if previous is not None and {k: previous.get(k) for k in me} != me:
            if previous.get("host") == me["host"] and _alive(previous):
                os.close(fd)
                raise WorkdirBusyError(
                    f"workdir {self.workdir} is in use by {_describe(previous)} (its lock file "
                    "is not locked: does this filesystem support flock?); wait for that run to "
                    f"end or use another --workdir; if that process is not a run of this "
                    f"workdir, remove {self.path}"
                )
            logging.warning(
                "workdir %s: taking over the lock of %s, which is no longer running",
                self.workdir, _describe(previous),
            )  # fmt: skip
        os.ftruncate(fd, 0)
        record = {**me, "pid_start": _start_time(me["pid"]), "started": time.time()}
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Emptied first, so the next run does not report a takeover of a run that ended well.
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
