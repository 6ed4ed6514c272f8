"""Data sources by name. Each gives a resumable training iterator and fresh evaluation passes
of host-local numpy batches; the loop sees only this interface."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from resflax.data.arrays import ArrayIterator
from resflax.data.synthetic import SyntheticIterator

# In memory: the embedded digits and synthetic batches; the MNIST family, read whole from IDX
# files (or through tensorflow-datasets) and augmented on the host. Through tf.data: the rest.
SOURCES = ("digits", "fake")
IDX_SOURCES = ("fashion_mnist", "mnist", "kmnist")
TFDS_SOURCES = ("cifar10", "cifar100", "imagenet2012", "imagenette", "image_folder")


@dataclasses.dataclass
class DataSource:
    """`train` yields this process's share of each global batch and has `position()` /
    `restore()`; `make_eval()` starts a pass that covers the `num_eval` examples exactly once
    (the last batch padded and masked)."""

    name: str
    train: Iterator[dict[str, Any]]
    make_eval: Callable[[], Iterator[dict[str, Any]]]
    num_train: int
    num_eval: int
    image_shape: tuple[int, int, int]
    num_classes: int
    steps_per_epoch: int
    # Whether each process reads its own part of the data (then a position is only valid for
    # the same number of processes), or slices the same global batches (then it is portable).
    per_process_shards: bool = False


def check_num_classes(data: Any, found: int) -> None:
    """`data.num_classes`, where it is set for a data set that has its own classes, agrees."""
    if data.num_classes is not None and data.num_classes != found:
        raise ValueError(
            f"data.num_classes={data.num_classes}, but {data.name!r} has {found} classes; leave "
            f"data.num_classes unset (the data's count is used) or set it to {found}"
        )


def make_source(
    data: Any,
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    placement: Any = None,
) -> DataSource:
    """`data` is the config's `data` block; batch sizes are global (all processes together).
    `placement` (resflax.data.dali.Placement): where DALI works, for data.pipeline="dali"."""
    for what, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if size <= 0 or size % process_count:
            raise ValueError(f"{what}={size} is not divisible by the {process_count} processes")
    local, local_eval = batch_size // process_count, eval_batch_size // process_count
    shard = dict(process_index=process_index, process_count=process_count)
    if data.name == "digits":
        from resflax.data.digits import load_digits_split

        check_num_classes(data, 10)
        x_train, y_train, x_test, y_test = load_digits_split(data.test_fraction, data.split_seed)
        train = ArrayIterator(x_train, y_train, local, shuffle=True, seed=seed, **shard)
        return DataSource(
            name="digits",
            train=train,
            make_eval=lambda: ArrayIterator(x_test, y_test, local_eval, shuffle=False, **shard),
            num_train=len(x_train),
            num_eval=len(x_test),
            image_shape=tuple(x_train.shape[1:]),
            num_classes=10,
            steps_per_epoch=train.steps_per_epoch,
        )
    if data.name in IDX_SOURCES:
        from resflax.data.mnist_family import make_mnist_source

        return make_mnist_source(data, local=local, local_eval=local_eval, seed=seed, **shard)
    if data.name == "fake":
        return _fake(
            data, batch_size=batch_size, eval_batch_size=eval_batch_size, local=local,
            local_eval=local_eval, train_seed=seed + process_index, eval_seed=seed + 1,
        )  # fmt: skip
    if data.get("pipeline", "tfdata") == "dali":
        from resflax.data.dali import Placement, make_dali_source  # imports DALI: when chosen

        return make_dali_source(
            data, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
            placement=placement or Placement(), **shard,
        )  # fmt: skip
    if data.name in TFDS_SOURCES:
        from resflax.data.tfds import make_tfds_source  # imports TensorFlow: only when used

        return make_tfds_source(
            data, batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed, **shard
        )
    raise ValueError(
        f"data.name={data.name!r} is not one of {SOURCES + IDX_SOURCES + TFDS_SOURCES}"
    )


def _fake(
    data: Any, *, batch_size: int, eval_batch_size: int, local: int, local_eval: int,
    train_seed: int, eval_seed: int,
) -> DataSource:  # fmt: skip
    """Synthetic batches of `data.image_size` and `data.num_classes` (throughput runs)."""
    if data.num_classes is None or data.image_size is None:
        raise ValueError(
            f"data 'fake' needs data.num_classes (now {data.num_classes}) and "
            f"data.image_size (now {data.image_size})"
        )
    shape = (data.image_size, data.image_size, data.channels)
    num_eval_batches = -(-data.eval_size // eval_batch_size)
    return DataSource(
        name="fake",
        train=SyntheticIterator(shape, data.num_classes, local, seed=train_seed),
        make_eval=lambda: SyntheticIterator(
            shape, data.num_classes, local_eval, seed=eval_seed, num_batches=num_eval_batches
        ),
        num_train=data.train_size,
        num_eval=num_eval_batches * eval_batch_size,
        image_shape=shape,
        num_classes=data.num_classes,
        steps_per_epoch=max(1, data.train_size // batch_size),
    )
