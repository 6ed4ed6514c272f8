"""Image preprocessing as in the papers, in TensorFlow ops so that it runs inside `tf.data`
(and eagerly, for tests). Random choices use stateless ops seeded per example, so a pipeline
rebuilt at any position produces exactly the same batches.

CIFAR (He et al. 2015 §4.2): pad 4 pixels with zeros, random 32x32 crop, random horizontal flip,
per-channel mean/std. ImageNet (Szegedy et al. 2015 as used by He et al. and torchvision):
random-resized crop (area 8–100%, aspect ratio 3/4–4/3) to 224, flip; evaluation: resize the
shorter side to 256, center crop 224.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from resflax.data import tfds_spec
from resflax.extras import ON_USE, require


def _import_tensorflow() -> Any:
    """`import tensorflow`, its C++ INFO lines dropped. TensorFlow 2.21 writes them to the
    process's stderr while it loads, whatever TF_CPP_MIN_LOG_LEVEL says (on Intel CPUs: "oneDNN
    custom operations are on", after absl's "log messages before absl::InitializeLog()"
    warning), so a one-line error of the CLI would become five. Anything else it writes
    (warnings, errors) is passed on. tests/data/test_tfds.py pins the upstream behaviour."""
    require("train", "the tf.data pipeline (data.pipeline='tfdata')", modules=ON_USE["train"])
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        text = sink.read().decode(errors="replace")
    kept, info = [], False
    for line in text.splitlines():
        if line.startswith("WARNING: All log messages before absl::InitializeLog()"):
            continue
        if re.match(r"[IWEF]\d{4} ", line):
            info = line.startswith("I")
        if not info:
            kept.append(line)
    if kept:
        sys.stderr.write("\n".join(kept) + "\n")
    return tensorflow


tf = _import_tensorflow()

# TensorFlow only feeds data here; left alone it would reserve GPU memory JAX needs. (A
# RuntimeError means TF already initialised its devices elsewhere: nothing to change now.)
with contextlib.suppress(RuntimeError):
    tf.config.set_visible_devices([], "GPU")

# Per-channel statistics (0..255 units): kept beside the data sets' table.
MEAN_STD = tfds_spec.MEAN_STD


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    image = tf.cast(image, tf.float32)
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def cifar_train(image: tf.Tensor, seed: tf.Tensor, pad: int = 4) -> tf.Tensor:
    """Zero-pad by `pad`, crop back to the input size at a random offset, flip half the time.
    `seed`: int32/int64 shape [2] (stateless)."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    height, width, channels = image.shape
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(padded, (height, width, channels), seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def random_resized_crop(
    image: tf.Tensor,
    seed: tf.Tensor,
    size: int,
    area: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """Inception-style crop of `area` of the image with aspect `ratio`, resized to size x size
    (the whole image when no crop fits in 10 attempts), then a random horizontal flip."""
    box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=box_seed,
        min_object_covered=0.0, aspect_ratio_range=ratio, area_range=area, max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )  # fmt: skip
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, (size, size), method="bilinear")
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def resize_center_crop(image: tf.Tensor, size: int, resize: int) -> tf.Tensor:
    """Shorter side to `resize` (aspect kept), then the central size x size."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize / tf.reduce_min(shape)
    new = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new, method="bilinear")
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return tf.slice(image, [top, left, 0], [size, size, -1])


def decode(encoded: tf.Tensor, channels: int = 3) -> tf.Tensor:
    """PNG or JPEG bytes -> uint8 HWC."""
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    image.set_shape((None, None, channels))
    return image
