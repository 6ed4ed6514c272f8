"""`train_and_evaluate(config, workdir)`: the training loop around the wrapped pure step.

Per step: next host batch -> shard -> step. Metric sums stay on the device until a log,
evaluation or checkpoint step, where they are fetched together (one host sync per window).
Before anything is saved the window's losses and the parameters are checked for NaN/Inf, so a
diverged state never becomes the latest checkpoint. SIGTERM (preemption) finishes the current
step, saves it and returns normally, so the process exits 0 and the next run resumes there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from resflax.data.prefetch import Prefetch
from resflax.data.sources import make_source
from resflax.models.registry import create_model
from resflax.train import config as config_lib
from resflax.train import host_memory, pretrained
from resflax.train import step as step_lib
from resflax.train.checkpoint import Checkpointer
from resflax.train.losses import averages
from resflax.train.optim import make_optimizer, make_schedule, scaled_learning_rate
from resflax.train.parallel import AXIS, make_parallel
from resflax.train.state import make_init
from resflax.train.writers import MetricWriter, Progress


class NonFiniteLossError(RuntimeError):
    """Training diverged; the message names the first bad step."""


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (installed only where Python
    allows handlers: the main thread). With several processes JAX's preemption service owns
    SIGTERM instead, and orbax's `reached_preemption` tells every process to stop at the same
    step."""

    def __init__(self, manager: Any = None) -> None:
        self.requested = False
        self._previous: Any = None
        self._manager = manager if jax.process_count() > 1 else None

    def reached(self, step: int) -> bool:
        if self._manager is not None:
            return bool(self._manager.reached_preemption(step))
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        del signum, frame
        self.requested = True

    def __enter__(self) -> _Preemption:
        if self._manager is None and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _add(totals: dict[str, float], sums: dict[str, Any]) -> dict[str, float]:
    # float64 on the host: exact for counts, and the same order of additions on resume.
    return {k: totals.get(k, 0.0) + float(v) for k, v in sums.items()}


def param_digest(params: Any) -> str:
    """sha256 of this process's copy of the parameters: equal on every replica, process and
    rerun when training is deterministic (the logs show it for comparison)."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        digest.update(np.asarray(leaf.addressable_data(0)).tobytes())
    return digest.hexdigest()[:16]


def _count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def evaluate(
    eval_fn: Any, state: Any, batches: Iterator[dict[str, np.ndarray]], shard: Any
) -> dict[str, float]:
    """Averages over every example of one evaluation pass (padding masked out), plus
    `num_examples`, the number counted."""
    totals: dict[str, float] = {}
    for batch in batches:
        totals = _add(totals, jax.device_get(eval_fn(state, shard(batch))))
    return {**averages(totals), "num_examples": int(totals.get("count", 0))}


def train_and_evaluate(config: Any, workdir: str | Path) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint. Returns the summary
    (also written to `<workdir>/summary.json` by process 0)."""
    config_lib.validate(config)
    workdir = Path(workdir)
    parallel = make_parallel(config.parallel, config.num_devices)
    eval_batch_size = config.eval_batch_size or config.batch_size
    for size in (config.batch_size, eval_batch_size):
        parallel.check_batch(size)
    lead = jax.process_index() == 0

    data = make_source(
        config.data, batch_size=config.batch_size, eval_batch_size=eval_batch_size,
        seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count(),
    )  # fmt: skip
    overrides = config_lib.model_overrides(config)
    model = create_model(
        config.model.name, num_classes=data.num_classes, dtype=config.dtype,
        axis_name=AXIS if config.parallel == "pmap" else None, **overrides,
    )  # fmt: skip
    fingerprint = {
        "model": config.model.name, "num_classes": data.num_classes, **overrides,
        "prng_impl": config.prng_impl,
    }  # fmt: skip
    # Refuse a workdir holding another model before anything in it is touched.
    checkpointer = Checkpointer(
        workdir, fingerprint, max_to_keep=config.max_to_keep,
        async_save=config.async_checkpointing,
    )  # fmt: skip
    checkpointer.check_fingerprint()

    steps = config_lib.to_steps(config, data.steps_per_epoch)
    opt = config.optimizer
    learning_rate = scaled_learning_rate(opt.learning_rate, config.batch_size, opt.reference_batch)
    schedule = make_schedule(
        config.schedule.name, learning_rate=learning_rate, total_steps=steps.total,
        warmup_steps=steps.warmup, boundaries=steps.boundaries,
        decay_factor=config.schedule.decay_factor,
        end_learning_rate=config.schedule.end_learning_rate,
    )  # fmt: skip
    tx = make_optimizer(
        opt.name, schedule, momentum=opt.momentum, nesterov=opt.nesterov,
        weight_decay=opt.weight_decay, decay_norm_and_bias=opt.decay_norm_and_bias,
        grad_clip_norm=opt.grad_clip_norm, b1=opt.b1, b2=opt.b2,
        trust_coefficient=opt.trust_coefficient,
    )  # fmt: skip
    init = make_init(model, parallel.wrap_tx(tx), (1, *data.image_shape))
    state = parallel.create_state(init, jax.random.key(config.seed, impl=config.prng_impl))

    loop: dict[str, Any] = {"window": {}, "train_seconds": 0.0, "best": None}
    # A data position means something only for the same data, batch, seed and processes.
    setup = {
        "data": data.name, "batch_size": config.batch_size, "seed": config.seed,
        "steps_per_epoch": data.steps_per_epoch,
        "processes": jax.process_count() if data.per_process_shards else "any",
    }  # fmt: skip
    restored = checkpointer.restore(parallel.unreplicate(state))
    if restored is not None:
        single, saved = restored
        if saved.get("setup", setup) != setup:
            raise ValueError(
                f"workdir {workdir} was trained with {saved['setup']}, not {setup}: its data "
                "position would point at other examples; use another --workdir"
            )
        state = parallel.replicate(single)
        data.train.restore(saved["data"])
        loop.update(saved["loop"])
    elif config.init_from:
        variables, meta = pretrained.load(config.init_from)
        state = parallel.replicate(
            pretrained.merge(parallel.unreplicate(state), variables, config.model.name, meta)
        )
        logging.info("initialised from %s (%s)", config.init_from, meta["source"])
    start = int(jax.device_get(parallel.unreplicate(state).step))
    if start > steps.total:
        raise ValueError(
            f"workdir {workdir} is at step {start}, beyond num_steps={steps.total}; raise the "
            "number of steps or use another --workdir"
        )
    if lead:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    writer = MetricWriter(workdir, enabled=lead, resume_step=start)
    progress = Progress(steps.total, config.batch_size, enabled=lead)
    num_params = _count_params(parallel.unreplicate(state).params)
    logging.info(
        "%s: %s params, %d devices (%s), %d steps of batch %d (%d per epoch)%s",
        config.model.name, f"{num_params:,}", parallel.num_devices, config.parallel,
        steps.total, config.batch_size, data.steps_per_epoch,
        f", resuming at step {start}" if start else "",
    )  # fmt: skip

    train_batches = Prefetch(data.train, parallel.shard_batch, config.data.prefetch)
    train_fn = parallel.train_step(
        functools.partial(step_lib.train_step, label_smoothing=config.label_smoothing)
    )
    eval_fn = parallel.eval_step(step_lib.eval_step)

    # stop_at_step ends this session early with a checkpoint (a job split across time limits,
    # or a test); the schedule still spans steps.total.
    end = min(steps.total, config.stop_at_step or steps.total)

    def every(n: int, step: int) -> bool:
        return step == steps.total or (n > 0 and step % n == 0)

    def save(state: Any, step: int, window: dict[str, float]) -> None:
        single = parallel.unreplicate(state)
        if not bool(_all_finite((single.params, single.batch_stats, single.opt_state))):
            raise NonFiniteLossError(
                f"the training state became non-finite by step {step}; not saved (latest good "
                f"checkpoint: step {checkpointer.latest_step()})"
            )
        position = {
            "setup": setup,
            "data": train_batches.position(),
            "loop": {**loop, "window": window, "train_seconds": loop["train_seconds"] + elapsed()},
        }
        checkpointer.save(parallel.unreplicate(state), position)

    session_start = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - session_start

    compile_seconds = None
    heap_guard = host_memory.GrowthGuard(config.get("host_malloc_max_growth", 2.0))
    rates: list[float] = []
    last_eval: dict[str, float] | None = None
    pending: list[tuple[int, Any]] = []
    window: dict[str, float] = dict(loop["window"])
    step = start
    preempted = False
    try:
        with _Preemption(checkpointer.manager) as preemption:
            while step < end:
                batch = next(train_batches)
                state, sums = train_fn(state, batch)
                step += 1
                pending.append((step, sums))
                if compile_seconds is None:
                    jax.block_until_ready(sums)
                    compile_seconds = elapsed()
                    progress.start(step)
                preempted = preemption.reached(step)
                log, do_eval = (
                    every(config.log_every_steps, step),
                    every(config.eval_every_steps, step),
                )
                do_save = every(config.checkpoint_every_steps, step) or preempted or step == end
                if not (log or do_eval or do_save):
                    continue
                for at, fetched in jax.device_get(pending):
                    if not np.isfinite(fetched["loss_sum"]):
                        raise NonFiniteLossError(
                            f"training loss is {fetched['loss_sum']} at step {at} (learning rate "
                            f"{float(schedule(at - 1)):.4g}); stopped, latest good checkpoint: "
                            f"step {checkpointer.latest_step()}"
                        )
                    window = _add(window, fetched)
                pending = []
                if log:
                    heap_guard.check()
                    scalars = {**averages(window), "learning_rate": float(schedule(step - 1))}
                    speed = progress.report(step, scalars)
                    if speed:
                        rates.append(speed["images_per_sec"])
                    writer.write(step, "train", {**scalars, **speed})
                    window = {}
                if do_eval:
                    last_eval = evaluate(eval_fn, state, data.make_eval(), parallel.shard_batch)
                    writer.write(step, "eval", last_eval)
                    logging.info("eval at step %d: %s", step, last_eval)
                    best = loop["best"]
                    if best is None or last_eval["top1"] > best["top1"]:
                        loop["best"] = {"step": step, **last_eval}
                    progress.start(step)
                if do_save:
                    save(state, step, window)
                if preempted:
                    logging.info("SIGTERM: saved step %d; exiting to resume later", step)
                    break
            checkpointer.wait()  # still under the handler: a SIGTERM now cannot cut the save
    finally:
        checkpointer.wait()
        checkpointer.close()
        writer.close()

    status = "finished" if step == steps.total else "preempted" if preempted else "stopped"
    if last_eval is None and status == "finished":
        # Resumed a run that had already finished: evaluate so the summary is complete.
        last_eval = evaluate(eval_fn, state, data.make_eval(), parallel.shard_batch)
    summary = {
        "status": status,
        "model": config.model.name,
        "num_params": num_params,
        "data": data.name,
        "image_shape": list(data.image_shape),
        "num_classes": data.num_classes,
        "step": step,
        "total_steps": steps.total,
        "epochs": step / data.steps_per_epoch,
        "batch_size": config.batch_size,
        "devices": parallel.num_devices,
        "parallel": config.parallel,
        "dtype": config.dtype,
        "backend": jax.default_backend(),
        "conv_grad": model.resolved_conv_grad(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "host_malloc": host_memory.in_effect(),
        "final_eval": last_eval,
        "best_eval": loop["best"],
        "train_seconds": loop["train_seconds"] + elapsed(),
        "compile_seconds": compile_seconds,
        "images_per_sec": float(np.median(rates)) if rates else None,
        "param_digest": param_digest(parallel.unreplicate(state).params),
    }
    logging.info("process %d: parameter digest %s", jax.process_index(), summary["param_digest"])
    if lead:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
