"""`train_and_evaluate(config, workdir)`: the training loop around the wrapped pure step, in
three parts: `setup` (data, model, optimizer, state, resume), `Session.run` (the steps, logs,
evaluations and checkpoints) and `summarise`.

Per step: next host batch -> shard -> step. Metric sums stay on the device until a log,
evaluation or checkpoint step, where they are fetched together (one host sync per window).
Before anything is saved the window's losses and the parameters are checked for NaN/Inf, so a
diverged state never becomes the latest checkpoint. SIGTERM (preemption) finishes the current
step, saves it and returns normally, so the process exits 0 and the next run resumes there.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from resflax.data.prefetch import Prefetch
from resflax.losses import averages
from resflax.runtime import host_memory
from resflax.train import resume
from resflax.train import step as step_lib
from resflax.train.lock import WorkdirLock
from resflax.train.setup import Run, execution, setup
from resflax.train.signals import Preemption
from resflax.train.writers import MetricWriter, Progress, strict_json


class NonFiniteLossError(RuntimeError):
    """Training diverged; the message names the first bad step."""


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


def evaluate(
    eval_fn: Any, state: Any, batches: Iterator[dict[str, np.ndarray]], shard: Any
) -> dict[str, float]:
    """Averages over every example of one evaluation pass (padding masked out), plus
    `num_examples`, the number counted."""
    totals: dict[str, float] = {}
    for batch in batches:
        totals = _add(totals, jax.device_get(eval_fn(state, shard(batch))))
    return {**averages(totals), "num_examples": int(totals.get("count", 0))}


class Session:
    """The steps of one session: step, fetch metrics by window, log, evaluate, save."""

    def __init__(self, run: Run) -> None:
        config = run.config
        self.run = run
        self.writer = MetricWriter(run.workdir, enabled=run.lead, resume_step=run.start)
        self.progress = Progress(run.steps.total, config.batch_size, enabled=run.lead)
        self.batches = Prefetch(run.data.train, run.parallel.shard_batch, config.data.prefetch)
        self.train_fn = run.parallel.train_step(
            functools.partial(step_lib.train_step, label_smoothing=config.label_smoothing)
        )
        self.eval_fn = run.parallel.eval_step(step_lib.eval_step)
        self.heap_guard = host_memory.GrowthGuard(config.get("host_malloc_max_growth", 2.0))
        self.started = time.perf_counter()
        self.compile_seconds: float | None = None
        self.rates: list[float] = []
        self.last_eval: dict[str, float] | None = None
        # The metric sums since the last log line (a list of them, one per member, for a
        # population), saved with checkpoints so that a resumed run logs the same averages.
        self.window: Any = copy.deepcopy(run.loop["window"])
        self.pending: list[tuple[int, Any]] = []
        self.step = run.start
        self.preempted = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def _every(self, n: int) -> bool:
        return self.step == self.run.steps.total or (n > 0 and self.step % n == 0)

    def run_steps(self) -> None:
        """Steps until the end, `stop_at_step` (the schedule still spans steps.total) or a
        SIGTERM, which saves the step it finishes and returns normally."""
        run, config = self.run, self.run.config
        end = min(run.steps.total, config.stop_at_step or run.steps.total)
        try:
            with Preemption(run.checkpointer.manager) as preemption:
                while self.step < end:
                    self._one_step()
                    self.preempted = preemption.reached(self.step)
                    log = self._every(config.log_every_steps)
                    do_eval = self._every(config.eval_every_steps)
                    do_save = (self._every(config.checkpoint_every_steps) or self.preempted
                               or self.step == end)  # fmt: skip
                    if not (log or do_eval or do_save):
                        continue
                    self._fetch()
                    if log:
                        self._log()
                    if do_eval:
                        self._evaluate()
                    if do_save:
                        self._save()
                    if self.preempted:
                        logging.info("stop requested: saved step %d; exiting to resume later",
                                     self.step)  # fmt: skip
                        break
                run.checkpointer.wait()  # still under the handler: a SIGTERM cannot cut the save
        finally:
            run.checkpointer.wait()
            run.checkpointer.close()
            self.writer.close()

    def _one_step(self) -> None:
        self.run.state, sums = self.train_fn(self.run.state, next(self.batches))
        self.step += 1
        self.pending.append((self.step, sums))
        if self.compile_seconds is None:
            jax.block_until_ready(sums)
            self.compile_seconds = self.elapsed()
            self.progress.start(self.step)

    def _fetch(self) -> None:
        """The window's metric sums, fetched together (one host sync), checked for NaN/Inf."""
        for at, fetched in jax.device_get(self.pending):
            if not np.isfinite(fetched["loss_sum"]):
                raise NonFiniteLossError(
                    f"training loss is {fetched['loss_sum']} at step {at} (learning rate "
                    f"{float(self.run.schedule(at - 1)):.4g}); stopped, "
                    f"{self.run.checkpointer.latest_good()}"
                )
            self.window = _add(self.window, fetched)
        self.pending = []

    def _log(self) -> None:
        self.heap_guard.check()
        scalars = {**averages(self.window),
                   "learning_rate": float(self.run.schedule(self.step - 1))}  # fmt: skip
        speed = self.progress.report(self.step, scalars)
        if speed:
            self.rates.append(speed["images_per_sec"])
        self.writer.write(self.step, "train", {**scalars, **speed})
        self.window = {}

    def complete(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The summary as this kind of session reports it (a population adds its members)."""
        return summary

    def final_evaluation(self) -> Any:
        """The evaluation a summary reports (a population's leaves out stopped members)."""
        return self.evaluate()

    def evaluate(self) -> dict[str, float]:
        run = self.run
        return evaluate(self.eval_fn, run.state, run.data.make_eval(), run.parallel.shard_batch)

    def _evaluate(self) -> None:
        self.last_eval = self.evaluate()
        self.writer.write(self.step, "eval", self.last_eval)
        logging.info("eval at step %d: %s", self.step, self.last_eval)
        best = self.run.loop["best"]
        if best is None or self.last_eval["top1"] > best["top1"]:
            self.run.loop["best"] = {"step": self.step, **self.last_eval}
        self.progress.start(self.step)

    def _save(self) -> None:
        """Checks the state for NaN/Inf, so a diverged state never becomes the latest
        checkpoint, then saves it with the data position and the loop's totals."""
        run = self.run
        single = run.parallel.unreplicate(run.state)
        if not bool(_all_finite((single.params, single.batch_stats, single.opt_state))):
            raise NonFiniteLossError(
                f"the training state became non-finite by step {self.step}; not saved "
                f"({run.checkpointer.latest_good()})"
            )
        seconds = run.loop["train_seconds"] + self.elapsed()
        position = {
            "setup": run.identity,
            "data": self.batches.position(),
            "loop": {**run.loop, "window": self.window, "train_seconds": seconds},
            "execution": execution(run),
            "config": resume.flatten(run.config),
        }
        run.checkpointer.save(single, position, step=self.step)


def summarise(run: Run, session: Session) -> dict[str, Any]:
    """The run's summary (written to `<workdir>/summary.json` by process 0)."""
    config, data = run.config, run.data
    step = session.step
    status = ("finished" if step == run.steps.total
              else "preempted" if session.preempted else "stopped")  # fmt: skip
    last_eval = session.last_eval
    if last_eval is None and status == "finished":
        # Resumed a run that had already finished: evaluate so the summary is complete.
        last_eval = session.final_evaluation()
    summary = {
        "status": status, "model": config.model.name, "num_params": run.num_params,
        "data": data.name, "image_shape": list(data.image_shape),
        "num_classes": data.num_classes, "step": step, "total_steps": run.steps.total,
        "epochs": step / data.steps_per_epoch, "steps_per_epoch": data.steps_per_epoch,
        "batch_size": config.batch_size,
        "devices": run.parallel.num_devices, "parallel": config.parallel, "dtype": config.dtype,
        "execution": execution(run),
        "final_eval": last_eval, "best_eval": run.loop["best"],
        "train_seconds": run.loop["train_seconds"] + session.elapsed(),
        "compile_seconds": session.compile_seconds,
        "images_per_sec": float(np.median(session.rates)) if session.rates else None,
        "param_digest": param_digest(run.parallel.unreplicate(run.state).params),
    }  # fmt: skip
    summary = session.complete(summary)
    logging.info("process %d: parameter digest %s", jax.process_index(), summary["param_digest"])
    if run.lead:
        (run.workdir / "summary.json").write_text(strict_json(summary, indent=2) + "\n")
    return summary


def train_and_evaluate(config: Any, workdir: str | Path) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its newest intact checkpoint. Returns the
    summary (also written to `<workdir>/summary.json` by process 0). Process 0 holds the
    workdir's lock (`resflax.train.lock`) for the whole run: a second run there is refused."""
    with WorkdirLock(workdir, enabled=jax.process_index() == 0):
        run = setup(config, workdir)
        if run.lead:
            resume.record(run.workdir, run.config, run.start, run.changed)
        logging.info(
            "%s: %s params, %d devices (%s), %d steps of batch %d (%d per epoch)%s; ops: %s",
            config.model.name, f"{run.num_params:,}", run.parallel.num_devices, config.parallel,
            run.steps.total, config.batch_size, run.data.steps_per_epoch,
            f", resuming at step {run.start}" if run.start else "", run.ops.describe(),
        )  # fmt: skip
        from resflax.train.population_loop import PopulationSession  # it imports this module

        session = (Session if run.members is None else PopulationSession)(run)
        session.run_steps()
        return summarise(run, session)
