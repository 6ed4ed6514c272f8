"""Batches from in-memory arrays: step-indexed, so a position is two integers and resuming is
exact; shuffled per epoch from the seed; evaluation pads the last batch and masks it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

Batch = dict[str, np.ndarray]


class EpochPosition:
    """A training iterator's place as (epoch, batch index within it): two integers that a
    checkpoint stores and `restore` checks against `steps_per_epoch`."""

    epoch: int = 0
    index: int = 0
    steps_per_epoch: int

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, position: dict[str, Any]) -> None:
        epoch, index = int(position["epoch"]), int(position["index"])
        if epoch < 0 or not 0 <= index <= self.steps_per_epoch:
            raise ValueError(f"position {position} is outside this data set")
        self.epoch, self.index = epoch, index
        self._restored()

    def _restored(self) -> None:
        """Hook for iterators that must rebuild state after a restore."""


class ArrayIterator(EpochPosition, Iterator[Batch]):
    """Yields batches of `batch_size` (this process's share of the global batch).

    train (`shuffle=True`): endless epochs, each a permutation drawn from (seed, epoch); the last
    incomplete batch of an epoch is dropped so every step sees a full batch.
    eval (`shuffle=False`): one pass in order; the last batch is padded with copies of the first
    example and masked out, so every example is counted exactly once.
    With several processes each takes a disjoint, interleaved slice of every global batch.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size <= 0:
            raise ValueError(f"batch_size={batch_size} must be positive")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        global_batch = batch_size * process_count
        if shuffle and global_batch > len(images):
            raise ValueError(
                f"global batch {global_batch} is larger than the {len(images)} training examples"
            )
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.process_index, self.process_count = process_index, process_count
        self.global_batch = global_batch
        self.epoch, self.index = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.images)
        return n // self.global_batch if self.shuffle else -(-n // self.global_batch)

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.images))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))

    def __next__(self) -> Batch:
        if self.index >= self.steps_per_epoch:
            if not self.shuffle:
                raise StopIteration
            self.epoch, self.index = self.epoch + 1, 0
        start = self.index * self.global_batch
        chosen = self._order()[start : start + self.global_batch]
        mask = np.ones(len(chosen), bool)
        if len(chosen) < self.global_batch:
            pad = self.global_batch - len(chosen)
            chosen = np.concatenate([chosen, np.full(pad, chosen[0])])
            mask = np.concatenate([mask, np.zeros(pad, bool)])
        mine = slice(self.process_index, None, self.process_count)
        self.index += 1
        return {
            "image": self.images[chosen[mine]],
            "label": self.labels[chosen[mine]],
            "mask": mask[mine],
        }
