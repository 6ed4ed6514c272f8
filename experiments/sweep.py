"""Run a sweep (a list of config variants, typically depths) and collect its table and plots.

    python -m experiments.sweep --sweep experiments/sweeps/digits_depths.py      (make sweep)
    python -m experiments.sweep --sweep ... --launcher slurm   # writes an sbatch array, prints it
    python -m experiments.sweep --sweep ... --launcher tpu     # prints one command per member
    python -m experiments.sweep --sweep ... --member 2         # one member (a cluster task)
    python -m experiments.sweep --sweep ... --collect          # only the table and plots

A sweep file defines `get_sweep()` -> {"config": "<file>.py:{depth}", "members": [{"depth":
20}, ...], "flags": [...], optional "paper_error": {"20": 8.75, ...}, "paper_source": "..."}.
Each member trains in its own workdir `<runs>/<sweep>/<member>`; a member whose summary says
"finished" is skipped, any other resumes from its checkpoints. Results go to
`experiments/results/<sweep>/`: table.md, error_vs_depth.png, curves.png.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from experiments.bands import epoch_bands, plot_bands

ROOT = Path(__file__).resolve().parents[1]


def load_sweep(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"sweep: error: no sweep file {path!r}; see experiments/sweeps/")
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep = module.get_sweep()
    sweep["name"] = file.stem
    return sweep


def member_name(member: dict[str, Any]) -> str:
    return "_".join(f"{k}{v}" for k, v in member.items())


def command(sweep: dict[str, Any], member: dict[str, Any], workdir: Path) -> list[str]:
    config = sweep["config"].format(**member)
    return [
        sys.executable, "-m", "resflax.main", f"--config={config}", f"--workdir={workdir}",
        *sweep.get("flags", []),
    ]  # fmt: skip


def status(workdir: Path) -> str:
    summary = workdir / "summary.json"
    return json.loads(summary.read_text())["status"] if summary.exists() else "not started"


def run_local(sweep: dict[str, Any], runs: Path, only: int | None) -> int:
    failed = []
    for i, member in enumerate(sweep["members"]):
        if only is not None and i != only:
            continue
        workdir = runs / member_name(member)
        if status(workdir) == "finished":
            print(f"[{member_name(member)}] finished earlier: skipped", flush=True)
            continue
        cmd = command(sweep, member, workdir)
        print(f"[{member_name(member)}] {shlex.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            failed.append(member_name(member))
    if failed:
        print(f"sweep: members that did not finish: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def slurm_script(sweep: dict[str, Any], sweep_file: str, runs: Path) -> Path:
    template = (ROOT / "experiments" / "launch" / "slurm_sweep.sbatch").read_text()
    script = template.format(
        name=sweep["name"], last=len(sweep["members"]) - 1, root=ROOT, sweep=sweep_file,
        runs_parent=runs.parent, logs=runs / "slurm-%A_%a.log",
    )  # fmt: skip
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / "sweep.sbatch"
    path.write_text(script)
    return path


def tpu_commands(sweep: dict[str, Any], runs: Path) -> list[str]:
    out = []
    for member in sweep["members"]:
        argv = command(sweep, member, runs / member_name(member))[2:]
        cmd = shlex.join(["python", "-m", *argv, "--config.distributed.enabled=True"])
        out.append(
            'gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all '
            f"--command={shlex.quote(f'cd resflax && .venv/bin/{cmd}')}"
        )
    return out


# --- collecting -------------------------------------------------------------------------------


def read_member(workdir: Path) -> dict[str, Any] | None:
    if not (workdir / "summary.json").exists():
        return None
    summary = json.loads((workdir / "summary.json").read_text())
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x]
    config = json.loads((workdir / "config.json").read_text())
    return {"summary": summary, "lines": lines, "config": config}


def gmacs(result: dict[str, Any]) -> float:
    from resflax.models import cost, create_model

    config, summary = result["config"], result["summary"]
    overrides = {k: v for k, v in config["model"].items() if k != "name" and v is not None}
    model = create_model(config["model"]["name"], num_classes=summary["num_classes"], **overrides)
    return cost(model, (1, *summary["image_shape"])).macs / 1e9


def errors(summary: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(best, final) test error in % of a member's summary, each {"mean", "std", "cell"}: a
    single run's value, or a population's mean ± std over its members that finished (with the
    best member's error)."""
    nan = {"mean": float("nan"), "std": 0.0, "cell": "–"}
    block = summary.get("population")
    if block is None:
        out = []
        for key in ("best_eval", "final_eval"):
            if summary.get(key):
                value = 100 * (1 - summary[key]["top1"])
                out.append({"mean": value, "std": 0.0, "cell": f"{value:.2f}%"})
            else:
                out.append(nan)
        return out[0], out[1]
    out = []
    for key in ("best_eval", "final_eval"):
        stats = block.get(key, {}).get("top1")
        if not stats:
            out.append(nan)
            continue
        # Errors from accuracies: the mean flips, the std stays, the best is the top accuracy.
        mean, std, best = 100 * (1 - stats["mean"]), 100 * stats["std"], 100 * (1 - stats["max"])
        cell = f"{mean:.2f} ± {std:.2f}% (best {best:.2f}%, n={stats['n']})"
        out.append({"mean": mean, "std": std, "cell": cell})
    return out[0], out[1]


def mean_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A population's metrics lines as one curve: the members' mean top-1 per step and split
    (a single run's lines as they are)."""
    if not any("member" in x for x in lines):
        return lines
    groups: dict[tuple[int, str], list[float]] = {}
    for x in lines:
        if x.get("top1") is None:  # a stopped member's row, or a non-finite value
            continue
        groups.setdefault((x["step"], x["split"]), []).append(x["top1"])
    return [{"step": s, "split": sp, "top1": sum(v) / len(v)} for (s, sp), v in groups.items()]


def collect(sweep: dict[str, Any], runs: Path, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paper = sweep.get("paper_error", {})
    paper_head = " paper |" if paper else ""
    header = f"| member | model | params | GMACs | best test error | final test error |{paper_head}"
    rows = [
        header + " train time |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * (2 if paper else 1),
    ]
    points, curves, results, bands = [], [], [], []
    for member in sweep["members"]:
        name = member_name(member)
        result = read_member(runs / name)
        if result is None:
            rows.append(f"| {name} | (not run) | | | | |{' |' if paper else ''} |")
            continue
        results.append(result)
        s = result["summary"]
        best, final = errors(s)
        ref = paper.get(str(member.get("depth", "")), "")
        unfinished = "" if s["status"] == "finished" else f" ({s['status']})"
        paper_cell = (f" {ref:.2f}% |" if ref != "" else " |") if paper else ""
        rows.append(
            f"| {name} | {s['model']} | {s['num_params']:,} | {gmacs(result):.4g} | "
            f"{best['cell']} | {final['cell']} |{paper_cell} {s['train_seconds']:.0f} s"
            f"{unfinished} |"
        )
        depth = member.get("depth")
        if depth is not None and s.get("final_eval"):
            points.append((int(depth), final["mean"], ref, final["std"]))
        curves.append((name, mean_lines(result["lines"])))
        if s.get("population"):
            # Summaries written before steps_per_epoch was recorded: a finished run's ratio.
            per_epoch = s.get("steps_per_epoch") or s["step"] / s["epochs"]
            bands.append((name, epoch_bands(result["lines"], per_epoch)))

    source = sweep.get("paper_source", "")
    counts = {
        r["summary"]["final_eval"]["num_examples"]
        for r in results
        if r["summary"].get("final_eval")
    }
    sizes = {r["summary"].get("population", {}).get("size", 1) for r in results}
    seeds = (
        "with one seed per member, differences of a few examples are noise."
        if sizes <= {1}
        else f"each member is a population of {'/'.join(map(str, sorted(sizes)))} (mean ± "
        "sample std over the members that finished, the best member in brackets; the plot's "
        "error bars are that std, its curves the members' mean)."
    )
    resolution = (
        f" One test example is {100 / min(counts):.2f}% of error; {seeds}" if counts else ""
    )
    table = "\n".join(
        [
            f"# Sweep `{sweep['name']}`",
            "",
            f"Config: `{sweep['config']}` with {sweep['members']}; flags {sweep.get('flags', [])}. "
            "Errors are 100% − top-1 on the whole test split; GMACs per image at the trained "
            "resolution (exact, from the jaxpr)."
            + (f" Paper column: {source}." if source else "")
            + resolution,
            f"Made by `python -m experiments.sweep --sweep experiments/sweeps/{sweep['name']}.py` "
            f"on {datetime.date.today()}, {platform.machine()} with {os.cpu_count()} CPUs "
            f"(train times are from the members' summaries).",
            "",
            *rows,
            "",
            "![test error vs depth](error_vs_depth.png)",
            "",
            "![training curves](curves.png)",
            *(["", "![population bands per epoch](bands.png)"] if bands else []),
        ]
    )
    if bands:
        plot_bands(bands, out / "bands.png")
    (out / "table.md").write_text(table + "\n")

    if points:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        depths = [p[0] for p in points]
        ax.errorbar(depths, [p[1] for p in points], yerr=[p[3] for p in points], fmt="o-",
                    capsize=3, label="measured (final)")  # fmt: skip
        if any(p[2] != "" for p in points):
            ax.plot(depths, [p[2] for p in points], "s--", label=source or "paper")
        ax.set(xlabel="depth (layers)", ylabel="test error (%)", xscale="log", xticks=depths)
        ax.set_xticklabels([str(d) for d in depths])
        ax.minorticks_off()
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "error_vs_depth.png", dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, lines) in enumerate(curves):
        color = f"C{i}"
        train = [(x["step"], 100 * (1 - x["top1"])) for x in lines if x["split"] == "train"]
        test = [(x["step"], 100 * (1 - x["top1"])) for x in lines if x["split"] == "eval"]
        if train:
            ax.plot(*zip(*train, strict=True), color=color, linewidth=0.8, alpha=0.7)
        if test:
            ax.plot(*zip(*test, strict=True), color=color, linewidth=2.2, marker="o", label=name)
    ax.set(
        xlabel="iteration",
        ylabel="error (%)",
        title="thin: train, bold: test (He et al. Fig. 6 style)",
    )
    # Errors span 50% to a fraction of 1%, and training error reaches 0: log above 0.1%.
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sweep", required=True, help="experiments/sweeps/<name>.py")
    parser.add_argument("--runs", default="runs/sweeps", help="parent of the members' workdirs")
    parser.add_argument("--results", default="experiments/results", help="parent of the tables")
    parser.add_argument("--launcher", choices=("local", "slurm", "tpu"), default="local")
    parser.add_argument("--member", type=int, default=None, help="run only this member index")
    parser.add_argument("--collect", action="store_true", help="only collect table and plots")
    args = parser.parse_args()
    sweep = load_sweep(args.sweep)
    runs = Path(args.runs) / sweep["name"]
    if args.member is not None and not 0 <= args.member < len(sweep["members"]):
        raise SystemExit(
            f"sweep: error: --member={args.member} not in [0, {len(sweep['members'])})"
        )
    if args.launcher == "slurm":
        print(f"sbatch {slurm_script(sweep, args.sweep, runs.resolve())}")
        return 0
    if args.launcher == "tpu":
        print("\n".join(tpu_commands(sweep, runs)))
        return 0
    code = 0 if args.collect else run_local(sweep, runs, args.member)
    if args.member is None:
        print(collect(sweep, runs, Path(args.results) / sweep["name"]))
    return code


if __name__ == "__main__":
    sys.exit(main())
