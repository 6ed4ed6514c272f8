"""Issue 26's GPU measurement, prepared: the scripts parse, the end-to-end table computes its
ratios from runs' logs, and the pipelines-alone benchmark runs here on a few files (tf.data and,
where the dali extra is installed, DALI's CPU pipeline)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.benchmarks.gpu import end_to_end

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "experiments" / "benchmarks" / "gpu"


@pytest.mark.parametrize("script", ["gpu_input.sh", "carry_wheels.sh"])
def test_the_scripts_parse(script):
    subprocess.run(["bash", "-n", str(GPU / script)], check=True)


def test_gpu_input_runs_the_three_inputs_through_the_cli():
    text = (GPU / "gpu_input.sh").read_text()
    assert "python3 -m resflax.main" in text and "for input in fake dali tfdata" in text
    assert "--config.data.pipeline=dali" in text and "--config.dtype=bfloat16" in text
    assert "--config.batch_size=256" in text and "end_to_end.py" in text


def _run(root: Path, name: str, rates: list[float]) -> Path:
    workdir = root / name
    workdir.mkdir()
    rows = [{"step": 10 * (i + 1), "split": "train", "images_per_sec": r} for i, r in
            enumerate(rates)]  # fmt: skip
    rows.append({"step": 999, "split": "eval", "accuracy": 0.1})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return workdir


def test_steady_rate_skips_the_warm_up_windows(tmp_path):
    workdir = _run(tmp_path, "w", [100.0, 4000.0, 7000.0, 7200.0, 7100.0])
    assert end_to_end.steady_rate(workdir) == (7100.0, 3)
    with pytest.raises(ValueError, match="2 logged windows, none after the first 2"):
        end_to_end.steady_rate(_run(tmp_path, "short", [1.0, 2.0]))


def test_the_table_sets_dali_beside_fake_data_and_mlperf(tmp_path):
    runs = {
        "fake": _run(tmp_path, "fake", [1.0, 1.0, 8000.0, 8000.0]),
        "dali": _run(tmp_path, "dali", [1.0, 1.0, 7600.0, 7600.0]),
        "tfdata": tmp_path / "missing",
    }
    text = end_to_end.table("NVIDIA H100 80GB HBM3, 580.159.04", runs)
    assert "| fake | 8,000 | 2 | 1.000 | 1.119 |" in text
    assert "| dali | 7,600 | 2 | 0.950 | 1.063 |" in text
    assert "| tfdata | not measured:" in text
    assert end_to_end.mlperf_pace("NVIDIA H200") == 7950.0


def test_the_pipelines_alone_benchmark_runs_here(tmp_path):
    out = tmp_path / "alone.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "benchmarks" / "input_pipelines.py"),
         "--folder", str(tmp_path / "jpegs"), "--write", "24", "--batch", "4", "--batches", "2",
         "--warmup", "1", "--dtype", "float32", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [r["pipeline"] for r in rows] == ["tfdata", "dali", "dali host feeding"]
    assert rows[0]["images_per_sec"] > 0 and rows[0]["dtype"] == "float32"
    assert len(list((tmp_path / "jpegs" / "train").rglob("*.jpg"))) == 24
    dali = rows[1]
    assert dali.get("images_per_sec", 0) > 0 or "not installed" in dali["error"], dali
    assert "| tfdata | cpu | 4 | float32 |" in out.read_text()
