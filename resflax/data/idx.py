"""IDX files (LeCun's MNIST format, also Fashion-MNIST's and KMNIST's) read into memory with
numpy alone, checked so that a damaged or mismatched file fails at start with one line naming
the file and what was expected, instead of as a shape error or quietly wrong labels later.

Format: a 4-byte magic number 0x0000TTNN (TT the element type, 0x08 for unsigned bytes; NN the
number of dimensions), NN big-endian uint32 sizes, then the elements in C order. Files may be
gzip-compressed (recognised by gzip's magic bytes, whatever the name says).
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from resflax.data.tfds_spec import DataNotFoundError

UBYTE = 0x08
GZIP_MAGIC = b"\x1f\x8b"
KIND = {1: "labels", 3: "images"}
# The standard names of the four files (train and test images and labels).
NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEFAULT_HINT = "point --config.data.folder at a folder holding the four IDX files"


class IdxSplits(NamedTuple):
    """The four arrays of an MNIST-style data set: images [N, H, W] and labels [N], uint8."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def _contents(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt gzip ({e}); fetch the file again") from None


def _magic_meaning(magic: bytes) -> str:
    if magic[:2] != b"\0\0":
        return "not an IDX file"
    if magic[2] != UBYTE:
        return f"data type 0x{magic[2]:02X}, not 0x{UBYTE:02X} (unsigned byte)"
    return f"{magic[3]} dimensions"


def read_idx(path: str | Path, expected_ndim: int) -> np.ndarray:
    """The unsigned-byte array of the IDX file at `path` (gzip or raw), which must have
    `expected_ndim` dimensions (1: labels, 3: images) and exactly the bytes its header
    announces: a truncated download or a file of another kind is refused, not reshaped."""
    path = Path(path)
    data = _contents(path)
    expected = (UBYTE << 8) | expected_ndim
    what = f"{KIND.get(expected_ndim, f'{expected_ndim}-d')}: unsigned bytes, {expected_ndim}-d"
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an IDX header ({what})")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected:
        raise ValueError(
            f"{path}: magic 0x{magic:08X}, expected 0x{expected:08X} ({what}); "
            f"found {_magic_meaning(data[:4])}"
        )
    header = 4 + 4 * expected_ndim
    if len(data) < header:
        raise ValueError(
            f"{path}: truncated: {len(data)} bytes, the header alone needs {header} ({what})"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(expected_ndim))
    want, have = math.prod(dims), len(data) - header
    if have != want:
        kind = "truncated" if have < want else "overlong"
        raise ValueError(
            f"{path}: {kind}: header says {'x'.join(map(str, dims))} = {want:,} bytes of data, "
            f"file has {have:,}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def find_file(folder: Path, name: str, hint: str = DEFAULT_HINT) -> Path:
    """`folder/name.gz`, else `folder/name`; a missing one is named with how to get it."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    raise DataNotFoundError(f"{folder / name}[.gz]: no such file; {hint}")


def load_idx_folder(
    folder: str | Path, *, num_classes: int = 10, hint: str = DEFAULT_HINT
) -> IdxSplits:
    """The four standard IDX files of `folder`, read and checked against each other: as many
    labels as images in each split, images of one size in both, labels in [0, num_classes).
    `hint` says how to get the files when the folder or one of them is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFoundError(f"{folder}: no such folder; {hint}")
    paths = {key: find_file(folder, name, hint) for key, name in NAMES.items()}
    arrays = {key: read_idx(path, 3 if "images" in key else 1) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        image_path, label_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        if len(images) == 0:
            raise ValueError(f"{image_path}: 0 images; a {split} split needs at least one")
        if len(labels) != len(images):
            raise ValueError(
                f"{label_path}: {len(labels):,} labels but {image_path.name} has "
                f"{len(images):,} images"
            )
        bad = np.flatnonzero(labels >= num_classes)
        if len(bad):
            raise ValueError(
                f"{label_path}: label {labels[bad[0]]} at index {bad[0]:,} ({len(bad):,} in all) "
                f"is outside [0, {num_classes})"
            )
    train_shape, test_shape = arrays["train_images"].shape[1:], arrays["test_images"].shape[1:]
    if test_shape != train_shape:
        raise ValueError(
            f"{paths['test_images']}: images are {'x'.join(map(str, test_shape))} but "
            f"{paths['train_images'].name} has {'x'.join(map(str, train_shape))}"
        )
    return IdxSplits(**arrays)
