"""What the performance benchmarks share: the machine description, child processes (each
implementation runs alone in its own process), medians, the results files, and execution
policies (`resflax.ops.Ops`) written as one string (`parse_ops`)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "experiments" / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(packages: tuple[str, ...]) -> str:
    """'name version' for each package; 'a|b' names one that installs under either name."""
    found = []
    for entry in packages:
        for p in entry.split("|"):
            try:
                found.append(f"{p} {importlib.metadata.version(p)}")
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        else:
            found.append(f"{entry.split('|')[0]} (not installed)")
    return ", ".join(found)


def environment(packages: tuple[str, ...] = ("jax", "jaxlib", "flax", "optax")) -> str:
    return f"{datetime.date.today()}, {cpu_name()}, {os.cpu_count()} CPUs, {versions(packages)}"


def run_child(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 900, root: Path = ROOT
) -> dict:
    """Runs `python <args>` in the checkout `root` (this one by default) and returns the JSON
    object on its last stdout line, or {"error": ...} with the reason (timeout, signal, last
    stderr line)."""
    full_env = {**os.environ, "PYTHONPATH": str(root), **(env or {})}
    try:
        out = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, timeout=timeout,
            check=True, env=full_env, cwd=root,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    except subprocess.CalledProcessError as e:
        if e.returncode < 0:
            return {"error": f"killed by signal {-e.returncode} (out of memory?)"}
        # The exception's own line, not JAX's note about filtered frames that follows it.
        lines = [
            ln
            for ln in e.stderr.strip().splitlines()
            if ln.strip() and not ln.startswith(("For simplicity, JAX", "----"))
        ]
        return {"error": (lines[-1] if lines else f"exit code {e.returncode}")[:160]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def write_result(path: Path, title: str, command: str, intro: str, body: str) -> None:
    """A results file: what was run, where, then the tables. Replaces the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {title}\n\n{intro.strip()}\n\nCommand: `{command}`\n\n{body.strip()}\n")
    print(f"wrote {path}")


def fmt(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


# --- execution policies as strings ---------------------------------------------------------

OPS_BASES = ("auto", "plain")


def parse_ops_spec(spec: str, default: str = "auto") -> tuple[str, dict[str, Any]]:
    """`"auto,conv=dot,fuse_relu=false"` -> ("auto", {"conv": "dot", "fuse_relu": False}).

    An optional first item names the base policy (auto: `resflax.ops.auto()`, the CLI's; plain:
    `resflax.ops.plain()`, the library's default), `default` where it is left out; every
    `field=value` after it replaces an `Ops` field (later items win). Checked without starting
    JAX: a bad field or value raises a one-line ValueError naming it."""
    from resflax.ops import plain

    items = [x.strip() for x in spec.split(",") if x.strip()]
    base = default
    if items and "=" not in items[0]:
        base = items.pop(0)
    if base not in OPS_BASES:
        raise ValueError(f"ops {spec!r}: base {base!r} is not one of {OPS_BASES}")
    changes: dict[str, Any] = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise ValueError(f"ops {spec!r}: {item!r} is not field=value (e.g. conv=dot)")
        if field == "fuse_relu":
            if value.lower() not in ("true", "false"):
                raise ValueError(f"ops {spec!r}: fuse_relu={value!r} must be true or false")
            changes[field] = value.lower() == "true"
        else:
            changes[field] = value
    try:
        plain().replace(**changes)  # each field and value, named if it is wrong
    except ValueError as e:
        raise ValueError(f"ops {spec!r}: {e}") from None
    return base, changes


def parse_ops(spec: str = "auto", default: str = "auto", **auto_kwargs: Any):
    """The `Ops` that `spec` names (see `parse_ops_spec`): `parse_ops("auto,conv=dot")`.
    `auto_kwargs` (scan, dtype, backend, devices) go to `resflax.ops.auto()`, which asks JAX
    for its backend unless given one: with "auto", call this after the process settings."""
    from resflax.ops import auto, plain

    base, changes = parse_ops_spec(spec, default)
    policy = auto(**auto_kwargs) if base == "auto" else plain()
    return policy.replace(**changes)
