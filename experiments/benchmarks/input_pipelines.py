"""The input pipelines alone: ImageNet-style training batches per second from an image folder,
through resflax's own sources (`make_source`: files read, decoded, random-resized-cropped to
224, flipped, normalised, batched), tf.data and DALI side by side.

    python experiments/benchmarks/input_pipelines.py --folder /tmp/jpegs --write 2048
    (make bench-input runs it on the CPU; experiments/benchmarks/gpu/gpu_input.sh on a GPU)

`--write N` first writes N ImageNet-like JPEGs (500x375, quality 90, smooth random content so
that files are photo-sized, ~110 KB) in 10 classes under <folder>/train, and 256 under
<folder>/test, unless the folder already holds them. Each pipeline then runs `--warmup`
batches and is timed over `--batches`: tf.data's batches are host numpy arrays (its threads use
every core), DALI's are where it works: numpy from its CPU pipeline, or arrays already on the
GPU (waited for). The files are read from the page cache after the first pass (storage speed is
left out, as on a host whose data set fits in memory). Writes a markdown table and JSON rows.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

CLASSES = 10


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(small).resize((500, 375), Image.BILINEAR))
    pixels = np.clip(pixels + rng.normal(0, 8, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _write_one(job: tuple[str, int]) -> None:
    path, seed = job
    Path(path).write_bytes(_jpeg(seed))


def write_folder(root: Path, count: int, eval_count: int = 256) -> None:
    """`count` training and `eval_count` test JPEGs in CLASSES classes (kept if present)."""
    jobs = []
    for split, n, offset in (("train", count, 0), ("test", eval_count, 10**7)):
        for i in range(n):
            folder = root / split / f"class{i % CLASSES:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{i:07d}.jpg"
            if not path.exists():
                jobs.append((str(path), offset + i))
    if jobs:
        with multiprocessing.Pool(os.cpu_count()) as pool:
            pool.map(_write_one, jobs, chunksize=64)


def feeding(folder: Path, batch: int, batches: int, warmup: int) -> dict:
    """The DALI pipeline's host side alone, on one thread: files read, sizes from the headers,
    order and crop windows planned (what each `pipe.run()` asks of the training process)."""
    from experiments.configs import base
    from resflax.data import records
    from resflax.data.dali import DaliTrain
    from resflax.data.tfds_spec import spec_from_config

    data = base.get_config().data
    data.update(dict(name="image_folder", folder=str(folder), image_size=224))
    split = records.FolderRecords(str(folder), "train")
    train = DaliTrain(
        spec_from_config(data), split, batch, len(split) // batch, seed=0, placement=None,
        process_index=0, process_count=1,
    )  # fmt: skip
    choices = train._choices(0, 0)
    for _ in range(warmup):
        next(choices)
    start = time.perf_counter()
    for _ in range(batches):
        next(choices)
    seconds = time.perf_counter() - start
    return {
        "pipeline": "dali host feeding", "device": "cpu (1 thread)", "batch": batch,
        "batches": batches, "images_per_sec": batch * batches / seconds, "dtype": "bytes",
        "cores": 1,
    }  # fmt: skip


def measure(folder: Path, pipeline: str, batch: int, batches: int, warmup: int, dtype: str) -> dict:
    import jax

    from experiments.configs import base
    from resflax.data.sources import make_source
    from resflax.ops import data_device
    from resflax.train.parallel import make_parallel

    data = base.get_config().data
    data.update(dict(name="image_folder", folder=str(folder), image_size=224, pipeline=pipeline))
    placement = None
    device = "cpu"
    if pipeline == "dali":
        from resflax.data.dali import Placement

        device = data_device()
        sharding = make_parallel("jit").batch_sharding
        placement = Placement(device=device, sharding=sharding, dtype=dtype)
    source = make_source(data, batch_size=batch, eval_batch_size=batch, seed=0, placement=placement)
    train = source.train
    for _ in range(warmup):
        jax.block_until_ready(next(train)["image"])
    start = time.perf_counter()
    for _ in range(batches):
        out = next(train)
    jax.block_until_ready(out["image"])
    seconds = time.perf_counter() - start
    return {
        "pipeline": pipeline, "device": device, "batch": batch, "batches": batches,
        "images_per_sec": batch * batches / seconds, "dtype": str(out["image"].dtype),
        "cores": os.cpu_count(),
    }  # fmt: skip


def table(rows: list[dict], title: str, command: str) -> str:
    import jax

    versions = [f"jax {jax.__version__}"]
    for name, module in (("tensorflow", "tensorflow"), ("nvidia-dali", "nvidia.dali")):
        try:
            versions.append(f"{name} {__import__(module, fromlist=['x']).__version__}")
        except ImportError:
            versions.append(f"{name} not installed")
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.date.today()}; machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, backend {jax.default_backend()}; {', '.join(versions)}. "
        "Method: experiments/benchmarks/input_pipelines.py's docstring.",
        "",
        "| pipeline | works on | batch | output | img/s | img/s per host core |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['pipeline']} | - | - | - | not measured: {r['error']} | - |")
            continue
        lines.append(
            f"| {r['pipeline']} | {r['device']} | {r['batch']} | {r['dtype']} | "
            f"{r['images_per_sec']:,.0f} | {r['images_per_sec'] / r['cores']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", required=True)
    parser.add_argument("--write", type=int, default=0, help="JPEGs to write first (kept)")
    parser.add_argument("--pipelines", nargs="+", default=["tfdata", "dali", "feeding"],
                        help="tfdata, dali, and feeding: DALI's host side alone")  # fmt: skip
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16", help="the step's compute dtype")
    parser.add_argument("--out", default=None, help="markdown file; JSON rows beside it")
    args = parser.parse_args()
    folder = Path(args.folder)
    if args.write:
        start = time.perf_counter()
        write_folder(folder, args.write)
        print(f"wrote {folder}: {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for pipeline in args.pipelines:
        try:
            if pipeline == "feeding":
                row = feeding(folder, args.batch, args.batches, args.warmup)
            else:
                row = measure(folder, pipeline, args.batch, args.batches, args.warmup, args.dtype)
        except (ImportError, ValueError) as e:  # a pipeline not installed here: say so
            row = {"pipeline": pipeline, "error": str(e).splitlines()[0]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    text = table(rows, "Input pipelines alone", "python " + " ".join(sys.argv))
    print(text)
    if args.out:
        out = Path(args.out)
        out.write_text(text)
        out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
