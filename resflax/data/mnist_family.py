"""Fashion-MNIST, MNIST and KMNIST: 28x28 grey images of 10 classes, small enough to hold in
memory, so they are read whole (from the IDX files, or through tensorflow-datasets) and fed by
the in-memory iterators, augmented on the host with numpy (resflax.data.augment): no tf.data,
and a position is two integers as for the embedded digits.

Config keys read from the data block (defaults in brackets): folder [None: DEFAULT_ROOT/<name
with "-">], reader ["idx" | "tfds"], augment [None: the data set's, "pad_crop_flip" for
Fashion-MNIST, "pad_crop" for MNIST and KMNIST, whose digits and characters are not mirror
symmetric; "none"], pad [4], random_erasing [0.0: off, else its probability], mean and std
[None: the training split's, 0..255 units], image_size [None; else it must be the files'],
data_dir (reader "tfds"), train_split and eval_split (reader "tfds"; the IDX files hold train
and test).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from resflax.data.arrays import ArrayIterator
from resflax.data.augment import Augment, AugmentedIterator, normalize
from resflax.data.sources import IDX_SOURCES, DataSource, check_num_classes
from resflax.data.tfds_spec import DataNotFoundError

NUM_CLASSES = 10
READERS = ("idx", "tfds")
AUGMENTS = {"none": (False, False), "pad_crop": (True, False), "pad_crop_flip": (True, True)}
DEFAULT_AUGMENT = {"fashion_mnist": "pad_crop_flip", "mnist": "pad_crop", "kmnist": "pad_crop"}
DEFAULT_ROOT = "/usr/share/datasets"
PAGES = {
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist",
    "mnist": "https://yann.lecun.com/exdb/mnist/",
    "kmnist": "https://github.com/rois-codh/kmnist",
}
DEBIAN = {"fashion_mnist": ("data-fashion-mnist", "dataset-fashion-mnist")}  # make target, package


def default_folder(name: str) -> str:
    return f"{DEFAULT_ROOT}/{name.replace('_', '-')}"


def how_to_get(name: str) -> str:
    """The end of a missing-file message: how to get the four IDX files of `name`."""
    download = (
        f"download the four IDX files from {PAGES[name]} and point --config.data.folder at them"
    )
    if name not in DEBIAN:
        return download
    target, package = DEBIAN[name]
    return f"get them with `make {target}` (installs the Debian package {package}) or {download}"


def augmentation(data: Any) -> Augment:
    """The config's augmentation, checked; reading no files (the config check calls it)."""
    name = data.get("augment") or DEFAULT_AUGMENT[data.name]
    if name not in AUGMENTS:
        raise ValueError(f"data.augment={name!r} is not one of {tuple(AUGMENTS)}")
    crop, flip = AUGMENTS[name]
    pad = data.get("pad", 4)
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"data.pad={pad!r} must be an integer >= 0 (pixels)")
    erasing = data.get("random_erasing", 0.0)
    if not 0 <= erasing <= 1:
        raise ValueError(f"data.random_erasing={erasing} must be a probability in [0, 1]")
    return Augment(pad=pad if crop else 0, flip=flip, erasing=erasing)


def check_config(data: Any) -> None:
    """Everything about the data block that can be checked without reading the data."""
    if data.name not in IDX_SOURCES:
        raise ValueError(f"data.name={data.name!r} is not one of {IDX_SOURCES}")
    reader = data.get("reader", "idx")
    if reader not in READERS:
        raise ValueError(f"data.reader={reader!r} is not one of {READERS}")
    if reader == "idx":
        for key, split in (("train_split", "train"), ("eval_split", "test")):
            if data.get(key) not in (None, split):
                raise ValueError(
                    f"data.{key}={data.get(key)!r}: the IDX files hold the train and test "
                    "splits (leave it unset, or use data.reader='tfds')"
                )
    for key, low in (("mean", 0), ("std", 1e-12)):
        value = data.get(key)
        bad = value is not None and (
            len(value) != 1 or not math.isfinite(value[0]) or value[0] < low
        )
        if bad:
            raise ValueError(
                f"data.{key}={value}: {data.name} images are grey: one finite value (0..255 units)"
                + (", positive" if key == "std" else "")
            )
    augmentation(data)


def load_arrays(data: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels): uint8 [N, H, W, 1] and int32."""
    if data.get("reader", "idx") == "tfds":
        return _tfds_arrays(data)
    from resflax.data.idx import load_idx_folder

    folder = data.folder or default_folder(data.name)
    hint = how_to_get(data.name)
    x, y, x_test, y_test = load_idx_folder(folder, num_classes=NUM_CLASSES, hint=hint)
    return x[..., None], y.astype(np.int32), x_test[..., None], y_test.astype(np.int32)


def _tfds_arrays(data: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds  # imports TensorFlow: only for reader="tfds"

    out: list[np.ndarray] = []
    for split in (data.train_split or "train", data.eval_split or "test"):
        data_dir = data.data_dir or "$TFDS_DATA_DIR or ~/tensorflow_datasets"
        where = f"{data.name!r} split {split!r} in {data_dir}"
        try:
            records = tfds.load(
                data.name, split=split, data_dir=data.data_dir, download=False, try_gcs=False
            )
        except AssertionError as e:  # tfds' way of saying "not prepared"
            raise DataNotFoundError(
                f"{where} is not prepared; on a machine with internet: `tfds build {data.name} "
                "--data_dir=<dir>`, then point data.data_dir at it, or use data.reader='idx'"
            ) from e
        # Not batch_size=-1: that batches by the split's recorded size, and where none is
        # recorded (tfds' mock data) TensorFlow aborts the process reserving sys.maxsize.
        batches = list(tfds.as_numpy(records.batch(10_000)))
        images = np.concatenate([b["image"] for b in batches])
        labels = np.concatenate([b["label"] for b in batches])
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 1:
            raise ValueError(f"{where}: images {images.dtype} {images.shape}, not uint8 grey")
        if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise ValueError(f"{where}: labels {labels.min()}..{labels.max()} outside [0, 10)")
        out += [images, labels.astype(np.int32)]
    return out[0], out[1], out[2], out[3]


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 [..., C] images (0..255 units), exactly, from a
    histogram of the 256 byte values: no float copy of the split."""
    values = np.arange(256, dtype=np.float64)
    mean, std = [], []
    for c in range(images.shape[-1]):
        counts = np.bincount(images[..., c].ravel(), minlength=256)
        m = counts @ values / counts.sum()
        mean.append(m)
        std.append(np.sqrt(counts @ (values - m) ** 2 / counts.sum()))
    return np.array(mean), np.array(std)


def make_mnist_source(
    data: Any, *, local: int, local_eval: int, seed: int, process_index: int, process_count: int
) -> DataSource:
    """The `DataSource` of `data.name` (one of IDX_SOURCES): batches of `local` examples (this
    process's share), training augmented, evaluation in order, padded and masked."""
    check_config(data)
    check_num_classes(data, NUM_CLASSES)
    x, y, x_test, y_test = load_arrays(data)
    height, width = x.shape[1:3]
    if data.image_size is not None and (data.image_size, data.image_size) != (height, width):
        raise ValueError(
            f"data.image_size={data.image_size}: {data.name} images are {height}x{width} "
            "(leave it unset)"
        )
    mean, std = channel_stats(x)
    if data.mean is not None:
        mean = np.asarray(data.mean, np.float64)
    if data.std is not None:
        std = np.asarray(data.std, np.float64)
    shard = dict(process_index=process_index, process_count=process_count)
    train = AugmentedIterator(
        x, y, local, seed=seed, mean=mean, std=std, augment=augmentation(data), **shard
    )
    x_eval = normalize(x_test, mean, std)
    return DataSource(
        name=data.name,
        train=train,
        make_eval=lambda: ArrayIterator(x_eval, y_test, local_eval, shuffle=False, **shard),
        num_train=len(x),
        num_eval=len(x_test),
        image_shape=(height, width, 1),
        num_classes=NUM_CLASSES,
        steps_per_epoch=train.steps_per_epoch,
    )
