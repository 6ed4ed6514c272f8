"""What the command lines (`python -m resflax.main`, `python -m resflax.convert`) share: every
failure as one line on stderr, the debug switch that shows the traceback instead, and the
workdir probe.

Bad input is reported as `resflax: error: <what is wrong and what would be valid>`, exit status
1. An error raised in resflax's own code (or in a recipe under experiments/) carries a message
written for the user and is printed as it is; any other (from jax, TensorFlow, orbax, a config
file's code) is printed as its type and first line, with a pointer to `RESFLAX_DEBUG=1`, which
re-raises it so that Python prints the whole traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import NoReturn

DEBUG_ENV = "RESFLAX_DEBUG"
DEBUG_HINT = f" ({DEBUG_ENV}=1 shows the traceback)"
# Where code whose messages are written for the user lives: the package and its recipes.
_ROOT = Path(__file__).resolve().parents[1]
_OWN = (str(_ROOT / "resflax") + os.sep, str(_ROOT / "experiments") + os.sep)


def debug() -> bool:
    """Whether RESFLAX_DEBUG asks for tracebacks (any value but '', '0', 'false', 'no')."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def raised_by_resflax(error: BaseException) -> bool:
    """Whether the error was raised in resflax's own code (or a recipe), whose messages are
    written for the user, rather than deep inside jax, TensorFlow or orbax."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    where = os.path.abspath(frames[-1].filename)
    # .venv sits inside the checkout: a library installed there is not ours.
    return where.startswith(_OWN) and f"{os.sep}site-packages{os.sep}" not in where


def flatten(text: str) -> str:
    """`text` on one line: its non-empty lines joined by '; '."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def describe(error: BaseException) -> str:
    """`error` as one line, without the 'resflax: error: ' prefix."""
    if isinstance(error, OSError) and error.strerror:
        # "No such file or directory: 'x'" reads better with the path first.
        where = f"{error.filename}: " if error.filename else ""
        text = f"{where}{error.strerror}"
        return text if raised_by_resflax(error) else text + DEBUG_HINT
    if raised_by_resflax(error) and isinstance(error, ValueError | TypeError | RuntimeError):
        return flatten(str(error))
    text = first_line(error)
    if isinstance(error, KeyError):
        text = text.strip("'\"")
    return f"{type(error).__name__}: {text}{DEBUG_HINT}"


def fail(error: BaseException | str, status: int = 1) -> NoReturn:
    """Prints `error` as one line and exits with `status`; with RESFLAX_DEBUG set, an exception
    is re-raised instead (its traceback is the point of the switch)."""
    if isinstance(error, BaseException) and debug():
        raise error
    text = error if isinstance(error, str) else describe(error)
    print(f"resflax: error: {flatten(text)}", file=sys.stderr, flush=True)
    sys.exit(status)


def check_workdir(workdir: str | None) -> Path:
    """Creates `workdir` if needed and writes and removes a probe file in it, so that a path
    that cannot hold checkpoints fails now, in one line, not in orbax after the model compiled."""
    if not workdir:
        raise ValueError("--workdir is empty; give the directory for checkpoints and logs")
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"--workdir={workdir!r} is a file, not a directory; give a directory (a missing one "
            "is created)"
        )
    probe = path / f".resflax-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ValueError(
            f"--workdir={workdir!r} cannot be written ({e.filename or path}: {reason}); give a "
            "directory on a writable file system"
        ) from e
    return path
