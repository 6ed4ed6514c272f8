"""Sweeps: every shipped sweep names configs that load; a tiny sweep runs, skips finished
members on a rerun, resumes unfinished ones, and writes its table and plots; the cluster
launchers write an sbatch array and print TPU commands."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import sweep as sweep_lib
from tests.test_main import ROOT, TINY

SWEEPS = sorted((ROOT / "experiments" / "sweeps").glob("[!_]*.py"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_shipped_sweep_members_have_loadable_configs(path):
    sweep = sweep_lib.load_sweep(str(path))
    assert sweep["members"]
    for member in sweep["members"]:
        file, _, arg = sweep["config"].format(**member).partition(":")
        module = importlib.import_module(f"experiments.configs.{Path(file).stem}")
        assert module.get_config(arg).model.name
    for depth, error in sweep.get("paper_error", {}).items():
        assert {"depth": int(depth)} in sweep["members"] and 0 < error < 100


def write_sweep(tmp_path, flags):
    path = tmp_path / "tiny_depths.py"
    path.write_text(
        "def get_sweep():\n"
        "    return {'config': 'experiments/configs/digits.py:resnet{depth}',\n"
        "            'members': [{'depth': 20}, {'depth': 32}],\n"
        f"            'flags': {flags!r}, 'paper_error': {{'20': 1.0, '32': 2.0}}}}\n"
    )
    return path


def run_sweep(path, tmp_path, *extra):
    return subprocess.run(
        [sys.executable, "-m", "experiments.sweep", f"--sweep={path}",
         f"--runs={tmp_path / 'runs'}", f"--results={tmp_path / 'results'}", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_tiny_sweep_runs_skips_resumes_and_reports(tmp_path):
    flags = [*TINY, "--config.num_steps=4", "--config.eval_every_steps=2"]
    path = write_sweep(tmp_path, [*flags, "--config.stop_at_step=2"])
    done = run_sweep(path, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = tmp_path / "runs" / "tiny_depths"
    status = lambda d: json.loads((runs / d / "summary.json").read_text())["status"]  # noqa: E731
    assert status("depth20") == status("depth32") == "stopped"
    path = write_sweep(tmp_path, flags)  # the same members, now to the end: they resume
    done = run_sweep(path, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("resuming at step 2") == 2
    assert status("depth20") == status("depth32") == "finished"
    again = run_sweep(path, tmp_path)
    assert again.stdout.count("finished earlier: skipped") == 2
    results = tmp_path / "results" / "tiny_depths"
    table = (results / "table.md").read_text()
    assert "| depth20 | resnet20 |" in table and "| depth32 | resnet32 |" in table
    assert "1.00%" in table and "2.00%" in table  # the paper column
    for png in ("error_vs_depth.png", "curves.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_slurm_launcher_writes_an_array_job(tmp_path):
    path = write_sweep(tmp_path, [])
    done = run_sweep(path, tmp_path, "--launcher=slurm")
    assert done.returncode == 0, done.stderr[-2000:]
    script = Path(done.stdout.split()[-1])
    text = script.read_text()
    assert done.stdout.startswith("sbatch ") and "#SBATCH --array=0-1" in text
    assert '--member "$SLURM_ARRAY_TASK_ID"' in text and f"--sweep {path}" in text


def test_tpu_launcher_prints_one_command_per_member(tmp_path):
    done = run_sweep(write_sweep(tmp_path, []), tmp_path, "--launcher=tpu")
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and all("--worker=all" in x for x in lines)
    assert all("--config.distributed.enabled=True" in x for x in lines)
    assert "digits.py:resnet32" in lines[1]


def test_unknown_sweep_file_is_one_line(tmp_path):
    done = run_sweep(tmp_path / "nope.py", tmp_path)
    assert done.returncode != 0 and done.stderr.strip().startswith("sweep: error: no sweep file")


def _population_member(workdir, depth, top1s):
    """What a population run leaves for `collect`: its summary, metrics and config."""
    workdir.mkdir(parents=True)
    rows = [{"member": k, "status": "finished", "final_eval": {"top1": t}, "best_eval":
             {"top1": t + 0.01}} for k, t in enumerate(top1s)]  # fmt: skip
    stats = {"top1": {"mean": float(np.mean(top1s)), "std": float(np.std(top1s, ddof=1)),
                      "min": min(top1s), "max": max(top1s), "n": len(top1s)}}  # fmt: skip
    best = {"top1": {k: v + 0.01 if k in ("mean", "min", "max") else v
                     for k, v in stats["top1"].items()}}  # fmt: skip
    summary = {
        "status": "finished", "model": f"resnet{depth}", "num_params": 1000,
        "num_classes": 10, "image_shape": [8, 8, 1], "train_seconds": 10.0,
        "total_steps": 20, "epochs": 2.0, "steps_per_epoch": 10,
        "final_eval": {"top1": stats["top1"]["mean"], "num_examples": 359},
        "best_eval": {"top1": max(top1s) + 0.01},
        "population": {"size": len(top1s), "members": rows, "final_eval": stats,
                       "best_eval": best},
    }  # fmt: skip
    (workdir / "summary.json").write_text(json.dumps(summary))
    lines = [
        {"step": s, "split": sp, "member": k, "top1": t, "loss": 1 - t}
        for s in (10, 20) for sp in ("train", "eval") for k, t in enumerate(top1s)
    ]  # fmt: skip
    # A member that stopped leaves one row without metrics (population_loop): skipped by both.
    lines.append({"step": 15, "split": "train", "member": len(top1s), "status": "stopped",
                  "reason": "non-finite loss or state"})  # fmt: skip
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (workdir / "config.json").write_text(json.dumps({"model": {"name": f"resnet{depth}"}}))


def test_a_sweep_of_populations_reports_mean_std_and_best(tmp_path):
    sweep = {"name": "pops", "config": "experiments/configs/digits.py:resnet{depth}",
             "members": [{"depth": 20}, {"depth": 32}], "paper_error": {"20": 8.75}}  # fmt: skip
    _population_member(tmp_path / "runs" / "depth20", 20, [0.90, 0.92, 0.94])
    _population_member(tmp_path / "runs" / "depth32", 32, [0.95, 0.95])
    table = sweep_lib.collect(sweep, tmp_path / "runs", tmp_path / "out")
    # Errors 10, 8, 6 %: mean 8.00, sample std 2.00, best member 6.00.
    assert "| 8.00 ± 2.00% (best 6.00%, n=3) |" in table
    assert "| 5.00 ± 0.00% (best 5.00%, n=2) |" in table
    assert "8.75%" in table and "each member is a population of 2/3" in table
    assert "![population bands per epoch](bands.png)" in table
    for png in ("error_vs_depth.png", "curves.png", "bands.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = sweep_lib.mean_lines(
        [json.loads(x) for x in (tmp_path / "runs/depth20/metrics.jsonl").read_text().splitlines()]
    )
    assert {(x["step"], x["split"]): round(x["top1"], 6) for x in curve} == {
        (s, sp): 0.92 for s in (10, 20) for sp in ("train", "eval")
    }


def test_epoch_bands_are_the_members_mean_and_sample_std_per_epoch():
    """Epoch e holds the evaluation at its end and each member's mean training loss within it;
    a non-finite value (a diverged member) is left out and the count says so."""
    from experiments.bands import epoch_bands

    lines = [{"step": s, "split": "train", "member": k, "loss": loss}
             for k, losses in enumerate([(4.0, 2.0, 1.0, 1.0), (6.0, 4.0, 3.0, float("nan"))])
             for s, loss in zip((5, 10, 15, 20), losses, strict=True)]  # fmt: skip
    evals = ((10, (0.5, 0.7)), (20, (0.8, 0.9)))
    lines += [{"step": s, "split": "eval", "member": k, "top1": t}
              for s, tops in evals for k, t in enumerate(tops)]  # fmt: skip
    b = epoch_bands(lines, steps_per_epoch=10)
    np.testing.assert_array_equal(b["epoch"], [1, 2])
    np.testing.assert_allclose(b["test_mean"], [0.6, 0.85])
    np.testing.assert_allclose(
        b["test_std"], [np.std([0.5, 0.7], ddof=1), np.std([0.8, 0.9], ddof=1)]
    )
    # Epoch 1: members' means 3.0 and 5.0; epoch 2: 1.0 and (3.0, nan) -> nan, left out.
    np.testing.assert_allclose(b["loss_mean"], [4.0, 1.0])
    assert b["loss_n"].tolist() == [2, 1] and np.isnan(b["loss_std"][1])
