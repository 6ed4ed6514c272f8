"""The in-memory iterator (exact resume, full-coverage eval, process shards) and the digits."""

import numpy as np
import pytest

from resflax.data.arrays import ArrayIterator
from resflax.data.digits import load_digits_split


def _data(n=50):
    return np.arange(n, dtype=np.float32)[:, None, None, None], np.arange(n, dtype=np.int32)


def test_resume_gives_exactly_the_batches_of_an_uninterrupted_run():
    x, y = _data()
    straight = ArrayIterator(x, y, 8, shuffle=True, seed=3)
    expected = [next(straight)["label"] for _ in range(20)]  # crosses 3 epochs
    first = ArrayIterator(x, y, 8, shuffle=True, seed=3)
    got = [next(first)["label"] for _ in range(7)]
    resumed = ArrayIterator(x, y, 8, shuffle=True, seed=3)
    resumed.restore(dict(first.position()))
    got += [next(resumed)["label"] for _ in range(13)]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_epochs_are_shuffled_deterministically_and_differently():
    x, y = _data()
    a = ArrayIterator(x, y, 10, shuffle=True, seed=1)
    e0 = np.concatenate([next(a)["label"] for _ in range(5)])
    e1 = np.concatenate([next(a)["label"] for _ in range(5)])
    assert sorted(e0) == list(range(50)) and sorted(e1) == list(range(50))
    assert not np.array_equal(e0, e1)
    b = ArrayIterator(x, y, 10, shuffle=True, seed=1)
    np.testing.assert_array_equal(np.concatenate([next(b)["label"] for _ in range(5)]), e0)


def test_eval_pads_and_masks_the_last_batch_so_every_example_counts_once():
    x, y = _data(50)
    seen = [b["label"][b["mask"]] for b in ArrayIterator(x, y, 16, shuffle=False)]
    assert [len(s) for s in seen] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(50))


def test_process_shards_are_disjoint_and_cover_the_global_batch():
    x, y = _data(48)
    parts = [ArrayIterator(x, y, 4, shuffle=True, seed=0, process_index=i, process_count=3)
             for i in range(3)]  # fmt: skip
    whole = ArrayIterator(x, y, 12, shuffle=True, seed=0)
    for _ in range(5):
        pieces = np.concatenate([next(p)["label"] for p in parts])
        assert sorted(pieces) == sorted(next(whole)["label"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=0), "batch_size=0"),
        (dict(batch_size=64), "global batch 64 is larger than the 50"),
        (dict(process_index=2, process_count=2), "process_index=2"),
    ],
)
def test_bad_iterator_arguments_are_named(kwargs, match):
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        ArrayIterator(x, y, **{"batch_size": 8, "shuffle": True, **kwargs})


def test_restore_refuses_a_foreign_position():
    x, y = _data()
    with pytest.raises(ValueError, match="outside this data set"):
        ArrayIterator(x, y, 8, shuffle=True).restore({"epoch": 0, "index": 99})


def test_digits_split_is_fixed_stratified_and_normalised():
    xtr, ytr, xte, yte = load_digits_split()
    assert len(xtr) + len(xte) == 1797 and xtr.shape[1:] == (8, 8, 1)
    # Each class keeps its share: round(20%) of its 174..183 images.
    per_class = np.bincount(np.concatenate([ytr, yte]))
    np.testing.assert_array_equal(np.bincount(yte), np.round(per_class * 0.2).astype(int))
    assert len(xte) == 359
    assert abs(float(xtr.mean())) < 1e-5 and abs(float(xtr.std()) - 1) < 1e-5
    again = load_digits_split()
    np.testing.assert_array_equal(again[3], yte)
    with pytest.raises(ValueError, match=r"test_fraction=1\.5"):
        load_digits_split(1.5)
