"""One run per workdir: an exclusive lock on `<workdir>/resflax.lock`, taken before anything
else is written there and released on exit.

The lock is an `flock` on the file, which the kernel drops when its holder dies (even by
`kill -9`), so a crashed run never blocks the next one; the file also records the holder's pid,
host and start time, to name it in the refusal and to log a takeover. Where a filesystem
grants `flock` without enforcing it, a holder recorded on this host whose pid is alive still
refuses the second run.
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


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
            if previous.get("host") == me["host"] and _alive(int(previous["pid"])):
                os.close(fd)
                raise WorkdirBusyError(
                    f"workdir {self.workdir} is in use by {_describe(previous)} (its lock file "
                    "is not locked: does this filesystem support flock?); wait for that run to "
                    "end or use another --workdir"
                )
            logging.warning(
                "workdir %s: taking over the lock of %s, which is no longer running",
                self.workdir, _describe(previous),
            )  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({**me, "started": time.time()}).encode(), 0)
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
