"""NVIDIA DALI input pipeline (`data.pipeline = "dali"`) for image folders and the
tfds-prepared ImageNet-style data sets: images decoded, cropped, resized, flipped and normalised
by DALI, on the GPU ("mixed" decoding with nvjpeg) or, without one, on the CPU.

The host decides everything random (resflax.data.plan: the order from (seed, epoch), the crop
windows and flips per batch) and hands DALI the encoded bytes with the windows through an
external source; DALI does the pixel work. So a batch is a function of its position (epoch,
index), resume is exact and process shards are disjoint exactly as in the other sources, and the
crops follow the tf.data path's distribution. DALI's own readers would shuffle in their own
order and resume only through their checkpoints.

On a GPU each local device has its own pipeline, fed its contiguous piece of this process's
batch; its outputs stay on that device (DLPack) and form the global array the step expects.
Training batches are NHWC in float32, or float16 where the step computes in a 16-bit type (DALI
has no bfloat16; the model's first convolution casts). On the CPU one pipeline gives numpy
batches that the loop places as it places any other source's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from resflax import extras
from resflax.data import plan
from resflax.data.arrays import EpochPosition
from resflax.data.dali_pipeline import Choice, Pipelines, Placement
from resflax.data.records import image_sizes

INSTALL = extras.INSTALL["dali"]
SOURCES = ("image_folder", "imagenet2012", "imagenette")


class DaliUnavailableError(ValueError):
    """DALI is chosen but cannot run here."""


def _built_for() -> int | None:
    """The CUDA major version the installed DALI wheel is built for (12, 13), if known."""
    from importlib import metadata

    for major in (13, 12):
        try:
            metadata.version(f"nvidia-dali-cuda{major}0")
            return major
        except metadata.PackageNotFoundError:
            continue
    return None


def _check_cuda(driver: int, built: int | None) -> None:
    """DALI on the GPU needs a driver (`driver`: its CUDA version as 13000 for 13.0; 0 for
    none) at least as new as the CUDA its wheel is built for."""
    if driver <= 0:
        raise DaliUnavailableError(
            "data.pipeline='dali' on the GPU: DALI finds no CUDA driver; use "
            "data.pipeline='tfdata' or check the driver (nvidia-smi)"
        )
    if built is not None and driver < built * 1000:
        other = "dali-cuda12" if built == 13 else "dali"
        raise DaliUnavailableError(
            f"data.pipeline='dali': nvidia-dali-cuda{built}0 needs a CUDA {built} driver, this "
            f"one is CUDA {driver // 1000}.{driver % 1000 // 10}; install "
            f"pip install 'resflax[{other}]' instead, or use data.pipeline='tfdata'"
        )


def require_dali(device: str) -> Any:
    """The `nvidia.dali` module; one line naming the install command when it is missing or,
    on the GPU, cannot run on this driver."""
    try:
        import nvidia.dali
        from nvidia.dali import backend
    except ImportError as e:
        raise DaliUnavailableError(
            f"data.pipeline='dali' needs NVIDIA DALI, which is not installed ({e.name}): "
            f"{INSTALL}, or use data.pipeline='tfdata'"
        ) from None
    if device == "gpu":
        _check_cuda(backend.GetCudaVersion(), _built_for())
    return nvidia.dali


def _read(records: Any, indices: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    pairs = [records.example(int(i)) for i in indices]
    return [p[0] for p in pairs], np.asarray([p[1] for p in pairs], np.int32)


class DaliTrain(EpochPosition, Iterator[dict[str, Any]]):
    """Endless training batches, resumable at (epoch, index): a restore builds new pipelines
    fed from that position on."""

    def __init__(
        self, spec: Any, records: Any, local_batch: int, steps_per_epoch: int, *, seed: int,
        placement: Placement, process_index: int, process_count: int,
    ) -> None:  # fmt: skip
        self.spec, self.records, self.local_batch = spec, records, local_batch
        self.steps_per_epoch, self.seed, self.placement = steps_per_epoch, seed, placement
        self.process_index, self.process_count = process_index, process_count
        self.epoch, self.index = 0, 0
        self._pipelines: Pipelines | None = None

    def _restored(self) -> None:
        self._pipelines = None

    def _choices(self, epoch: int, index: int) -> Iterator[tuple[Choice, list[np.ndarray]]]:
        order = None
        while True:
            if index >= self.steps_per_epoch:
                epoch, index, order = epoch + 1, 0, None
            if order is None:
                order = plan.epoch_order(len(self.records), self.seed, epoch)
            indices = plan.train_indices(
                order, index, self.local_batch, self.process_index, self.process_count
            )
            encoded, labels = _read(self.records, indices)
            chosen = plan.train_batch(
                indices, image_sizes(encoded), seed=self.seed, epoch=epoch, index=index,
                process_index=self.process_index,
            )  # fmt: skip
            yield Choice(indices, labels, chosen.mask, chosen.anchor, chosen.shape,
                         chosen.flip), encoded  # fmt: skip
            index += 1

    def __next__(self) -> dict[str, Any]:
        if self.index >= self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        if self._pipelines is None:
            self._pipelines = Pipelines(
                self.spec, self._choices(self.epoch, self.index),
                self.local_batch, self.placement, train=True,
            )  # fmt: skip
        batch = self._pipelines.next()
        self.index += 1
        return batch


def eval_batches(
    spec: Any, records: Any, local_batch: int, *, placement: Placement, process_index: int,
    process_count: int,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """One pass over this process's share of the split, padded and masked (plan.eval_batches)."""
    chosen = plan.eval_batches(len(records), local_batch, process_index, process_count)

    def choices() -> Iterator[tuple[Choice, list[np.ndarray]]]:
        for batch in chosen:
            encoded, labels = _read(records, batch.indices)
            yield Choice(batch.indices, labels, batch.mask), encoded

    pipelines = Pipelines(spec, choices(), local_batch, placement, train=False)
    for _ in chosen:
        yield pipelines.next()


def make_dali_source(
    data: Any, *, batch_size: int, eval_batch_size: int, seed: int, process_index: int,
    process_count: int, placement: Placement,
) -> Any:  # fmt: skip
    """A `DataSource` fed by DALI; sizes are global."""
    from resflax.data import records as records_lib
    from resflax.data.folder import check_image_folder
    from resflax.data.sources import DataSource, check_num_classes
    from resflax.data.tfds_spec import epoch_steps, not_found, spec_from_config

    require_dali(placement.device)
    spec = spec_from_config(data)
    if spec.name == "image_folder":
        if not spec.folder or not os.path.isdir(spec.folder):
            raise not_found(spec, f"data.folder={spec.folder!r}")
        check_image_folder(spec.folder, spec.train_split, spec.eval_split)
        train = records_lib.FolderRecords(spec.folder, spec.train_split)
        held_out = records_lib.FolderRecords(spec.folder, spec.eval_split)
    else:
        try:
            root = records_lib.tfds_version_dir(spec.data_dir, spec.tfds_name)
        except FileNotFoundError as e:
            raise not_found(spec, str(e)) from None
        train = records_lib.TfrecordRecords(root, spec.train_split)
        held_out = records_lib.TfrecordRecords(root, spec.eval_split)
    local, local_eval = batch_size // process_count, eval_batch_size // process_count
    steps_per_epoch = epoch_steps(spec, batch_size, len(train), process_count)
    check_num_classes(data, train.num_classes)
    shard = dict(process_index=process_index, process_count=process_count)
    return DataSource(
        name=spec.name,
        train=DaliTrain(
            spec, train, local, steps_per_epoch, seed=seed, placement=placement, **shard
        ),
        make_eval=lambda: eval_batches(spec, held_out, local_eval, placement=placement, **shard),
        num_train=len(train),
        num_eval=len(held_out),
        image_shape=(spec.image_size, spec.image_size, 3),
        num_classes=train.num_classes,
        steps_per_epoch=steps_per_epoch,
        per_process_shards=True,
    )
