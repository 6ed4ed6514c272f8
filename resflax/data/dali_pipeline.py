"""DALI's side of data.pipeline="dali" (resflax.data.dali): the pipelines that decode, crop,
resize, flip and normalise what the host's plan names, fed through external sources, and the
step from their outputs to a batch: numpy on the CPU, or on a GPU host one pipeline per local
device whose outputs stay there (DLPack) and form the global array the step expects."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

OUTPUTS = ("image", "label", "mask")


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where batches go: "gpu" (a pipeline per local device, outputs left there as parts of a
    global array with `sharding`) or "cpu" (one pipeline, numpy out); `dtype` the step's."""

    device: str = "cpu"
    sharding: Any = None
    dtype: str = "float32"
    threads: int = -1  # per pipeline; -1: the host's cores shared among the pipelines


@dataclasses.dataclass(frozen=True)
class Choice:
    """A plan.Batch with the labels read alongside the bytes."""

    indices: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    anchor: np.ndarray | None = None
    shape: np.ndarray | None = None
    flip: np.ndarray | None = None


def device_order(sharding: Any, global_shape: tuple[int, ...]) -> list[Any]:
    """This process's devices in the order of their rows of the global batch: the i-th takes
    the i-th contiguous piece of the process's batch (as make_array_from_process_local_data)."""
    rows = sharding.addressable_devices_indices_map(global_shape)
    return sorted(rows, key=lambda d: rows[d][0].start or 0)


class _Feeder:
    """The external sources' batches, computed once per position and handed to each device's
    pipeline as its piece (the pipelines ask in order, each for its own next batch)."""

    def __init__(self, batches: Iterator[tuple[Choice, list[np.ndarray]]], parts: int) -> None:
        self.batches, self.parts = batches, parts
        self._served: list[int] = [0] * parts
        self._cache: dict[int, tuple[Choice, list[np.ndarray]]] = {}

    def _full(self, n: int) -> tuple[Choice, list[np.ndarray]]:
        if n not in self._cache:
            self._cache[n] = next(self.batches)
        return self._cache[n]

    def source(self, part: int) -> Any:
        def call() -> tuple[list[np.ndarray], ...]:
            n = self._served[part]
            self._served[part] += 1
            choice, encoded = self._full(n)
            if all(s > n for s in self._served):
                del self._cache[n]
            size = len(choice.indices) // self.parts
            piece = slice(part * size, (part + 1) * size)
            out = [encoded[piece]]
            out.append([np.int32(x) for x in choice.labels[piece]])
            out.append([np.uint8(x) for x in choice.mask[piece]])
            if choice.anchor is not None:
                out.append(list(choice.anchor[piece].astype(np.float32)))
                out.append(list(choice.shape[piece].astype(np.float32)))
                out.append([np.int32(x) for x in choice.flip[piece]])
            return tuple(out)

        return call


def _pipeline(
    spec: Any, batch: int, placement: Placement, feed: Any, train: bool, device_id: int | None,
    threads: int,
) -> Any:  # fmt: skip
    from nvidia.dali import fn, pipeline_def, types

    gpu = placement.device == "gpu"
    out_type = types.FLOAT if placement.dtype == "float32" else types.FLOAT16
    mean = [float(m) for m in spec.mean]
    std = [float(s) for s in spec.std]

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=device_id, seed=0)
    def define():
        outputs = 6 if train else 3
        parts = fn.external_source(source=feed, num_outputs=outputs, batch=True)
        encoded, label, mask = parts[:3]
        decoder = "mixed" if gpu else "cpu"
        if train:
            anchor, shape, flip = parts[3:]
            images = fn.decoders.image_slice(
                encoded, anchor, shape, device=decoder, output_type=types.RGB, axis_names="HW",
                normalized_anchor=False, normalized_shape=False,
            )  # fmt: skip
            # As tf.image.resize(bilinear) in the tf.data path: no antialiasing.
            images = fn.resize(images, resize_x=spec.image_size, resize_y=spec.image_size,
                               antialias=False)  # fmt: skip
            images = fn.crop_mirror_normalize(
                images, mirror=flip, mean=mean, std=std, dtype=out_type, output_layout="HWC"
            )
        else:
            images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=spec.eval_resize, antialias=False)
            images = fn.crop_mirror_normalize(
                images, crop=(spec.image_size, spec.image_size), mean=mean, std=std,
                dtype=out_type, output_layout="HWC",
            )  # fmt: skip
        if gpu:
            label, mask = label.gpu(), mask.gpu()
        return images, label, mask

    pipe = define()
    pipe.build()
    return pipe


class Pipelines:
    """The pipelines of one stream of batches (a training run from a position, or one eval
    pass), and the step from their outputs to a batch."""

    def __init__(
        self, spec: Any, batches: Iterator[tuple[Choice, list[np.ndarray]]], local_batch: int,
        placement: Placement, train: bool,
    ) -> None:  # fmt: skip
        self.placement = placement
        self.devices: list[Any] = [None]
        if placement.device == "gpu":
            global_shape = (local_batch * _processes(placement), 1)
            self.devices = device_order(placement.sharding, global_shape)
        parts = len(self.devices)
        if local_batch % parts:
            raise ValueError(
                f"the batch of {local_batch} per process is not divisible by its {parts} devices"
            )
        cores = os.cpu_count() or 1
        threads = placement.threads if placement.threads > 0 else max(1, cores // parts)
        self.feeder = _Feeder(batches, parts)
        self.pipes = [
            _pipeline(
                spec, local_batch // parts, placement, self.feeder.source(k), train,
                None if d is None else d.local_hardware_id, threads,
            )
            for k, d in enumerate(self.devices)
        ]  # fmt: skip

    def next(self) -> dict[str, Any]:
        outputs = [pipe.run() for pipe in self.pipes]
        if self.placement.device != "gpu":
            ((images, labels, mask),) = outputs
            return {
                "image": np.asarray(images.as_tensor()),
                "label": np.asarray(labels.as_tensor()),
                "mask": np.asarray(mask.as_tensor()).astype(bool),
            }
        return {
            name: _global([out[k] for out in outputs], self.devices, self.placement, name,
                          copy=not self.pipes[0].exec_dynamic)
            for k, name in enumerate(OUTPUTS)
        }  # fmt: skip


def _processes(placement: Placement) -> int:
    sharding = placement.sharding
    return len({d.process_index for d in sharding.device_set}) if sharding is not None else 1


def _global(
    pieces: list[Any], devices: list[Any], placement: Placement, name: str, copy: bool
) -> Any:  # pragma: no cover - runs on GPU hosts (experiments/benchmarks/gpu/gpu_input.sh)
    import jax
    import jax.dlpack

    arrays = [jax.dlpack.from_dlpack(piece.as_tensor()) for piece in pieces]
    arrays = [a.copy() if copy else a for a in arrays]
    if name == "mask":
        arrays = [a.astype(bool) for a in arrays]
    return assemble(arrays, devices, placement.sharding)


def assemble(arrays: list[Any], devices: list[Any], sharding: Any) -> Any:
    """The global array whose rows on `devices[i]` are `arrays[i]` (each already there)."""
    import jax

    rows = sum(a.shape[0] for a in arrays)
    share = len(sharding.device_set) // len(devices)
    shape = (rows * share, *arrays[0].shape[1:])
    by_device = dict(zip(devices, arrays, strict=True))
    order = list(sharding.addressable_devices_indices_map(shape))
    return jax.make_array_from_single_device_arrays(shape, sharding, [by_device[d] for d in order])
