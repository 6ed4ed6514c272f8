"""Learning curves of populations as mean ± std bands per epoch: test top-1 (the evaluation at
each epoch's end) and training loss (the mean of each member's logged training losses within
the epoch), over the members. `experiments.sweep` draws them for every population member of a
sweep into bands.png; `epoch_bands` is the arithmetic, tested on its own."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np


def epoch_bands(lines: list[dict[str, Any]], steps_per_epoch: float) -> dict[str, np.ndarray]:
    """Per epoch e (1, 2, ...): {"epoch", "test_mean", "test_std", "test_n", "loss_mean",
    "loss_std", "loss_n"} from a population's metrics lines (each with a "member"); an
    evaluation counts for the epoch its step ends (step / steps_per_epoch rounded up). The std
    is the sample std (ddof 1) over the members present; NaN where fewer than two."""
    per_member: dict[str, dict[int, dict[int, list[float]]]] = {"eval": {}, "train": {}}
    for x in lines:
        key = "top1" if x.get("split") == "eval" else "loss"
        # A member's "stopped" row carries no metric; strict JSON writes a non-finite one null.
        if "member" not in x or x.get("split") not in per_member or x.get(key) is None:
            continue
        value = x[key]
        epoch = max(1, math.ceil(x["step"] / steps_per_epoch - 1e-9))
        per_member[x["split"]].setdefault(epoch, {}).setdefault(x["member"], []).append(value)
    epochs = sorted(set(per_member["eval"]) | set(per_member["train"]))
    out: dict[str, list[float]] = {"epoch": epochs}
    for split, key in (("eval", "test"), ("train", "loss")):
        means, stds, counts = [], [], []
        for e in epochs:
            # A member's value for the epoch: its last evaluation, or its mean training loss.
            members = per_member[split].get(e, {})
            values = [v[-1] if split == "eval" else float(np.mean(v)) for v in members.values()]
            values = [v for v in values if math.isfinite(v)]
            means.append(float(np.mean(values)) if values else math.nan)
            stds.append(float(np.std(values, ddof=1)) if len(values) > 1 else math.nan)
            counts.append(len(values))
        out[f"{key}_mean"], out[f"{key}_std"], out[f"{key}_n"] = means, stds, counts
    return {k: np.asarray(v) for k, v in out.items()}


def plot_bands(curves: list[tuple[str, dict[str, np.ndarray]]], path: Path) -> None:
    """Two panels, test top-1 (%) and training loss per epoch, one mean line and ± std band
    per named population."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (name, b) in enumerate(curves):
        n = int(b["test_n"].max()) if len(b["test_n"]) else 0
        for ax, key, scale in ((acc, "test", 100.0), (loss, "loss", 1.0)):
            mean, std = b[f"{key}_mean"] * scale, np.nan_to_num(b[f"{key}_std"]) * scale
            ax.plot(b["epoch"], mean, color=f"C{i}", label=f"{name} (n={n})")
            ax.fill_between(b["epoch"], mean - std, mean + std, color=f"C{i}", alpha=0.25)
    acc.set(xlabel="epoch", ylabel="test top-1 (%)", title="test accuracy, mean ± std")
    loss.set(xlabel="epoch", ylabel="training loss", title="training loss, mean ± std")
    loss.set_yscale("log")
    finals = [b["test_mean"][-1] * 100 for _, b in curves if len(b["test_mean"])]
    if finals:  # the last epochs are what the table reports: zoom onto them
        acc.set_ylim(max(0, min(finals) - 15), min(100, max(finals) + 1.5))
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
