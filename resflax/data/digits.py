"""The embedded default data set: scikit-learn's bundled handwritten digits (1,797 real 8x8
grey images of 10 classes), needing no network. A fixed, stratified hold-out split."""

from __future__ import annotations

import numpy as np


def load_digits_split(
    test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels): NHWC float32 images normalised
    with the training split's mean and std; the split keeps each class's share."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    from sklearn.datasets import load_digits  # late import: only this source needs it

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[..., None]
    labels = digits.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test[rng.choice(members, round(len(members) * test_fraction), replace=False)] = True
    mean, std = images[~test].mean(), images[~test].std()
    images = (images - mean) / std
    return images[~test], labels[~test], images[test], labels[test]
