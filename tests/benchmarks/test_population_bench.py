"""The population benchmark's pure parts (its measurements run in `make bench-population`
and, on a lent GPU, experiments/benchmarks/gpu/population.sh)."""

import subprocess
from pathlib import Path

from experiments.benchmarks import population

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_gives_each_population_its_gain_over_one_member():
    rows = [
        {
            "model": "resnet20",
            "k": 0,
            "batching": "—",
            "step_s": 0.5,
            "img_s": 256.0,
            "compile_s": 9.0,
        },
        {
            "model": "resnet20",
            "k": 4,
            "batching": "vmap",
            "step_s": 1.0,
            "img_s": 512.0,
            "compile_s": 12.0,
        },
        {"model": "resnet20", "k": 8, "batching": "map", "error": "over 900 s"},
    ]
    table = population.table(rows)
    assert "| resnet20 | single run | — | 0.500 | 256 | 1.00× | 9.0 |" in table
    assert "| resnet20 | 4 | vmap | 1.000 | 512 | 2.00× | 12.0 |" in table
    assert "| resnet20 | 8 | map | over 900 s |" in table


def test_the_gpu_script_parses_and_names_the_benchmark():
    script = ROOT / "experiments" / "benchmarks" / "gpu" / "population.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "experiments/benchmarks/population.py" in text and "--ks 1 2 4 8" in text
