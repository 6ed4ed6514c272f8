"""tensorflow-datasets sources: CIFAR-10/100, ImageNet 2012, Imagenette, any image folder.

The training pipeline is rebuilt per epoch from (seed, epoch): file order and shuffle buffer are
seeded by them, augmentation by (seed, epoch, example index), so a position is two integers and
resuming skips the epoch's first `index` batches of *undecoded* records (no decoding, no
augmentation) and then yields exactly the batches the uninterrupted run would have seen.
Evaluation covers each example once: the last batch is padded and masked, and every process
yields the same number of batches (padding whole batches if its shard is shorter) so that
collective steps line up across hosts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from resflax.data import preprocess
from resflax.data.arrays import EpochPosition
from resflax.data.folder import check_image_folder
from resflax.data.tfds_spec import (  # noqa: F401 - spec_from_config, DataNotFoundError: API
    DataNotFoundError,
    Spec,
    epoch_steps,
    not_found,
    spec_from_config,
)


def _builder(spec: Spec) -> Any:
    import tensorflow_datasets as tfds

    if spec.name == "image_folder":
        if not spec.folder or not Path(spec.folder).is_dir():
            raise not_found(spec, f"data.folder={spec.folder!r}")
        check_image_folder(spec.folder, spec.train_split, spec.eval_split)
        return tfds.ImageFolder(spec.folder)
    # try_gcs=False: never wait on the network for metadata; an absent data set fails at once.
    return tfds.builder(spec.tfds_name, data_dir=spec.data_dir, try_gcs=False)


def _read(builder: Any, spec: Spec, split: Any, **kwargs: Any) -> Any:
    import tensorflow_datasets as tfds

    try:
        return builder.as_dataset(
            split=split, decoders={"image": tfds.decode.SkipDecoding()}, **kwargs
        )
    except AssertionError as e:  # tfds' way of saying "not prepared"
        raise not_found(spec, str(builder.data_dir)) from e


def _num_examples(builder: Any, spec: Spec, split: str) -> int:
    """From the split metadata; counted when there is none (tfds' mock data has none)."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError):
        dataset = _read(builder, spec, split)
        return int(dataset.reduce(np.int64(0), lambda count, _: count + 1))


def _subsplits(builder: Any) -> bool:
    # ImageFolder cannot read sub-splits; prepared tfds data sets can (reading only their files).
    import tensorflow_datasets as tfds

    return not isinstance(builder, tfds.ImageFolder)


class TfdsIterator(EpochPosition, Iterator[dict[str, np.ndarray]]):
    """Training batches (this process's share), endless, resumable at (epoch, index)."""

    def __init__(
        self, builder: Any, spec: Spec, local_batch: int, steps_per_epoch: int, *, seed: int,
        process_index: int, process_count: int,
    ) -> None:  # fmt: skip
        self.builder, self.spec, self.local_batch = builder, spec, local_batch
        self.steps_per_epoch, self.seed = steps_per_epoch, seed
        self.process_index, self.process_count = process_index, process_count
        self.epoch, self.index = 0, 0
        self._iterator: Iterator[Any] | None = None
        self._cached: Any = None

    def _restored(self) -> None:
        self._iterator = None  # the next batch rebuilds the epoch's pipeline at the position

    def _records(self, epoch_seed: int) -> Any:
        import tensorflow_datasets as tfds

        if self.spec.cache and self._cached is not None:
            return self._cached
        split, shard = self.spec.train_split, self.process_count > 1
        if shard and _subsplits(self.builder):
            split = tfds.split_for_jax_process(
                split, process_index=self.process_index, process_count=self.process_count
            )
            shard = False
        # File order seeded per epoch; not for ImageFolder, whose file shuffle takes no seed.
        shuffle_files = not self.spec.cache and _subsplits(self.builder)
        read_config = tfds.ReadConfig(shuffle_seed=epoch_seed if shuffle_files else None)
        records = _read(
            self.builder, self.spec, split, shuffle_files=shuffle_files, read_config=read_config
        )
        if shard:
            records = records.shard(self.process_count, self.process_index)
        if self.spec.cache:
            self._cached = records = records.cache()
        return records

    def _pipeline(self) -> Iterator[Any]:
        import tensorflow as tf

        spec, batch = self.spec, self.local_batch
        epoch_seed = int(np.random.default_rng([self.seed, self.epoch]).integers(2**31))
        records = self._records(epoch_seed).shuffle(
            spec.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False
        )
        start = self.index * batch
        records = records.take(self.steps_per_epoch * batch).skip(start)
        # Example i of process p is example i * processes + p of the epoch: its own seed.
        processes, index = self.process_count, self.process_index
        dataset = records.enumerate(start=start).map(
            lambda i, ex: _train_example(
                ex, tf.stack([epoch_seed, tf.cast(i * processes + index, tf.int32)]), spec
            ),
            num_parallel_calls=spec.parallel_calls, deterministic=True,
        )  # fmt: skip
        dataset = dataset.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        return iter(dataset.as_numpy_iterator())

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index >= self.steps_per_epoch:
            self.epoch, self.index, self._iterator = self.epoch + 1, 0, None
        if self._iterator is None:
            self._iterator = self._pipeline()
        batch = next(self._iterator)
        self.index += 1
        return {**batch, "mask": np.ones(self.local_batch, bool)}


def _image_label(example: Any, spec: Spec) -> tuple[Any, Any]:
    import tensorflow as tf

    image = preprocess.decode(example["image"])
    return image, tf.cast(example["label"], tf.int32)


def _train_example(example: Any, seed: Any, spec: Spec) -> dict[str, Any]:
    import tensorflow as tf

    image, label = _image_label(example, spec)
    if spec.kind == "cifar":
        image = tf.reshape(image, (spec.image_size, spec.image_size, 3))
        image = preprocess.cifar_train(image, seed)
    else:
        image = preprocess.random_resized_crop(image, seed, spec.image_size)
    return {"image": preprocess.normalize(image, spec.mean, spec.std), "label": label}


def _eval_example(example: Any, spec: Spec) -> dict[str, Any]:
    import tensorflow as tf

    image, label = _image_label(example, spec)
    if spec.kind == "cifar":
        image = tf.reshape(image, (spec.image_size, spec.image_size, 3))
    else:
        image = preprocess.resize_center_crop(image, spec.image_size, spec.eval_resize)
    return {"image": preprocess.normalize(image, spec.mean, spec.std), "label": label}


def eval_batches(
    builder: Any, spec: Spec, local_batch: int, num_batches: int, *, process_index: int,
    process_count: int,
) -> Iterator[dict[str, np.ndarray]]:  # fmt: skip
    """One pass over this process's share of the eval split, padded and masked to exactly
    `num_batches` batches of `local_batch`."""
    import tensorflow as tf

    records = _read(builder, spec, spec.eval_split, shuffle_files=False)
    if process_count > 1:
        records = records.shard(process_count, process_index)
    dataset = records.map(
        lambda ex: _eval_example(ex, spec), num_parallel_calls=spec.parallel_calls,
        deterministic=True,
    )  # fmt: skip
    dataset = dataset.batch(local_batch).prefetch(tf.data.AUTOTUNE)
    served = 0
    for batch in dataset.as_numpy_iterator():
        yield _pad(batch, local_batch)
        served += 1
    if served > num_batches:
        raise RuntimeError(f"eval shard has {served} batches, more than the {num_batches} planned")
    shape = (local_batch, spec.image_size, spec.image_size, 3)
    for _ in range(num_batches - served):
        yield {
            "image": np.zeros(shape, np.float32),
            "label": np.zeros(local_batch, np.int32),
            "mask": np.zeros(local_batch, bool),
        }


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    n = len(batch["label"])
    mask = np.arange(size) < n
    if n == size:
        return {**batch, "mask": mask}
    pad = lambda x: np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])  # noqa: E731
    return {"image": pad(batch["image"]), "label": pad(batch["label"]), "mask": mask}


def make_tfds_source(
    data: Any, *, batch_size: int, eval_batch_size: int, seed: int, process_index: int,
    process_count: int,
) -> Any:  # fmt: skip
    """A `DataSource` over a tfds data set or image folder; sizes are global."""
    from resflax.data.sources import DataSource, check_num_classes

    spec = spec_from_config(data)
    builder = _builder(spec)
    num_train = _num_examples(builder, spec, spec.train_split)
    num_eval = _num_examples(builder, spec, spec.eval_split)
    local, local_eval = batch_size // process_count, eval_batch_size // process_count
    steps_per_epoch = epoch_steps(spec, batch_size, num_train, process_count)
    eval_steps = math.ceil(math.ceil(num_eval / process_count) / local_eval)
    num_classes = int(builder.info.features["label"].num_classes)
    check_num_classes(data, num_classes)
    shard = dict(process_index=process_index, process_count=process_count)
    return DataSource(
        name=spec.name,
        train=TfdsIterator(builder, spec, local, steps_per_epoch, seed=seed, **shard),
        make_eval=lambda: eval_batches(builder, spec, local_eval, eval_steps, **shard),
        num_train=num_train,
        num_eval=num_eval,
        image_shape=(spec.image_size, spec.image_size, 3),
        num_classes=num_classes,
        steps_per_epoch=steps_per_epoch,
        per_process_shards=True,
    )
