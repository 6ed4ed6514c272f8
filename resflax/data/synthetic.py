"""Synthetic batches for throughput runs: one fixed random batch, repeated. It measures the
model and the step, never the input pipeline; its position is the number of batches served."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]


class SyntheticIterator(Iterator[Batch]):
    """Endless batches of `batch_size` random images (NHWC float32) and labels; with
    `num_batches` set, a finite pass of that many (for evaluation)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        batch_size: int,
        *,
        seed: int = 0,
        num_batches: int | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be positive")
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be at least 1")
        rng = np.random.default_rng(seed)
        self.batch = {
            "image": rng.standard_normal((batch_size, *image_shape), dtype=np.float32),
            "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
            "mask": np.ones(batch_size, bool),
        }
        self.num_batches = num_batches
        self.index = 0

    def position(self) -> dict[str, int]:
        return {"index": self.index}

    def restore(self, position: dict[str, Any]) -> None:
        index = int(position["index"])
        if index < 0:
            raise ValueError(f"position {position} is negative")
        self.index = index

    def __next__(self) -> Batch:
        if self.num_batches is not None and self.index >= self.num_batches:
            raise StopIteration
        self.index += 1
        return self.batch
