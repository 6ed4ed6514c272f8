"""The tensorflow-datasets sources' table and the config's data block read into a `Spec`
(no TensorFlow needed: the DALI pipeline reads it too): dataset defaults, checks that name the
bad value, and the error for a data set that is not prepared."""

from __future__ import annotations

import dataclasses
from typing import Any

# Per-channel statistics of the training splits, in 0..255 pixel units.
MEAN_STD = {
    "cifar10": ((125.31, 122.95, 113.87), (62.99, 62.09, 66.70)),
    "cifar100": ((129.30, 124.07, 112.43), (68.17, 65.39, 70.42)),
    "imagenet": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
}

# name -> (tfds name, train split, eval split, preprocessing kind, image size)
DATASETS = {
    "cifar10": ("cifar10", "train", "test", "cifar", 32),
    "cifar100": ("cifar100", "train", "test", "cifar", 32),
    "imagenet2012": ("imagenet2012", "train", "validation", "imagenet", 224),
    "imagenette": ("imagenette/full-size-v2", "train", "validation", "imagenet", 224),
    "image_folder": (None, "train", "test", "imagenet", 224),
}
PREPARE = {
    "imagenet2012": "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
    "image-net.org into <data_dir>/downloads/manual/, then `tfds build imagenet2012 "
    "--data_dir=<data_dir>`",
    "image_folder": "put images in <data.folder>/<split>/<class name>/*.jpg|jpeg|png",
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the pipeline needs from the config's data block, with dataset defaults filled."""

    name: str
    tfds_name: str | None
    data_dir: str | None
    folder: str | None
    train_split: str
    eval_split: str
    kind: str
    image_size: int
    eval_resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    shuffle_buffer: int
    cache: bool
    parallel_calls: int


def spec_from_config(data: Any) -> Spec:
    tfds_name, train, test, kind, size = DATASETS[data.name]
    if not 0 < data.crop_fraction <= 1:
        raise ValueError(f"data.crop_fraction={data.crop_fraction} must be in (0, 1]")
    if data.shuffle_buffer < 1:
        raise ValueError(f"data.shuffle_buffer={data.shuffle_buffer} must be at least 1")
    if kind == "cifar" and data.image_size not in (None, size):
        raise ValueError(
            f"data.image_size={data.image_size}: {data.name} images are {size}x{size} "
            "(leave it unset)"
        )
    stats = MEAN_STD.get(data.name, MEAN_STD["imagenet"])
    size = data.image_size or size
    return Spec(
        name=data.name,
        tfds_name=tfds_name,
        data_dir=data.data_dir,
        folder=data.folder,
        train_split=data.train_split or train,
        eval_split=data.eval_split or test,
        kind=kind,
        image_size=size,
        eval_resize=round(size / data.crop_fraction),
        mean=tuple(data.mean or stats[0]),
        std=tuple(data.std or stats[1]),
        shuffle_buffer=data.shuffle_buffer,
        cache=data.cache,
        parallel_calls=data.parallel_calls,
    )


def epoch_steps(spec: Spec, batch_size: int, num_train: int, process_count: int) -> int:
    """Steps per epoch, the same on every process: each reads `num_train // process_count`
    examples in local batches; refuses a global batch larger than the training split."""
    steps = (num_train // process_count) // (batch_size // process_count)
    if steps < 1:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_train} training examples of "
            f"{spec.name!r}"
        )
    return steps


class DataNotFoundError(ValueError):
    """The data set is not prepared where it was looked for."""


def not_found(spec: Spec, where: str) -> DataNotFoundError:
    how = PREPARE.get(
        spec.name, f"on a machine with internet: `tfds build {spec.tfds_name} --data_dir=<dir>`"
    )
    if spec.name == "image_folder":  # read where it lies: data_dir plays no part
        return DataNotFoundError(
            f"data set 'image_folder' is not prepared in {where}: no such directory; {how}; then "
            "point data.folder at it"
        )
    return DataNotFoundError(
        f"data set {spec.name!r} is not prepared in {where}; {how}; then point data.data_dir "
        "(or TFDS_DATA_DIR) at it"
    )
