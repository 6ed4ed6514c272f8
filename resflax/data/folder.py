"""An image folder (`<data.folder>/<split>/<class>/*.jpg|jpeg|png`) checked before tfds reads
it: the splits exist, the training split has at least two classes and no empty class, and every
image file starts like an image. tfds' `ImageFolder` would accept an empty or one-class folder
(a one-class run reaches 100% accuracy and means nothing) and fail mid-epoch, without the
file's name, on bytes that are not an image.

Only each file's first bytes are read (a scan of ImageNet's 1.28M files costs about what one
epoch's directory listing does); a file with a valid header but a damaged body is not found
here: decoding it stops training with TensorFlow's error, as one line.
"""

from __future__ import annotations

import os
from pathlib import Path

# What tfds' ImageFolder lists (case-insensitive), and what tf.io.decode_image reads.
SUFFIXES = (".jpg", ".jpeg", ".png")
SIGNATURES = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
}
LAYOUT = "<data.folder>/<split>/<class name>/*.jpg|jpeg|png"


def _folders(path: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())


def _images(path: Path) -> list[Path]:
    return sorted(
        Path(entry.path)
        for entry in os.scandir(path)
        if entry.is_file() and entry.name.lower().endswith(SUFFIXES)
    )


def _check_image(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(16)
    if not any(head.startswith(signature) for signature in SIGNATURES):
        what = "is empty" if not head else f"starts with {head[:8]!r}"
        raise ValueError(
            f"image {str(path)!r} {what}: not a JPEG, PNG, GIF or BMP file; remove or "
            "replace it (every file named *.jpg|jpeg|png under the folder is read)"
        )


def check_image_folder(folder: str, train_split: str, eval_split: str) -> list[str]:
    """The class names of `folder`'s training split; raises naming the first problem: a
    missing split, fewer than two classes, an empty class or split, a file that is not an
    image."""
    root = Path(folder)
    splits = _folders(root)
    for role, split in (("data.train_split", train_split), ("data.eval_split", eval_split)):
        if split not in splits:
            raise ValueError(
                f"data.folder={folder!r} has no {split!r} folder ({role}); found: {splits}; "
                f"put images in {LAYOUT}"
            )
    classes = _folders(root / train_split)
    if len(classes) < 2:
        raise ValueError(
            f"data.folder={folder!r}: its {train_split!r} split has {len(classes)} class "
            f"folder(s) {classes}; at least 2 classes are needed ({LAYOUT})"
        )
    for split in dict.fromkeys((train_split, eval_split)):
        count = 0
        for name in _folders(root / split):
            images = _images(root / split / name)
            if not images and split == train_split:
                raise ValueError(
                    f"class folder {str(root / split / name)!r} holds no "
                    f"{'/'.join(SUFFIXES)} images; remove it or add images"
                )
            for image in images:
                _check_image(image)
            count += len(images)
        if count == 0:
            raise ValueError(
                f"split folder {str(root / split)!r} holds no {'/'.join(SUFFIXES)} images in "
                f"class folders ({LAYOUT})"
            )
    return classes
