"""tensorflow-datasets pipelines, offline: tfds' mock data for CIFAR-10 and ImageNet, and real
image files (PNG and JPEG) in an image folder written by the tests."""

import contextlib
import json
import math
import time

import numpy as np
import pytest

# torchvision (where installed) before TensorFlow: collected after this file in one pytest
# process (`pytest tests/data tests/convert`), its import of triton (through torch._dynamo)
# segfaulted in triton's native library.
with contextlib.suppress(ImportError):
    import torchvision  # noqa: F401
import tensorflow as tf
import tensorflow_datasets as tfds
from ml_collections import ConfigDict
from PIL import Image

from experiments.configs import base
from resflax.data import preprocess
from resflax.data.sources import make_source
from resflax.data.tfds import DataNotFoundError, TfdsIterator, spec_from_config


def data_config(**changes):
    data = base.get_config().data
    data.update(changes)
    return data


def seed(a, b=0):
    return tf.constant([a, b], tf.int32)


# --- preprocessing, eagerly and inside tf.data -------------------------------------------


def test_cifar_crop_is_a_window_of_the_zero_padded_image_and_is_seeded():
    image = tf.constant(np.random.default_rng(0).integers(1, 255, (32, 32, 3)), tf.uint8)
    out = preprocess.cifar_train(image, seed(3))
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out, preprocess.cifar_train(image, seed(3)))
    padded = np.pad(image.numpy(), ((4, 4), (4, 4), (0, 0)))
    windows = [
        padded[i : i + 32, j : j + 32][:, ::flip]
        for i in range(9)
        for j in range(9)
        for flip in (1, -1)
    ]
    assert any(np.array_equal(out, w) for w in windows)
    outs = {preprocess.cifar_train(image, seed(s)).numpy().tobytes() for s in range(20)}
    assert len(outs) > 10  # offsets and flips vary with the seed


def test_random_resized_crop_shape_range_and_determinism():
    image = tf.constant(np.random.default_rng(0).integers(0, 255, (50, 70, 3)), tf.uint8)
    out = preprocess.random_resized_crop(image, seed(1), 24)
    assert out.shape == (24, 24, 3) and out.dtype == tf.float32
    np.testing.assert_array_equal(out, preprocess.random_resized_crop(image, seed(1), 24))
    assert not np.array_equal(out, preprocess.random_resized_crop(image, seed(2), 24))
    assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255


def test_resize_center_crop_keeps_aspect_and_centers():
    # A 100x200 image whose columns count up: the center crop's columns must be the middle.
    image = tf.constant(np.tile(np.arange(200, dtype=np.float32)[None, :, None], (100, 1, 3)))
    out = preprocess.resize_center_crop(image, size=32, resize=40)  # -> 40x80, crop 32x32
    assert out.shape == (32, 32, 3)
    middle = out.numpy()[0, :, 0]
    assert 80 < middle.mean() < 120 and np.all(np.diff(middle) > 0)


def test_preprocessing_is_the_same_inside_tf_data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 32, 32, 3)).astype(np.uint8)
    dataset = tf.data.Dataset.from_tensor_slices(images).enumerate()
    mapped = dataset.map(
        lambda i, x: preprocess.cifar_train(x, tf.stack([7, tf.cast(i, tf.int32)]))
    )
    for i, (got, image) in enumerate(zip(mapped.as_numpy_iterator(), images, strict=True)):
        np.testing.assert_array_equal(got, preprocess.cifar_train(tf.constant(image), seed(7, i)))
    mapped = dataset.map(lambda i, x: preprocess.resize_center_crop(x, 16, 20))
    for got, image in zip(mapped.as_numpy_iterator(), images, strict=True):
        np.testing.assert_allclose(got, preprocess.resize_center_crop(tf.constant(image), 16, 20))


def test_normalize_uses_per_channel_statistics():
    image = tf.fill((2, 2, 3), 128.0)
    out = preprocess.normalize(image, (128.0, 64.0, 0.0), (1.0, 2.0, 4.0)).numpy()
    np.testing.assert_allclose(out[0, 0], [0.0, 32.0, 32.0])


# --- mock tfds data sets ---------------------------------------------------------------------


def source(data, batch=8, eval_batch=8, seed=0, **shard):
    return make_source(data, batch_size=batch, eval_batch_size=eval_batch, seed=seed, **shard)


def test_mock_cifar10_batches_and_full_eval_coverage():
    with tfds.testing.mock_data(num_examples=21):
        src = source(data_config(name="cifar10"), batch=8, eval_batch=8)
        batch = next(src.train)
        assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and batch["mask"].all()
        assert src.num_classes == 10 and src.steps_per_epoch == 2
        masks = [b["mask"] for b in src.make_eval()]
        assert len(masks) == 3 and sum(m.sum() for m in masks) == 21 == src.num_eval


def test_mock_imagenet_random_sizes_become_fixed_crops():
    with tfds.testing.mock_data(num_examples=10):
        src = source(data_config(name="imagenet2012", image_size=32), batch=4, eval_batch=4)
        assert next(src.train)["image"].shape == (4, 32, 32, 3)
        batches = list(src.make_eval())
        assert all(b["image"].shape == (4, 32, 32, 3) for b in batches)
        assert sum(b["mask"].sum() for b in batches) == 10 and src.num_classes == 1000


# --- a real image folder ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes, 7 train and 3 test images each, of varied sizes, PNG and JPEG."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 7), ("test", 3)):
        for c in ("ant", "bee", "cow"):
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 255, (20 + i, 24 + 2 * i, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def folder_data(folder, **changes):
    return data_config(name="image_folder", folder=str(folder), image_size=16, **changes)


def test_image_folder_counts_classes_and_covers_eval(folder):
    src = source(folder_data(folder), batch=4, eval_batch=4)
    assert (src.num_train, src.num_eval, src.num_classes) == (21, 9, 3)
    assert src.steps_per_epoch == 5
    batches = list(src.make_eval())
    assert len(batches) == 3 and sum(b["mask"].sum() for b in batches) == 9
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_shuffles_are_deterministic_for_a_seed(folder):
    def first(seed, n=3):
        it = source(folder_data(folder), batch=4, seed=seed).train
        return [next(it)["image"] for _ in range(n)]

    a, b, c = first(0), first(0), first(1)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_resume_position_gives_the_same_next_batches(folder):
    straight = source(folder_data(folder), batch=4).train
    batches = [next(straight) for _ in range(8)]  # 5 per epoch: crosses into epoch 1
    first = source(folder_data(folder), batch=4).train
    for _ in range(3):
        next(first)
    resumed = source(folder_data(folder), batch=4).train
    resumed.restore(first.position())
    for expected in batches[3:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], expected["image"])
        np.testing.assert_array_equal(got["label"], expected["label"])
    assert resumed.position() == {"epoch": 1, "index": 3}


@pytest.mark.parametrize("count", [2, 3])
def test_process_shards_are_disjoint_and_cover(folder, count):
    spec = spec_from_config(folder_data(folder))
    names = []
    for index in range(count):
        src = source(
            folder_data(folder), batch=count, eval_batch=2 * count, process_index=index,
            process_count=count,
        )  # fmt: skip
        assert isinstance(src.train, TfdsIterator)
        records = src.train._records(epoch_seed=5)
        names.append({r["image/filename"] for r in records.as_numpy_iterator()})
        # The same number of eval batches of 2 on every process: ceil(ceil(9 / count) / 2).
        assert len(list(src.make_eval())) == math.ceil(math.ceil(9 / count) / 2)
    assert sum(len(n) for n in names) == len(set().union(*names)) == 21
    assert spec.name == "image_folder"


def test_eval_batches_match_across_processes_and_count_every_example(folder):
    total, lengths = 0, set()
    for index in range(2):
        src = source(
            folder_data(folder), batch=2, eval_batch=4, process_index=index, process_count=2
        )
        batches = list(src.make_eval())
        lengths.add(len(batches))
        total += sum(int(b["mask"].sum()) for b in batches)
    assert total == 9 and len(lengths) == 1


# --- offline failures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "how"),
    [("cifar10", "tfds build cifar10"), ("imagenet2012", "downloads/manual/")],
)
def test_missing_data_fails_fast_naming_where_and_how(tmp_path, name, how):
    start = time.monotonic()
    with pytest.raises(DataNotFoundError) as info:
        source(data_config(name=name, data_dir=str(tmp_path)))
    message = str(info.value)
    assert time.monotonic() - start < 20
    assert f"data set {name!r} is not prepared in" in message and str(tmp_path) in message
    assert how in message and "\n" not in message


def test_missing_image_folder_names_the_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"data\.folder="):
        source(data_config(name="image_folder", folder=str(tmp_path / "nope")))


def test_spec_defaults_follow_the_data_set():
    spec = spec_from_config(data_config(name="cifar100"))
    assert (spec.kind, spec.image_size, spec.eval_split) == ("cifar", 32, "test")
    assert spec.mean == preprocess.MEAN_STD["cifar100"][0]
    spec = spec_from_config(data_config(name="imagenet2012"))
    assert (spec.image_size, spec.eval_resize, spec.eval_split) == (224, 256, "validation")
    assert isinstance(base.get_config().data, ConfigDict)


# --- through the training loop ---------------------------------------------------------------


def loop_config(**changes):
    from tests.train.test_loop import small_config

    config = small_config(**changes)
    config.model.name = "resnet20"
    return config


def test_mock_cifar10_trains_and_evaluates_every_example(tmp_path):
    from resflax.train.loop import train_and_evaluate

    config = loop_config(**{"data.name": "cifar10", "num_steps": 3, "eval_every_steps": 0})
    config.batch_size = 16
    with tfds.testing.mock_data(num_examples=40):
        summary = train_and_evaluate(config, tmp_path)
    assert summary["status"] == "finished" and summary["data"] == "cifar10"
    assert summary["final_eval"]["num_examples"] == 40
    assert np.isfinite(summary["final_eval"]["loss"])


@pytest.mark.slow
def test_image_folder_resume_is_bitwise_equal(folder, tmp_path):
    import jax

    from resflax.train.loop import train_and_evaluate
    from tests.saved import metric_lines, saved_state

    changes = {
        "data.name": "image_folder", "data.folder": str(folder), "data.image_size": 16,
        "batch_size": 8, "num_steps": 6, "checkpoint_every_steps": 3, "eval_every_steps": 3,
        "log_every_steps": 2,
    }  # fmt: skip
    summary = train_and_evaluate(loop_config(**changes), tmp_path / "straight")
    assert summary["final_eval"]["num_examples"] == 9 and summary["epochs"] == 3
    stopped = train_and_evaluate(loop_config(stop_at_step=3, **changes), tmp_path / "split")
    assert stopped["status"] == "stopped"
    train_and_evaluate(loop_config(**changes), tmp_path / "split")  # resumes at 3: mid-epoch
    a, b = saved_state(tmp_path / "straight", 6), saved_state(tmp_path / "split", 6)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert metric_lines(tmp_path / "straight") == metric_lines(tmp_path / "split")


# --- a really prepared tfds data set (CIFAR-10's own builder, from generated files) -----------


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """CIFAR-10 prepared by tfds' real builder from binary files in CIFAR's own format (50
    train, 13 test examples of random pixels): split metadata, tfrecord shards, sub-splits."""
    from unittest import mock

    root = tmp_path_factory.mktemp("cifar")
    raw = root / "raw" / "cifar-10-batches-bin"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in [
        *((f"data_batch_{i}.bin", 10) for i in range(1, 6)),
        ("test_batch.bin", 13),
    ]:
        labels = rng.integers(0, 10, (count, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        (raw / name).write_bytes(np.concatenate([labels, pixels], 1).tobytes())
    (raw / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    builder = tfds.builder("cifar10", data_dir=str(root / "tfds"), try_gcs=False)
    download = mock.patch.object(
        tfds.download.DownloadManager, "download_and_extract", return_value=str(root / "raw")
    )
    with download:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    return root / "tfds"


def test_prepared_cifar_uses_split_metadata_and_per_process_subsplits(cifar_dir):
    ids, counted = [], 0
    for index in range(2):
        src = source(
            data_config(name="cifar10", data_dir=str(cifar_dir)), batch=4, eval_batch=4,
            process_index=index, process_count=2,
        )  # fmt: skip
        assert (src.num_train, src.num_eval, src.steps_per_epoch) == (50, 13, 12)
        records = src.train._records(epoch_seed=3)
        ids.append({r["id"] for r in records.as_numpy_iterator()})
        counted += sum(int(b["mask"].sum()) for b in src.make_eval())
    assert len(ids[0]) == len(ids[1]) == 25 and not ids[0] & ids[1]
    assert counted == 13  # each eval example on exactly one process


@pytest.mark.slow
def test_cli_trains_cifar10_recipe_where_the_data_is_prepared(cifar_dir, tmp_path):
    from tests.test_main import TINY, run

    flags = [f for f in TINY if "batch_size" not in f]
    status, out = run(
        tmp_path, *flags, f"--config.data.data_dir={cifar_dir}", "--config.batch_size=16",
        "--config.num_steps=4", config="--config=experiments/configs/cifar10.py:resnet56",
    )  # fmt: skip
    assert status == 0, out[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data"] == "cifar10" and summary["final_eval"]["num_examples"] == 13


def test_tensorflow_loads_without_its_info_lines_on_stderr():
    """resflax.data.preprocess imports TensorFlow with its load-time C++ INFO lines dropped
    (TensorFlow 2.21 writes them whatever TF_CPP_MIN_LOG_LEVEL says). Where plain `import
    tensorflow` stays silent too, upstream has fixed it and `_import_tensorflow` can go."""
    import subprocess
    import sys

    def stderr(code):
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stderr

    ours = stderr("import resflax.data.preprocess")
    assert ours == "", ours
    theirs = stderr("import tensorflow")
    assert all(
        line.startswith(("I0000", "WARNING: All log messages", "To enable"))
        for line in theirs.splitlines()
    ), theirs
