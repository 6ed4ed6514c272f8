"""Input pipeline throughput beside the train step's appetite: would the data keep up?

    python -m experiments.benchmarks.cpu.input_pipeline --out experiments/results/input_pipeline.md
    (make bench-input)

Preprocessing: the same tf.data map functions as training (`resflax.data.tfds`), fed encoded
images from memory so that storage speed is left out: CIFAR as 32x32 PNGs (as tfds stores
them), ImageNet as JPEGs of ImageNet's median size (500x375, quality 90). Train step: resflax's
jit-compiled SGD step under the CLI's execution policy (`ops=resflax.ops.auto()`) on synthetic
batches (ResNet-56 at 32x32 batch 128, ResNet-50 at 224x224 batch 32), median step time after
warm-up. The ratio pipeline / step above 1 means the pipeline keeps up on this machine. Both
share the same CPU cores here; on an accelerator host the step runs elsewhere and the pipeline
has the CPUs to itself.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import statistics
import sys
import time

import numpy as np


def encoded_images(kind: str, count: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        if kind == "cifar":
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            fmt, options = "PNG", {}
        else:
            # Smooth random content: JPEG sizes like photos' rather than like noise's.
            small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            pixels = np.asarray(Image.fromarray(small).resize((500, 375), Image.BILINEAR))
            pixels = np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)
            fmt, options = "JPEG", {"quality": 90}
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt, **options)
        out.append(buffer.getvalue())
    return out


def pipeline_rate(kind: str, batch: int, batches: int) -> dict[str, float]:
    import tensorflow as tf

    from experiments.configs import base
    from resflax.data.tfds import _train_example, spec_from_config

    data = base.get_config().data
    data.name = "cifar10" if kind == "cifar" else "imagenet2012"
    spec = spec_from_config(data)
    images = encoded_images(kind, 256)
    records = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.zeros(len(images), np.int64)}
    ).repeat()
    dataset = records.enumerate().map(
        lambda i, ex: _train_example(ex, tf.stack([0, tf.cast(i, tf.int32)]), spec),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
    )  # fmt: skip
    iterator = iter(dataset.batch(batch, drop_remainder=True).prefetch(2).as_numpy_iterator())
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    return {
        "images_per_sec": batches * batch / seconds,
        "bytes_per_image": float(np.mean([len(x) for x in images])),
    }


def step_rate(model_name: str, size: int, batch: int, steps: int) -> dict[str, float]:
    import jax
    import optax

    from resflax.models import create_model
    from resflax.ops import auto
    from resflax.train import parallel, state, step

    par = parallel.make_parallel("jit")
    model = create_model(model_name, ops=auto())
    tx = optax.sgd(0.1, momentum=0.9)
    train_state = par.create_state(
        state.make_init(model, tx, (1, size, size, 3)), jax.random.key(0)
    )
    rng = np.random.default_rng(0)
    host = {
        "image": rng.standard_normal((batch, size, size, 3), dtype=np.float32),
        "label": rng.integers(0, model.num_classes, batch).astype(np.int32),
        "mask": np.ones(batch, bool),
    }
    device_batch = par.shard_batch(host)
    train = par.train_step(step.train_step)
    start = time.perf_counter()
    train_state, sums = train(train_state, device_batch)
    jax.block_until_ready(sums)
    compile_seconds = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_state, sums = train(train_state, device_batch)
        jax.block_until_ready(sums)
        times.append(time.perf_counter() - start)
    return {"images_per_sec": batch / statistics.median(times), "compile_s": compile_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="markdown results file to write")
    parser.add_argument("--batches", type=int, default=20, help="pipeline batches timed")
    parser.add_argument("--steps", type=int, default=3, help="train steps timed (median)")
    args = parser.parse_args()

    rows = []
    for kind, model, size, batch in (
        ("cifar", "resnet56", 32, 128),
        ("imagenet", "resnet50", 224, 32),
    ):
        pipe = pipeline_rate(kind, batch, args.batches)
        print(f"{kind} pipeline: {pipe['images_per_sec']:,.0f} img/s", flush=True)
        train = step_rate(model, size, batch, args.steps)
        print(f"{model} step: {train['images_per_sec']:,.1f} img/s", flush=True)
        rows.append((kind, model, size, batch, pipe, train))

    import jax
    import tensorflow as tf

    lines = [
        "# Input pipeline vs train step",
        "",
        "Command: `python -m experiments.benchmarks.cpu.input_pipeline "
        f"{' '.join(sys.argv[1:])}`  ",
        f"Date: {datetime.date.today()}; machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; jax {jax.__version__} ({jax.devices()[0].platform}), "
        f"tensorflow {tf.__version__}. Method: see the script's docstring.",
        "",
        "| data | encoded bytes/image | pipeline img/s | model (batch, size) | train step img/s "
        "| pipeline / step |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for kind, model, size, batch, pipe, train in rows:
        ratio = pipe["images_per_sec"] / train["images_per_sec"]
        lines.append(
            f"| {kind} | {pipe['bytes_per_image']:,.0f} | {pipe['images_per_sec']:,.0f} | "
            f"{model} ({batch}, {size}) | {train['images_per_sec']:,.1f} | {ratio:,.1f}x |"
        )
    cores = os.cpu_count() or 1
    lines += [
        "",
        "On this CPU the train step, not the input, is the bottleneck by two orders of magnitude.",
        "For an accelerator host the useful figure is the pipeline's rate per core: "
        + ", ".join(
            f"{kind} {pipe['images_per_sec'] / cores:,.0f} img/s" for kind, _, _, _, pipe, _ in rows
        )
        + f" per core ({cores} cores measured together). A device that trains at R img/s "
        "needs about R divided by that many host cores for preprocessing (decode + crop + "
        "flip + normalise; storage reads not included).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
