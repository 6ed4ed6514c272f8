"""Encoded images and labels by index, read without TensorFlow, for the DALI pipeline: the files
of an image folder, or the TFRecord shards of a data set tensorflow-datasets has prepared
(imagenet2012, imagenette).

TFRecords are read at random positions through an index of record offsets, built once per split
(one pass over the record headers, no decoding) and cached beside the data, or under
~/.cache/resflax when the data's folder is read-only; a cache whose shard sizes no longer match
is rebuilt. Only the two features needed are parsed out of each `tf.train.Example` (a
protobuf's wire format: `features` -> map entries -> bytes or int64 lists).
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from resflax.data.folder import SUFFIXES


def image_sizes(encoded: list[np.ndarray]) -> np.ndarray:
    """[n, 2] (height, width) from each image's header (Pillow reads no pixels for this)."""
    from PIL import Image

    sizes = []
    for data in encoded:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            width, height = image.size
        sizes.append((height, width))
    return np.asarray(sizes, np.int64).reshape(-1, 2)


class FolderRecords:
    """`<root>/<split>/<class>/*.jpg|jpeg|png`, labelled as tfds' ImageFolder labels them: the
    class names of all splits, sorted."""

    def __init__(self, root: str, split: str) -> None:
        base = Path(root)
        names = set()
        for entry in os.scandir(base):
            if entry.is_dir():
                names.update(c.name for c in os.scandir(entry.path) if c.is_dir())
        self.classes = sorted(names)
        self.files: list[str] = []
        labels = []
        for label, name in enumerate(self.classes):
            folder = base / split / name
            if not folder.is_dir():
                continue
            found = sorted(
                e.path for e in os.scandir(folder)
                if e.is_file() and e.name.lower().endswith(SUFFIXES)
            )  # fmt: skip
            self.files += found
            labels += [label] * len(found)
        self.labels = np.asarray(labels, np.int32)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def example(self, i: int) -> tuple[np.ndarray, int]:
        """Example `i`: its encoded bytes and label."""
        return np.fromfile(self.files[i], np.uint8), int(self.labels[i])


def tfds_version_dir(data_dir: str | None, tfds_name: str) -> Path:
    """<data_dir>/<name>[/<config>]/<version>: the newest prepared version, as tfds picks."""
    root = Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")
    base = root.expanduser() / tfds_name.replace(":", "/")
    if (base / "dataset_info.json").is_file():
        return base
    versions = [p for p in base.glob("*") if (p / "dataset_info.json").is_file()]
    if not versions:
        raise FileNotFoundError(str(base))
    return max(versions, key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()))


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Any:
    """(field number, value) of a message: bytes for length-delimited fields, int for varints."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (1, 5):  # fixed 64 / 32 bits (floats): skipped over
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"tf.train.Example with wire type {wire}: not a TFRecord of examples")
        yield number, value


def parse_example(record: bytes, image_key: str, label_key: str) -> tuple[np.ndarray, int]:
    """The encoded image (bytes_list) and the label (int64_list) of a serialised Example."""
    found: dict[str, Any] = {}
    for _, features in _fields(memoryview(record)):  # Example.features
        for _, entry in _fields(features):  # Features.feature: map entries
            parts = dict(_fields(entry))
            key = bytes(parts.get(1, b"")).decode()
            if key not in (image_key, label_key):
                continue
            for kind, values in _fields(parts.get(2, memoryview(b""))):  # Feature's oneof
                if kind == 1:  # BytesList
                    found[key] = next(v for n, v in _fields(values) if n == 1)
                elif kind == 3:  # Int64List, packed or not
                    _, v = next(_fields(values))
                    found[key] = _varint(v, 0)[0] if isinstance(v, memoryview) else v
    if image_key not in found or label_key not in found:
        raise ValueError(f"TFRecord example lacks {image_key!r} or {label_key!r}")
    label = found[label_key]
    return np.frombuffer(found[image_key], np.uint8), label - (1 << 64) * (label >> 63)


def _scan(path: Path) -> np.ndarray:
    """Offsets of the records of one TFRecord file (length, its CRC, data, its CRC)."""
    offsets, pos, size = [], 0, path.stat().st_size
    with path.open("rb") as f:
        while pos < size:
            f.seek(pos)
            (length,) = struct.unpack("<Q", f.read(8))
            offsets.append(pos)
            pos += 8 + 4 + length + 4
    return np.asarray(offsets, np.int64)


class TfrecordRecords:
    """One split of a tfds-prepared data set (TFRecord shards), read by index."""

    def __init__(self, version_dir: Path, split: str, cache: Path | None = None) -> None:
        self._handles: dict[int, Any] = {}
        info = json.loads((version_dir / "dataset_info.json").read_text())
        if info.get("fileFormat", "tfrecord") != "tfrecord":
            raise ValueError(
                f"{version_dir} holds {info['fileFormat']!r} files; data.pipeline='dali' reads "
                "TFRecords: prepare it with `tfds build --file_format=tfrecord`"
            )
        splits = {s["name"]: s for s in info["splits"]}
        if split not in splits:
            raise ValueError(f"{version_dir} has no split {split!r}; found: {sorted(splits)}")
        lengths = [int(n) for n in splits[split]["shardLengths"]]
        name = info["name"]
        self.paths = [
            version_dir / f"{name}-{split}.tfrecord-{i:05d}-of-{len(lengths):05d}"
            for i in range(len(lengths))
        ]
        features = json.loads((version_dir / "features.json").read_text())["featuresDict"]
        label = features["features"]["label"]["classLabel"]
        self.num_classes = int(label.get("numClasses") or len(label.get("names", [])))
        self.offsets = self._index(version_dir, split, cache)
        if len(self.offsets) != sum(lengths):
            raise ValueError(
                f"{version_dir} split {split!r}: {len(self.offsets)} records in its files, "
                f"{sum(lengths)} in dataset_info.json; prepare it again"
            )
        self.file_of = np.repeat(np.arange(len(lengths)), lengths)

    def _index(self, version_dir: Path, split: str, cache: Path | None) -> np.ndarray:
        sizes = np.asarray([p.stat().st_size for p in self.paths], np.int64)
        name = f"resflax-index-{split}.npz"
        candidates = [version_dir / name]
        fallback = (cache or Path("~/.cache/resflax").expanduser()) / (
            str(version_dir).strip("/").replace("/", "_") + "-" + name
        )
        candidates.append(fallback)
        for path in candidates:
            if path.is_file():
                with np.load(path) as saved:
                    if np.array_equal(saved["sizes"], sizes):
                        return saved["offsets"]
        offsets = np.concatenate([_scan(p) for p in self.paths])
        for path in candidates:  # beside the data where writable, else the user's cache
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez(path, offsets=offsets, sizes=sizes)
                break
            except OSError:
                continue
        return offsets

    def __len__(self) -> int:
        return len(self.offsets)

    def _record(self, i: int) -> bytes:
        file = int(self.file_of[i])
        handle = self._handles.get(file)
        if handle is None:
            handle = self._handles[file] = self.paths[file].open("rb")
        handle.seek(int(self.offsets[i]))
        (length,) = struct.unpack("<Q", handle.read(8))
        handle.seek(4, os.SEEK_CUR)
        return handle.read(length)

    def example(self, i: int) -> tuple[np.ndarray, int]:
        """Example `i`: its encoded bytes and label."""
        return parse_example(self._record(i), "image", "label")

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __del__(self) -> None:
        self.close()
