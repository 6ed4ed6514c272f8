"""The products benchmark's shapes: every matrix product of ResNet-50's forward pass, read
from the model's jaxpr, with its count (the 1x1 convolutions and the classifier)."""

from experiments.benchmarks.micro.products import product_shapes
from resflax.models import cost


def test_resnet50_products_are_its_1x1_convolutions_and_classifier():
    counts = product_shapes("resnet50", 2)
    # 16 blocks x (conv1, conv3), 4 projections, the classifier.
    assert sum(counts.values()) == 16 * 2 + 4 + 1
    assert counts[(2 * 56 * 56, 64, 256)] == 4  # stage 1: three conv3 and the projection
    assert counts[(2 * 14 * 14, 1024, 256)] == 5  # stage 3: conv1 of blocks 1..5
    assert counts[(2, 2048, 1000)] == 1
    # Their multiply-adds plus the 3x3 convolutions' and the stem's are the zoo's count.
    spatial = 2 * (
        3 * 56 * 56 * 64 * 64 * 9 + 4 * 28 * 28 * 128 * 128 * 9
        + 6 * 14 * 14 * 256 * 256 * 9 + 3 * 7 * 7 * 512 * 512 * 9
        + 112 * 112 * 64 * 3 * 49
    )  # fmt: skip
    products = sum(n * m * ci * co for (m, ci, co), n in counts.items())
    assert products + spatial == 2 * cost("resnet50").macs


def test_cores_out_of_range_is_refused_with_the_valid_range():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = root / "experiments" / "benchmarks" / "micro" / "products.py"
    run = subprocess.run(
        [sys.executable, str(script), "--cores", "0"], capture_output=True, text=True,
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert run.returncode != 0
    assert f"--cores 0 must be between 1 and this machine's {len(os.sched_getaffinity(0))}" in (
        run.stderr
    )
