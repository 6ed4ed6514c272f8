"""What checkpoint verification costs: a ResNet-50 training state (parameters, batch statistics,
SGD momentum) saved by `resflax.train.checkpoint.Checkpointer`, then timed:

    restore     reading the newest step back (orbax, TensorStore), as a resume does
    checksums   `resflax.train.integrity.array_checksums` of the restored arrays (the check
                `restore` adds), on the same devices
    save sums   the same checksums of the state at save time (added to every save)

    python experiments/benchmarks/micro/checkpoint_integrity.py [--model resnet50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import jax
import optax

from experiments.benchmarks.harness.common import RESULTS, environment, write_result
from resflax.models import create_model
from resflax.train import integrity
from resflax.train.checkpoint import Checkpointer, _arrays
from resflax.train.optim import make_optimizer
from resflax.train.state import make_init


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "checkpoint_integrity.md"))
    args = ap.parse_args(argv)
    tx = make_optimizer("sgd", optax.constant_schedule(0.1), momentum=0.9)
    init = make_init(create_model(args.model), tx, (1, 224, 224, 3))
    state = jax.jit(init)(jax.random.key(0))
    arrays = _arrays(state)
    size = sum(x.nbytes for x in jax.tree.leaves(arrays))
    with tempfile.TemporaryDirectory() as workdir:
        ckpt = Checkpointer(workdir, {"model": args.model}, async_save=False)
        ckpt.save(state, {"epoch": 0})
        target = jax.eval_shape(init, jax.random.key(0))
        restored = Checkpointer(workdir, {"model": args.model}).restore(target)[0]
        reader = Checkpointer(workdir, {"model": args.model})
        integrity.array_checksums(arrays)  # compiled once, as in a run
        rows = {
            "restore, verified (a resume)": _timed(lambda: reader.restore(target)[0], args.repeats),
            "checksums at restore": _timed(
                lambda: integrity.array_checksums(_arrays(restored)), args.repeats
            ),
            "checksums at save": _timed(lambda: integrity.array_checksums(arrays), args.repeats),
        }
    med = {k: statistics.median(v) for k, v in rows.items()}
    sums, restore = med["checksums at restore"], med["restore, verified (a resume)"]
    share = sums / restore
    lines = ["| what | median s | runs |", "|---|---:|---|"]
    lines += [f"| {k} | {med[k]:.3f} | {', '.join(f'{t:.3f}' for t in v)} |"
              for k, v in rows.items()]  # fmt: skip
    lines += ["", f"Verification is {100 * share:.0f}% of a verified restore "
              f"({sums:.3f} s of {restore:.3f} s)."]  # fmt: skip
    intro = (
        f"{args.model} training state, {len(jax.tree.leaves(arrays))} arrays, {size / 2**20:.0f} "
        f"MiB, on {jax.device_count()} {jax.default_backend()} device(s); {args.repeats} repeats. "
        f"Machine: {environment(('jax', 'jaxlib', 'orbax-checkpoint'))}."
    )
    command = " ".join(
        ["python experiments/benchmarks/micro/checkpoint_integrity.py", *(argv or sys.argv[1:])]
    )
    write_result(Path(args.out), "Checkpoint integrity: what verification costs", command, intro,
                 "\n".join(lines))  # fmt: skip


if __name__ == "__main__":
    main()
