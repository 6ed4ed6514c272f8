"""The DALI input pipeline (data.pipeline="dali") on the CPU: its plan (order, shards, crops;
numpy only), its records (image folders and tfds-prepared TFRecords, read without TensorFlow),
and DALI's CPU pipelines end to end: shapes, labels, determinism, exact resume across an epoch
boundary, disjoint process shards, padded evaluation, agreement with the tf.data path, and the
per-device assembly a GPU host uses. The DALI parts skip where DALI is not installed, and fail
instead under CI (which installs the dali extra)."""

import json
import os
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from experiments.configs import base
from resflax.data import plan, records
from resflax.data.sources import make_source
from resflax.train.parallel import make_parallel


def dali_or_skip():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("CI installs the dali extra (make install-dali): nvidia.dali is missing")
        pytest.skip("NVIDIA DALI is not installed (make install-dali)")


def data_config(folder, **changes):
    data = base.get_config().data
    data.update(dict(name="image_folder", folder=str(folder), image_size=16, pipeline="dali"))
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes, 7 train and 3 test images each, of varied sizes, JPEG and PNG: smooth
    patterns (two libraries' resizes of noise agree on nothing) with a little noise."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 7), ("test", 3)):
        for c in ("ant", "bee", "cow"):
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                h, w = 20 + 3 * i, 24 + 5 * i
                y, x = np.mgrid[:h, :w] / 8.0
                phase = rng.uniform(0, 6, 3)
                smooth = 127 + 100 * np.sin(y[..., None] + x[..., None] * 0.7 + phase)
                pixels = np.clip(smooth + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


# --- the plan: numpy only ----------------------------------------------------------------


def test_crop_windows_lie_inside_and_follow_the_area_and_ratio_ranges():
    sizes = np.array([[375, 500], [500, 375], [64, 64], [1, 300]] * 500)
    anchor, shape = plan.crop_windows(sizes, np.random.default_rng(0))
    assert (anchor >= 0).all() and (shape >= 1).all()
    assert (anchor + shape <= sizes).all()
    whole = (shape == sizes).all(1)
    area = shape.prod(1) / sizes.prod(1)
    ratio = shape[:, 1] / shape[:, 0]
    cropped = ~whole
    # Rounding to whole pixels widens the ranges by a pixel's worth.
    assert (area[cropped] > 0.07).all() and (area[cropped] <= 1).all()
    assert (ratio[cropped] > 0.7).all() and (ratio[cropped] < 1.4).all()
    assert whole[3::4].all()  # a 1-pixel-high image fits no window: the whole image
    assert 0.45 < area[cropped].mean() < 0.62  # the mean of U(0.08, 1) less what did not fit
    again = plan.crop_windows(sizes, np.random.default_rng(0))
    np.testing.assert_array_equal(anchor, again[0])


def test_process_shards_are_disjoint_and_make_the_global_batch():
    order = plan.epoch_order(103, seed=3, epoch=2)
    np.testing.assert_array_equal(order, plan.epoch_order(103, seed=3, epoch=2))
    assert not np.array_equal(order, plan.epoch_order(103, seed=3, epoch=3))
    seen = []
    for index in range(103 // 8):
        parts = [plan.train_indices(order, index, 4, p, 2) for p in range(2)]
        together = np.empty(8, np.int64)
        together[0::2], together[1::2] = parts
        np.testing.assert_array_equal(together, order[index * 8 : (index + 1) * 8])
        seen += list(together)
    assert len(set(seen)) == len(seen) == 96


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_eval_covers_every_example_once_with_equal_batches(processes):
    runs = [plan.eval_batches(10, 3, p, processes) for p in range(processes)]
    assert len({len(r) for r in runs}) == 1
    kept = [i for r in runs for b in r for i in b.indices[b.mask]]
    assert sorted(kept) == list(range(10))
    assert all(len(b.indices) == 3 for r in runs for b in r)


# --- records, read without TensorFlow ------------------------------------------------------


def test_folder_records_label_as_tfds_image_folder(folder):
    import tensorflow_datasets as tfds

    ours = records.FolderRecords(str(folder), "train")
    theirs = tfds.ImageFolder(str(folder))
    assert ours.classes == theirs.info.features["label"].names
    data, label = ours.example(8)  # the 9th of 7 + 7 + 7 sorted files: the second class
    assert label == 1
    assert data[:2].tolist() == [0xFF, 0xD8] or data[:4].tobytes() == b"\x89PNG"
    sizes = records.image_sizes([ours.example(i)[0] for i in (0, 1)])
    assert sizes.tolist() == [[20, 24], [23, 29]]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A data set prepared by tensorflow-datasets itself (TFRecords, dataset_info.json),
    with its examples as tfds reads them back."""
    import tensorflow_datasets as tfds

    class Tiny(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=4),
                "file_name": tfds.features.Text(),
            })  # fmt: skip
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(13), "validation": self._generate_examples(5)}

        def _generate_examples(self, n):
            rng = np.random.default_rng(n)
            for i in range(n):
                pixels = rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)
                yield i, {"image": pixels, "label": i % 4, "file_name": f"f{i}.jpg"}

    root = tmp_path_factory.mktemp("tfds")
    builder = Tiny(data_dir=str(root))
    builder.download_and_prepare()
    read = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    expected = [(ex["image"], int(ex["label"])) for ex in read.as_numpy_iterator()]
    return root, expected


def test_tfrecords_read_by_index_equal_what_tfds_reads(prepared, tmp_path):
    root, expected = prepared
    version = records.tfds_version_dir(str(root), "tiny")
    split = records.TfrecordRecords(version, "train", cache=tmp_path)
    assert (len(split), split.num_classes) == (13, 4)
    for i, (image, label) in enumerate(expected):  # tfds reads one shard in file order
        data, got = split.example(i)
        assert data.tobytes() == image and got == label
    # The index is built once, beside the data, and reused while the shards are unchanged.
    index = version / "resflax-index-train.npz"
    assert index.is_file()
    before = index.stat().st_mtime_ns
    records.TfrecordRecords(version, "train", cache=tmp_path)
    assert index.stat().st_mtime_ns == before


def test_tfrecord_index_goes_to_the_cache_when_the_data_is_read_only(prepared, tmp_path):
    root, _ = prepared
    version = records.tfds_version_dir(str(root), "tiny")
    (version / "resflax-index-validation.npz").unlink(missing_ok=True)
    os.chmod(version, 0o555)
    try:
        split = records.TfrecordRecords(version, "validation", cache=tmp_path)
    finally:
        os.chmod(version, 0o755)
    assert len(split) == 5
    if os.geteuid() != 0:  # root writes beside the data regardless of the mode
        assert list(tmp_path.glob("*resflax-index-validation.npz"))


def test_parse_example_reads_a_negative_label_and_refuses_a_missing_key():
    import tensorflow as tf

    example = tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"abc"])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[-1])),
    })).SerializeToString()  # fmt: skip
    data, label = records.parse_example(example, "image", "label")
    assert data.tobytes() == b"abc" and label == -1
    with pytest.raises(ValueError, match="lacks 'pixels'"):
        records.parse_example(example, "pixels", "label")


def test_a_split_missing_from_dataset_info_is_named(prepared):
    root, _ = prepared
    with pytest.raises(ValueError, match="has no split 'test'; found: \\['train', 'validation'\\]"):
        records.TfrecordRecords(records.tfds_version_dir(str(root), "tiny"), "test")


# --- DALI's CPU pipelines ------------------------------------------------------------------


def source(folder, batch=6, eval_batch=4, seed=0, **shard):
    return make_source(
        data_config(folder), batch_size=batch, eval_batch_size=eval_batch, seed=seed, **shard
    )


def test_batches_have_the_step_shapes_and_the_planned_labels(folder):
    dali_or_skip()
    src = source(folder)
    assert (src.num_train, src.num_eval, src.num_classes, src.steps_per_epoch) == (21, 9, 3, 3)
    batch = next(src.train)
    assert batch["image"].shape == (6, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["mask"].all() and batch["label"].dtype == np.int32
    order = plan.epoch_order(21, seed=0, epoch=0)
    labels = records.FolderRecords(str(folder), "train").labels
    np.testing.assert_array_equal(batch["label"], labels[order[:6]])
    # Normalised with ImageNet's statistics: pixels 0..255 land in [-2.12, 2.64].
    image = batch["image"]
    assert -2.13 < image.min() < -1.0 and 1.0 < image.max() < 2.65


def test_half_precision_steps_get_float16_batches(folder):
    dali_or_skip()
    from resflax.data.dali import Placement

    src = make_source(
        data_config(folder), batch_size=6, eval_batch_size=4, seed=0,
        placement=Placement(dtype="bfloat16"),
    )  # fmt: skip
    assert next(src.train)["image"].dtype == np.float16
    assert next(src.make_eval())["image"].dtype == np.float16


def test_the_same_seed_gives_the_same_batches(folder):
    dali_or_skip()
    first = [next(source(folder, seed=s).train)["image"] for s in (4, 4, 5)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2])


def test_resume_across_an_epoch_boundary_is_exact(folder):
    dali_or_skip()
    straight = source(folder).train
    batches = [next(straight) for _ in range(5)]  # 3 per epoch: crosses into epoch 1
    first = source(folder).train
    for _ in range(2):
        next(first)
    assert first.position() == {"epoch": 0, "index": 2}
    resumed = source(folder).train
    resumed.restore(first.position())
    for expected in batches[2:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], expected["image"])
        np.testing.assert_array_equal(got["label"], expected["label"])
    assert resumed.position() == {"epoch": 1, "index": 2}


def test_process_shards_read_disjoint_halves_of_each_global_batch(folder):
    dali_or_skip()
    labels = records.FolderRecords(str(folder), "train").labels
    order = plan.epoch_order(21, seed=0, epoch=0)
    parts = [source(folder, process_index=p, process_count=2).train for p in range(2)]
    got = [next(part)["label"] for part in parts]
    np.testing.assert_array_equal(got[0], labels[order[0:6:2]])
    np.testing.assert_array_equal(got[1], labels[order[1:6:2]])


def test_eval_is_padded_masked_and_near_the_tfdata_path(folder):
    dali_or_skip()
    batches = list(source(folder).make_eval())
    assert len(batches) == 3 and [int(b["mask"].sum()) for b in batches] == [4, 4, 1]
    reference = make_source(
        data_config(folder, pipeline="tfdata"), batch_size=6, eval_batch_size=4, seed=0
    )
    theirs = list(reference.make_eval())
    ours_labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    their_labels = np.concatenate([b["label"][b["mask"]] for b in theirs])
    assert sorted(ours_labels) == sorted(their_labels)
    # Same examples (tfds' ImageFolder lists them in its own order): match by label and image.
    ours = np.concatenate([b["image"][b["mask"]] for b in batches])
    their = np.concatenate([b["image"][b["mask"]] for b in theirs])
    gaps = [np.abs(ours[:, None] - their[None]).mean((2, 3, 4)).min(1)]
    # Two libraries' bilinear resizes: close, not equal (pixel centres, rounding); measured
    # 0.02 on the JPEGs, 0.15 on the PNGs (their noise survives to be resampled differently).
    assert float(np.max(gaps)) < 0.2, gaps


def test_pieces_on_their_devices_assemble_as_the_loop_would_place_the_batch():
    parallel = make_parallel("jit")
    batch = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    from resflax.data.dali_pipeline import assemble, device_order

    devices = device_order(parallel.batch_sharding, batch.shape)
    pieces = [jax.device_put(p, d) for p, d in zip(np.split(batch, 8), devices, strict=True)]
    ours = assemble(pieces, devices, parallel.batch_sharding)
    theirs = parallel.shard_batch({"x": batch})["x"]
    assert ours.sharding == theirs.sharding
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    # The loop passes a batch already on the mesh through untouched.
    assert parallel.shard_batch({"x": ours})["x"] is ours


def test_missing_dali_is_one_line_naming_the_install(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    from resflax.data.dali import DaliUnavailableError

    with pytest.raises(
        DaliUnavailableError,
        match=r"pip install 'resflax\[dali\]' \(in a checkout: make install-dali\)",
    ):
        source(folder)


@pytest.mark.parametrize(
    ("driver", "built", "words"),
    [
        (0, 13, "DALI finds no CUDA driver"),
        (
            12040,
            13,
            "nvidia-dali-cuda130 needs a CUDA 13 driver, this one is CUDA 12.4; install "
            "pip install 'resflax[dali-cuda12]'",
        ),
        (13000, 13, None),
        (12020, 12, None),
    ],
)
def test_the_gpu_driver_must_be_as_new_as_dalis_cuda(driver, built, words):
    from resflax.data.dali import DaliUnavailableError, _check_cuda

    if words is None:
        _check_cuda(driver, built)
        return
    with pytest.raises(DaliUnavailableError) as raised:
        _check_cuda(driver, built)
    assert words in str(raised.value) and "\n" not in str(raised.value)


def test_a_tfds_prepared_set_trains_through_dali(prepared, monkeypatch):
    dali_or_skip()
    root, _ = prepared
    monkeypatch.setitem(
        __import__("resflax.data.tfds_spec", fromlist=["DATASETS"]).DATASETS,
        "imagenette", ("tiny", "train", "validation", "imagenet", 224),
    )  # fmt: skip
    data = data_config("", name="imagenette", data_dir=str(root))
    src = make_source(data, batch_size=4, eval_batch_size=4, seed=0)
    assert (src.num_train, src.num_eval, src.num_classes) == (13, 5, 4)
    batch = next(src.train)
    assert batch["image"].shape == (4, 16, 16, 3)
    assert [int(b["mask"].sum()) for b in src.make_eval()] == [4, 1]
    json.dumps(src.train.position())  # a position is plain JSON, as checkpoints store it


def test_a_run_through_dali_resumes_bitwise_mid_epoch(folder, tmp_path):
    dali_or_skip()
    from resflax.train.loop import train_and_evaluate
    from tests.data.test_tfds import loop_config
    from tests.saved import metric_lines, saved_state

    changes = {
        "data.name": "image_folder", "data.folder": str(folder), "data.image_size": 16,
        "data.pipeline": "dali", "batch_size": 8, "num_steps": 4, "checkpoint_every_steps": 2,
        "eval_every_steps": 2, "log_every_steps": 2,
    }  # fmt: skip
    summary = train_and_evaluate(loop_config(**changes), tmp_path / "straight")
    assert summary["final_eval"]["num_examples"] == 9 and summary["epochs"] == 2
    assert summary["execution"]["data_pipeline"] == "dali"
    assert summary["execution"]["data_device"] == "cpu"
    train_and_evaluate(loop_config(stop_at_step=1, **changes), tmp_path / "split")
    train_and_evaluate(loop_config(**changes), tmp_path / "split")  # resumes mid-epoch
    a, b = saved_state(tmp_path / "straight", 4), saved_state(tmp_path / "split", 4)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert metric_lines(tmp_path / "straight") == metric_lines(tmp_path / "split")
