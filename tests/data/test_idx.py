"""The MNIST family's in-memory source: IDX files the tests write (good and damaged, each damage
named in one line), host augmentation (crops, flips, erasing really happen, exactly resumable,
the same on any number of processes), the tfds reader on mock data, and the real files."""

import contextlib
import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from experiments.configs import base
from resflax.data import augment as aug
from resflax.data.augment import Augment, AugmentedIterator
from resflax.data.idx import load_idx_folder, read_idx
from resflax.data.mnist_family import channel_stats, how_to_get
from resflax.data.sources import make_source
from resflax.data.tfds_spec import DataNotFoundError

FASHION = Path("/usr/share/datasets/fashion-mnist")
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")  # fmt: skip


def idx_bytes(array, magic=None):
    magic = (0x0800 | array.ndim) if magic is None else magic
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + np.ascontiguousarray(array, np.uint8).tobytes()


def write(path, content, gz=True):
    path = Path(f"{path}.gz" if gz else path)
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def write_folder(root, n_train=30, n_test=10, gz=True, shape=(28, 28), seed=0):
    rng = np.random.default_rng(seed)
    arrays = (rng.integers(0, 256, (n_train, *shape)), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, *shape)), np.arange(n_test) % 10)  # fmt: skip
    root.mkdir(exist_ok=True)
    for name, array in zip(NAMES, arrays, strict=True):
        write(root / name, idx_bytes(array), gz)
    return root, arrays


def data_config(**changes):
    data = base.get_config().data
    data.update(changes)
    return data


# --- the reader -------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_a_good_folder_reads_back_exactly(tmp_path, gz):
    folder, arrays = write_folder(tmp_path / "d", gz=gz)
    got = load_idx_folder(folder)
    for a, b in zip(got, arrays, strict=True):
        assert a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)


def test_gzip_is_known_by_its_bytes_and_preferred_to_the_raw_file(tmp_path):
    labels = np.arange(7, dtype=np.uint8)
    raw_name = write(tmp_path / "labels", gzip.compress(idx_bytes(labels)), gz=False)
    np.testing.assert_array_equal(read_idx(raw_name, 1), labels)  # gzip inside a plain name
    folder, arrays = write_folder(tmp_path / "d")
    write(folder / NAMES[1], idx_bytes(np.zeros(30, np.uint8)), gz=False)  # a stale raw copy
    np.testing.assert_array_equal(load_idx_folder(folder).train_labels, arrays[1])


def damage(folder, kind):
    """Damages one file of a good folder; returns the file and what its message must say."""
    labels, images = folder / f"{NAMES[1]}.gz", folder / f"{NAMES[0]}.gz"
    good_images = read_idx(images, 3)
    if kind == "wrong magic":
        write(folder / NAMES[1], idx_bytes(np.zeros((30, 1, 1)), magic=0x803))
        return labels, "magic 0x00000803, expected 0x00000801 (labels"
    if kind == "wrong data type":
        write(folder / NAMES[1], idx_bytes(np.zeros(30), magic=0x0D01))
        return labels, "data type 0x0D, not 0x08"
    if kind == "wrong dimension count":
        write(folder / NAMES[0], idx_bytes(good_images.reshape(30, -1)))
        return (
            images,
            "magic 0x00000802, expected 0x00000803 (images: unsigned bytes, 3-d); found 2",
        )
    if kind == "truncated":
        write(folder / NAMES[0], idx_bytes(good_images)[:1016])
        return images, "truncated: header says 30x28x28 = 23,520 bytes of data, file has 1,000"
    if kind == "overlong":
        write(folder / NAMES[0], idx_bytes(good_images) + b"\0" * 5)
        return images, "overlong: header says 30x28x28 = 23,520 bytes of data, file has 23,525"
    if kind == "corrupt gzip":
        packed = bytearray(images.read_bytes())
        packed[len(packed) // 2 :] = bytes(len(packed) - len(packed) // 2)
        images.write_bytes(bytes(packed))
        return images, "corrupt gzip"
    if kind == "label out of range":
        write(folder / NAMES[1], idx_bytes(np.r_[np.zeros(12), 10, np.zeros(17)]))
        return labels, "label 10 at index 12 (1 in all) is outside [0, 10)"
    if kind == "count mismatch":
        write(folder / NAMES[1], idx_bytes(np.zeros(29)))
        return labels, "29 labels but train-images-idx3-ubyte.gz has 30 images"
    if kind == "image sizes disagree":
        write(folder / NAMES[2], idx_bytes(np.zeros((10, 27, 28))))
        return (
            folder / f"{NAMES[2]}.gz",
            "images are 27x28 but train-images-idx3-ubyte.gz has 28x28",
        )
    raise AssertionError(kind)


KINDS = [
    "wrong magic",
    "wrong data type",
    "wrong dimension count",
    "truncated",
    "overlong",
    "corrupt gzip",
    "label out of range",
    "count mismatch",
    "image sizes disagree",
]


@pytest.mark.parametrize("kind", KINDS)
def test_each_damage_is_one_line_naming_the_file_and_the_expectation(tmp_path, kind):
    folder, _ = write_folder(tmp_path / "d")
    path, expected = damage(folder, kind)
    with pytest.raises(ValueError) as info:
        load_idx_folder(folder)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert expected in message


@pytest.mark.parametrize("missing", ["folder", "file"])
def test_missing_data_names_the_path_and_how_to_get_it(tmp_path, missing):
    folder, _ = write_folder(tmp_path / "d")
    if missing == "folder":
        folder, path = tmp_path / "absent", tmp_path / "absent"
    else:
        (folder / f"{NAMES[3]}.gz").unlink()
        path = folder / f"{NAMES[3]}[.gz]"
    with pytest.raises(DataNotFoundError) as info:
        load_idx_folder(folder, hint=how_to_get("fashion_mnist"))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: no such")
    for words in ("`make data-fashion-mnist`", "dataset-fashion-mnist", "--config.data.folder",
                  "https://github.com/zalandoresearch/fashion-mnist"):  # fmt: skip
        assert words in message


# --- augmentation -----------------------------------------------------------------------


def images(n=40, size=8, seed=0):
    """Distinct images whose pixels avoid 100 (the mean below): a 0 in a normalised batch
    can then only be an erased pixel. Labels: the image's index."""
    pixels = np.random.default_rng(seed).integers(101, 256, (n, size, size, 1))
    return pixels.astype(np.uint8), np.arange(n, dtype=np.int32)


PAD_CROP_FLIP = Augment()


def iterator(x, y, batch=8, augment=PAD_CROP_FLIP, seed=0, **shard):
    return AugmentedIterator(x, y, batch, seed=seed, mean=(100.0,), std=(64.0,), augment=augment,
                             **shard)  # fmt: skip


def pixels(batch):
    """The normalised batch back in 0..255 units (exactly: std is a power of two)."""
    return batch["image"] * np.float32(64) + np.float32(100)


def test_without_padding_each_example_is_its_image_or_its_mirror_and_both_happen():
    x, y = images()
    batch = next(iterator(x, y, batch=32, augment=Augment(pad=0)))
    back = pixels(batch)
    flipped = [np.array_equal(b, x[i][:, ::-1]) for b, i in zip(back, batch["label"], strict=True)]
    same = [np.array_equal(b, x[i]) for b, i in zip(back, batch["label"], strict=True)]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 4 < sum(flipped) < 28


def test_crops_are_windows_of_the_zero_padded_image_at_offsets_in_0_to_2pad():
    x, y = images(size=6)
    it = iterator(x, y, batch=8, augment=Augment(pad=3, flip=False))
    offsets = set()
    for _ in range(15):
        batch = next(it)
        for out, i in zip(pixels(batch), batch["label"], strict=True):
            padded = np.pad(x[i], ((3, 3), (3, 3), (0, 0))).astype(np.float32)
            found = [(a, b) for a in range(7) for b in range(7)
                     if np.array_equal(out, padded[a : a + 6, b : b + 6])]  # fmt: skip
            assert len(found) == 1
            offsets.add(found[0])
    assert {a for a, _ in offsets} == set(range(7)) == {b for _, b in offsets}
    rng = np.random.default_rng(0)
    drawn = aug.draw(rng, 10_000, 28, 28, Augment(pad=4)).offset
    assert drawn.min() == 0 and drawn.max() == 8


def test_erasing_changes_one_rectangle_to_the_mean_and_nothing_else():
    x, y = images(size=28)
    plain, erased = iterator(x, y), iterator(x, y, augment=Augment(erasing=1.0))
    areas = []
    for _ in range(5):
        a, b = next(plain), next(erased)
        np.testing.assert_array_equal(a["label"], b["label"])
        for before, after in zip(a["image"][..., 0], b["image"][..., 0], strict=True):
            changed = np.argwhere(before != after)
            (top, left), (bottom, right) = changed.min(0), changed.max(0) + 1
            box = np.zeros_like(before, bool)
            box[top:bottom, left:right] = True
            np.testing.assert_array_equal(before != after, box)  # a full rectangle
            assert np.all(after[box] == 0) and np.all(after[~box] == before[~box])
            areas.append(box.mean())
    assert min(areas) > 0.015 and max(areas) < 0.42  # s in [0.02, 0.4], rounded to pixels
    boxes = aug.erase_boxes(np.random.default_rng(1), 10_000, 28, 28, 0.5)
    erased_share = np.mean(boxes[:, 2] > 0)
    assert 0.47 < erased_share < 0.53
    y0, x0, h, w = boxes.T
    assert np.all((y0 + h <= 28) & (x0 + w <= 28) & (h < 28) & (w < 28))


def test_augmentation_is_deterministic_and_varies_with_seed_and_step():
    x, y = images()
    spec = Augment(erasing=0.5)
    a, b, c = iterator(x, y, augment=spec), iterator(x, y, augment=spec), iterator(x, y, seed=1)
    first, second = next(a), next(b)
    np.testing.assert_array_equal(first["image"], second["image"])
    assert not np.array_equal(first["image"], next(c)["image"])
    assert not np.array_equal(next(a)["image"], first["image"])


def test_resume_across_an_epoch_boundary_is_bit_identical():
    x, y = images(n=50)
    spec = Augment(erasing=0.5)
    straight = iterator(x, y, batch=16, augment=spec)  # 3 steps an epoch
    expected = [next(straight) for _ in range(8)]
    first = iterator(x, y, batch=16, augment=spec)
    got = [next(first) for _ in range(2)]
    resumed = iterator(x, y, batch=16, augment=spec)
    resumed.restore(dict(first.position()))
    got += [next(resumed) for _ in range(6)]
    for a, b in zip(got, expected, strict=True):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(a[key], b[key])


def test_process_shards_are_slices_of_the_one_process_batch_augmentation_included():
    x, y = images(n=48)
    spec = Augment(erasing=0.5)
    parts = [iterator(x, y, batch=4, augment=spec, process_index=i, process_count=3)
             for i in range(3)]  # fmt: skip
    whole = iterator(x, y, batch=12, augment=spec)
    for _ in range(6):  # 1.5 epochs
        full = next(whole)
        pieces = [next(p) for p in parts]
        labels = np.concatenate([p["label"] for p in pieces])
        assert len(set(labels)) == 12 and sorted(labels) == sorted(full["label"])
        for i, piece in enumerate(pieces):
            np.testing.assert_array_equal(piece["image"], full["image"][i::3])


def test_bad_iterator_arguments_are_named():
    x, y = images()
    with pytest.raises(ValueError, match="uint8"):
        AugmentedIterator(x.astype(np.float32), y, 8, seed=0, mean=(0.0,), std=(1.0,))
    with pytest.raises(ValueError, match="1 values each"):
        AugmentedIterator(x, y, 8, seed=0, mean=(0.0, 0.0), std=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"random_erasing=1\.5"):
        Augment(erasing=1.5)


def test_channel_stats_are_the_exact_mean_and_std():
    x, _ = images(n=20, size=5)
    mean, std = channel_stats(x)
    np.testing.assert_allclose(mean, [x.mean()], rtol=1e-12)
    np.testing.assert_allclose(std, [x.std()], rtol=1e-12)


# --- the source -------------------------------------------------------------------------


def source(data, batch=8, eval_batch=8, **shard):
    return make_source(data, batch_size=batch, eval_batch_size=eval_batch, seed=0, **shard)


def test_the_source_trains_normalised_and_evaluates_every_example_once(tmp_path):
    folder, arrays = write_folder(tmp_path / "d", n_train=30, n_test=10)
    src = source(data_config(name="fashion_mnist", folder=str(folder)))
    assert (src.num_train, src.num_eval, src.num_classes) == (30, 10, 10)
    assert src.image_shape == (28, 28, 1) and src.steps_per_epoch == 3
    batch = next(src.train)
    assert batch["image"].shape == (8, 28, 28, 1) and batch["image"].dtype == np.float32
    batches = list(src.make_eval())
    assert [b["mask"].sum() for b in batches] == [8, 2]
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(labels, arrays[3])
    mean, std = arrays[0].mean(), arrays[0].std()
    expected = ((arrays[2][0] - mean) / std).astype(np.float32)
    np.testing.assert_allclose(batches[0]["image"][0, ..., 0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(image_size=32), "data.image_size=32: fashion_mnist images are 28x28"),
        (dict(num_classes=5), "has 10 classes"),
        (dict(augment="cutout"), "data.augment='cutout' is not one of"),
        (dict(reader="hdf5"), "data.reader='hdf5' is not one of"),
        (dict(train_split="train[:90%]"), "data.reader='tfds'"),
        (dict(mean=(1.0, 2.0, 3.0)), "grey: one finite value"),
        (dict(random_erasing=2.0), "random_erasing=2.0"),
    ],
)
def test_bad_data_settings_are_named(tmp_path, changes, match):
    folder, _ = write_folder(tmp_path / "d")
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("(", r"\(")):
        source(data_config(name="fashion_mnist", folder=str(folder), **changes))


def test_default_augmentation_mirrors_only_fashion():
    from resflax.data.mnist_family import augmentation

    assert augmentation(data_config(name="fashion_mnist")) == Augment(pad=4, flip=True)
    assert augmentation(data_config(name="mnist")) == Augment(pad=4, flip=False)
    none = data_config(name="kmnist", augment="none", random_erasing=0.5)
    assert augmentation(none) == Augment(pad=0, flip=False, erasing=0.5)


def test_the_tfds_reader_goes_through_the_same_in_memory_path(tmp_path):
    # torchvision (where installed) before TensorFlow: see tests/data/test_tfds.py.
    with contextlib.suppress(ImportError):
        import torchvision  # noqa: F401
    import tensorflow_datasets as tfds

    data = data_config(name="kmnist", reader="tfds", random_erasing=0.5)
    with tfds.testing.mock_data(num_examples=20):
        src = source(data, batch=8, eval_batch=8)
        batch = next(src.train)
        assert batch["image"].shape == (8, 28, 28, 1) and batch["image"].dtype == np.float32
        assert isinstance(src.train, AugmentedIterator) and src.num_train == 20
        assert [b["mask"].sum() for b in src.make_eval()] == [8, 8, 4]
    with pytest.raises(DataNotFoundError, match=r"'kmnist' split 'train' .* is not prepared"):
        source(data_config(name="kmnist", reader="tfds", data_dir=str(tmp_path)))


def need_the_real_files():
    """Skip without the real Fashion-MNIST, with the reason; on CI its absence is a failure."""
    if not FASHION.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{FASHION} is missing on CI: `make data-fashion-mnist` installs it")
        pytest.skip(f"{FASHION} is not installed (`make data-fashion-mnist`)")


def test_the_real_fashion_mnist_files():
    need_the_real_files()
    splits = load_idx_folder(FASHION)
    assert splits.train_images.shape == (60_000, 28, 28)
    assert splits.test_images.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(np.bincount(splits.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(splits.test_labels), [1000] * 10)
    mean, std = channel_stats(splits.train_images[..., None])
    np.testing.assert_allclose([mean[0], std[0]], [72.94, 90.02], atol=0.01)
    src = source(data_config(name="fashion_mnist"), batch=128, eval_batch=1000)
    assert src.steps_per_epoch == 468 and next(src.train)["image"].shape == (128, 28, 28, 1)
    assert sum(b["mask"].sum() for b in src.make_eval()) == 10_000


@pytest.mark.slow
def test_a_short_run_on_the_real_files_learns_far_above_chance(tmp_path):
    """300 steps of a small ResNet-20-shaped network through the recipe and the loop: test
    top-1 well above chance (10%). Wrong labels, misaligned images and labels, or a broken
    augmentation or normalisation stay near chance; this run measured 0.71 here."""
    need_the_real_files()
    from experiments.configs import fashion_mnist
    from resflax.train.loop import train_and_evaluate

    c = fashion_mnist.get_config("resnet20")
    c.model.stage_sizes, c.model.widths, c.model.stem_width = (1, 1, 1), (8, 16, 32), 8
    c.prng_impl, c.num_devices = "rbg", 1  # about the data, not the parallelism
    c.num_epochs, c.num_steps = None, 300
    c.schedule.unit, c.schedule.warmup = "steps", 30
    c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 100, 0, 0
    summary = train_and_evaluate(c, tmp_path / "run")
    assert summary["final_eval"]["num_examples"] == 10_000
    assert summary["final_eval"]["top1"] >= 0.5, summary["final_eval"]
