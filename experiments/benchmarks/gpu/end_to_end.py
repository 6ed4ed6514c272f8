"""End-to-end training throughput from `python -m resflax.main` runs' own logs: the steady-state
img/s of each run (the median of its logged windows after the first `--skip`, which hold the
compile and the pipelines' warm-up), each beside the fake-data run of the same step and the
MLPerf Training v4.0 ResNet-50 per-GPU pace (NVIDIA's submission, input pipeline included).

    python experiments/benchmarks/gpu/end_to_end.py OUT.md CARD fake=/tmp/w_fake dali=/tmp/w_dali

Used by experiments/benchmarks/gpu/gpu_input.sh; tested on CPU (tests/benchmarks).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

# img/s per GPU of NVIDIA's MLPerf Training v4.0 ResNet-50 (closed division, DALI input).
MLPERF = {"H100": 7150.0, "H200": 7950.0}
TARGET_VS_FAKE = 0.95


def steady_rate(workdir: Path, skip: int = 2) -> tuple[float, int]:
    """(median img/s of the logged training windows after the first `skip`, windows used)."""
    rates = []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "images_per_sec" in row:
            rates.append(float(row["images_per_sec"]))
    kept = rates[skip:]
    if not kept:
        raise ValueError(f"{workdir}: {len(rates)} logged windows, none after the first {skip}")
    return statistics.median(kept), len(kept)


def mlperf_pace(card: str) -> float | None:
    return next((pace for name, pace in MLPERF.items() if name in card), None)


def table(card: str, runs: dict[str, Path | str]) -> str:
    """A row per run: its steady img/s, x the fake-data run, x MLPerf's pace on this card."""
    rates: dict[str, tuple[float, int] | str] = {}
    for name, where in runs.items():
        try:
            rates[name] = steady_rate(Path(where))
        except (OSError, ValueError) as e:
            rates[name] = str(e).splitlines()[0] if str(e) else type(e).__name__
    fake = rates.get("fake")
    pace = mlperf_pace(card)
    lines = [
        f"Card: {card}. Target: DALI >= {TARGET_VS_FAKE}x the fake-data step and >= MLPerf "
        f"v4.0's per-GPU pace ({', '.join(f'{k} {v:,.0f}' for k, v in MLPERF.items())} img/s).",
        "",
        "| input | steady img/s | windows | x fake data | x MLPerf v4.0 pace |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rate in rates.items():
        if isinstance(rate, str):
            lines.append(f"| {name} | not measured: {rate} | - | - | - |")
            continue
        value, windows = rate
        vs_fake = f"{value / fake[0]:.3f}" if isinstance(fake, tuple) else "-"
        vs_pace = f"{value / pace:.3f}" if pace else "-"
        lines.append(f"| {name} | {value:,.0f} | {windows} | {vs_fake} | {vs_pace} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    out, card, *pairs = argv
    runs = dict(pair.split("=", 1) for pair in pairs)
    text = table(card, runs)
    Path(out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
