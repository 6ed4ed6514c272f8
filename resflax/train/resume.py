"""What a resumed run may change in its config (docs/training.md has the table).

A run's config is saved with every checkpoint. On resume the two are compared key by key:
keys in `MAY_CHANGE` (how long, how often, how it computes) are logged and recorded; any other
change (model, data, batch size, optimizer, schedule, dtype, seed, ...) is refused with one
line, unless `--config.allow_changes_on_resume` names the key. `batch_size`, `seed` and the data
set are never allowed: the saved data position would point at other examples.
"""

from __future__ import annotations

import fnmatch
import json
import time
from pathlib import Path
from typing import Any

# Patterns of the keys a resumed run may change without asking, and why each is safe.
MAY_CHANGE: dict[str, str] = {
    "num_steps": "a longer run (one shorter than the checkpoint's step is refused)",
    "num_epochs": "a longer run, in epochs",
    "stop_at_step": "where this session stops",
    "log_every_steps": "logging cadence",
    "eval_every_steps": "evaluation cadence",
    "checkpoint_every_steps": "checkpoint cadence",
    "max_to_keep": "how many checkpoints are kept",
    "async_checkpointing": "how checkpoints are written",
    "eval_batch_size": "evaluation batch (the data position counts training batches)",
    "ops.*": "the execution policy: the same function, computed another way",
    "population.batching": "how a population's members are computed (the same function)",
    "xla_cpu_flags": "compiler settings",
    "host_malloc": "process settings",
    "host_malloc_max_growth": "process settings",
    "parallel": "how the step is parallelised",
    "num_devices": "how many devices (the batch is global)",
    "distributed.*": "how processes meet",
    "data.prefetch": "batches placed ahead",
    "data.parallel_calls": "input-pipeline threads",
    "init_from": "used only by a run's first session",
    "allow_changes_on_resume": "this list itself",
}
# Never allowed: the data position saved with the checkpoint counts batches of this data.
# A population's size and members' seeds shape its state and (own order) its data positions.
NEVER = ("batch_size", "seed", "data.name", "data.folder", "data.train_split",
         "population.size", "population.seed", "population.data_order")  # fmt: skip


def flatten(config: Any) -> dict[str, Any]:
    """The config as {"a.b": value}, values as JSON gives them back (tuples are lists)."""
    return flatten_tree(json.loads(config.to_json_best_effort()))


def flatten_tree(tree: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts as {"a.b": value}."""
    out: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(tree, "")
    return out


def _allowed_by_user(config: Any) -> set[str]:
    text = config.get("allow_changes_on_resume") or ""
    keys = {k.strip() for k in str(text).split(",") if k.strip()}
    never = sorted(keys & set(NEVER))
    if never:
        raise ValueError(
            f"allow_changes_on_resume names {never}, which a resumed run can never change (the "
            "saved data position counts batches of that data); use another --workdir"
        )
    return keys


def may_change(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in MAY_CHANGE)


def changes(saved: dict[str, Any], config: Any) -> dict[str, tuple[Any, Any]]:
    """{key: (saved, now)} for the keys that differ, after refusing (ValueError, one line) any
    change neither `MAY_CHANGE` nor `config.allow_changes_on_resume` allows. Keys present on one
    side only (a config written by another version of resflax) are not compared."""
    now = flatten(config)
    allowed = _allowed_by_user(config)
    unknown = sorted(k for k in allowed if k not in now)
    if unknown:
        raise ValueError(f"allow_changes_on_resume names unknown config keys {unknown}")
    diff = {k: (saved[k], now[k]) for k in sorted(saved.keys() & now.keys()) if saved[k] != now[k]}
    refused = [k for k in diff if not may_change(k) and k not in allowed]
    if refused:
        shown = ", ".join(f"{k}: {diff[k][0]!r} -> {diff[k][1]!r}" for k in refused)
        raise ValueError(
            f"resuming with a changed {shown}, which a resumed run may not change; name it in "
            f"--config.allow_changes_on_resume={','.join(refused)} to accept it, or use another "
            "--workdir (docs/training.md lists what may change)"
        )
    return diff


def record(workdir: Path, config: Any, step: int, changed: dict[str, tuple[Any, Any]]) -> None:
    """config.json keeps the run's first config; a resume that changed keys appends them to
    config_history.jsonl instead of overwriting it."""
    path = workdir / "config.json"
    if not path.exists():
        path.write_text(config.to_json_best_effort(indent=2) + "\n")
    if changed:
        diff = {k: {"from": a, "to": b} for k, (a, b) in changed.items()}
        row = {"step": step, "time": time.time(), "changes": diff}
        with (workdir / "config_history.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
