"""Sweeps: every shipped sweep names configs that load; a tiny sweep runs, skips finished
members on a rerun, resumes unfinished ones, and writes its table and plots; the cluster
launchers write an sbatch array and print TPU commands."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

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
