"""How fast the MNIST family's training iterator feeds: is host augmentation in numpy (one
thread, resflax.data.augment) far ahead of what a train step consumes?

    python -m experiments.benchmarks.cpu.idx_feed [--folder DIR] [--batch 128] [--batches 2000]

Reads the real Fashion-MNIST IDX files (default folder: /usr/share/datasets/fashion-mnist,
`make data-fashion-mnist`) through `make_source`, as training does, then times `--batches`
training batches (after a warm-up) in five rounds and reports the median round's images per
second, one line per case: no augmentation, pad-crop-flip, pad-crop-flip with random erasing
(p = 0.5). A ResNet-20 train step on a CPU takes some 700-900 img/s, so the target is at least
five times that: 5,000 img/s.
"""

from __future__ import annotations

import argparse
import statistics
import time

TARGET = 5_000  # img/s: five times a CPU ResNet-20 step's appetite
CASES = {
    "none": dict(augment="none"),
    "pad_crop_flip": dict(augment="pad_crop_flip"),
    "pad_crop_flip+erasing": dict(augment="pad_crop_flip", random_erasing=0.5),
}


def rate(changes: dict, folder: str | None, batch: int, batches: int) -> tuple[float, float]:
    """(images per second, seconds to read the files and build the source)."""
    from experiments.configs import base
    from resflax.data.sources import make_source

    data = base.get_config().data
    data.update(dict(name="fashion_mnist", folder=folder, **changes))
    start = time.perf_counter()
    train = make_source(data, batch_size=batch, eval_batch_size=batch, seed=0).train
    load_seconds = time.perf_counter() - start
    for _ in range(5):
        next(train)
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(max(1, batches // 5)):
            next(train)
        rounds.append(max(1, batches // 5) * batch / (time.perf_counter() - start))
    return statistics.median(rounds), load_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", default=None, help="the IDX files (default: the Debian's)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=2000, help="batches timed per case")
    args = parser.parse_args()
    for name, changes in CASES.items():
        images_per_sec, load_seconds = rate(changes, args.folder, args.batch, args.batches)
        print(
            f"idx_feed fashion_mnist batch {args.batch} {name}: {images_per_sec:,.0f} img/s "
            f"({args.batch / images_per_sec * 1e3:.2f} ms/batch, {images_per_sec / TARGET:.0f}x "
            f"the {TARGET:,} img/s target; files read in {load_seconds:.2f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
