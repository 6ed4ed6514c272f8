"""Which examples a batch holds and how each is cropped, decided on the host from (seed, epoch,
batch index) with numpy alone: the DALI pipeline (resflax.data.dali) only decodes, crops,
resizes, flips and normalises what this plan names. A batch is therefore a pure function of its
position, so a run resumes exactly from two integers, as every other source does, and the plan
is tested without DALI.

Order: each epoch is a permutation of the split drawn from (seed, epoch); its global batch b is
examples [b * B, (b + 1) * B) of that permutation, of which process p takes every P-th from p
(disjoint shards, as `ArrayIterator` and tf.data's `shard` interleave them).
Crop (Szegedy et al. 2015, as the tf.data path): area 8-100% of the image, aspect ratio 3/4-4/3
drawn log-uniformly, up to 10 attempts, the whole image when none fits; flip with probability
1/2. Evaluation: the split in order, process p taking every P-th example, padded to the same
number of full batches on every process and masked.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

AREA = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
ATTEMPTS = 10


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch's choices: the examples (indices into the split), and for training each
    example's crop window (pixels, rows then columns) and flip."""

    indices: np.ndarray
    mask: np.ndarray
    anchor: np.ndarray | None = None  # [n, 2] (y, x)
    shape: np.ndarray | None = None  # [n, 2] (height, width)
    flip: np.ndarray | None = None  # [n] bool


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_indices(
    order: np.ndarray, index: int, local_batch: int, process_index: int, process_count: int
) -> np.ndarray:
    """This process's examples of the epoch's global batch `index`."""
    start = index * local_batch * process_count
    return order[start + process_index : start + local_batch * process_count : process_count]


def crop_windows(
    sizes: np.ndarray, rng: np.random.Generator, area: tuple[float, float] = AREA,
    ratio: tuple[float, float] = RATIO, attempts: int = ATTEMPTS,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Random-resized-crop windows for images of `sizes` ([n, 2] height, width): anchors and
    shapes, [n, 2] int32 each."""
    n = len(sizes)
    height, width = sizes[:, :1].astype(np.float64), sizes[:, 1:].astype(np.float64)
    target = rng.uniform(*area, (n, attempts)) * height * width
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, attempts)))
    w = np.round(np.sqrt(target * aspect))
    h = np.round(np.sqrt(target / aspect))
    fits = (w >= 1) & (h >= 1) & (w <= width) & (h <= height)
    first = np.argmax(fits, axis=1)
    found = fits[np.arange(n), first]
    rows = np.arange(n)
    h = np.where(found, h[rows, first], height[:, 0])
    w = np.where(found, w[rows, first], width[:, 0])
    offsets = rng.random((n, 2))
    y = np.floor(offsets[:, 0] * (height[:, 0] - h + 1))
    x = np.floor(offsets[:, 1] * (width[:, 0] - w + 1))
    return np.stack([y, x], 1).astype(np.int32), np.stack([h, w], 1).astype(np.int32)


def train_batch(
    indices: np.ndarray, sizes: np.ndarray, *, seed: int, epoch: int, index: int,
    process_index: int,
) -> Batch:  # fmt: skip
    """The crops and flips of this process's batch `index` of `epoch`, whose examples are
    `indices` (from `train_indices`) with image `sizes` ([n, 2] height, width, read from their
    headers)."""
    rng = np.random.default_rng([seed, epoch, index, process_index])
    anchor, shape = crop_windows(sizes, rng)
    flip = rng.random(len(indices)) < 0.5
    return Batch(indices, np.ones(len(indices), bool), anchor, shape, flip)


def eval_batches(
    num_examples: int, local_batch: int, process_index: int, process_count: int
) -> list[Batch]:
    """This process's evaluation batches: every example of the split once over all processes,
    each process the same number of full batches; padding repeats example 0, masked."""
    steps = math.ceil(math.ceil(num_examples / process_count) / local_batch)
    mine = np.arange(process_index, num_examples, process_count)
    padded = np.zeros(steps * local_batch, np.int64)
    padded[: len(mine)] = mine
    mask = np.arange(steps * local_batch) < len(mine)
    return [
        Batch(padded[i : i + local_batch], mask[i : i + local_batch])
        for i in range(0, steps * local_batch, local_batch)
    ]
