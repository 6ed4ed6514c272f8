"""The training session of a population (resflax.train.population): the single run's loop
(`Session`) with one step for all members, metrics, evaluations and summaries per member, and
a member that diverges stopped alone."""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resflax.data.prefetch import Prefetch
from resflax.losses import averages
from resflax.train import population
from resflax.train import step as step_lib
from resflax.train.loop import NonFiniteLossError, Session, _add, param_digest
from resflax.train.setup import Run
from resflax.train.writers import Progress

STOP_REASON = "non-finite loss or state"


class PopulationSession(Session):
    """`Session` for `run.members`: `self.window` is a list of metric windows, one per member;
    the summary gains `population` (each member's settings, status and evaluations, and
    mean ± std over the members that finished)."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        members, config = run.members, run.config
        logging.info(
            "population of %d members (data order: %s, computed by %s): %s", members.size,
            "own" if members.own_order else "shared", run.member_batching,
            "; ".join(str(members.describe(k)) for k in range(members.size)),
        )  # fmt: skip
        self.members = members
        self.size = members.size
        # Throughput counts every member's images.
        self.progress = Progress(run.steps.total, config.batch_size * self.size, enabled=run.lead)
        shard = functools.partial(run.parallel.shard_batch, member_axis=members.own_order)
        self.batches = Prefetch(run.data.train, shard, config.data.prefetch)
        replicated = NamedSharding(run.parallel.mesh, P())
        self.hparams = jax.device_put(members.hparams(), replicated)
        build = run.member_tx

        def member_step(state, hparams, batch):
            return step_lib.train_step(
                state, batch, label_smoothing=hparams["label_smoothing"], tx=build(hparams)
            )

        batching = run.member_batching
        step = jax.jit(
            population.train_step(member_step, members.own_order, batching), donate_argnums=0
        )
        # self.step is the population's step before the one being taken.
        self.train_fn = lambda state, batch: step(state, self.hparams, self.step, batch)
        self.eval_fn = jax.jit(population.eval_step(step_lib.eval_step, batching))
        steps = jax.device_get(run.parallel.unreplicate(run.state).step)
        # Members that stopped in an earlier session: {member: the step it stopped at}.
        self.stopped = {k: int(steps[k]) + 1 for k in population.stopped(steps, run.start)}
        self.last_eval: list[dict[str, float]] | None = None

    def _fetch(self) -> None:
        """The window's per-member sums (one host sync), and which members have stopped."""
        pending, steps = jax.device_get((self.pending, self.run.state.step))
        for _, fetched in pending:
            for k in range(self.size):
                if fetched["count"][k] > 0:
                    self.window[k] = _add(self.window[k], {n: v[k] for n, v in fetched.items()})
        self.pending = []
        for k in population.stopped(steps, self.step):
            if k not in self.stopped:
                self.stopped[k] = at = int(steps[k]) + 1
                # Out of every statistic from here on: its window (the steps that led to the
                # divergence) is dropped, and one row says why it has no more rows.
                self.window[k] = {}
                self.writer.write(at, "train", {"status": "stopped", "reason": STOP_REASON},
                                  member=k)  # fmt: skip
                logging.warning(
                    "member %d (%s) stopped at step %d: its loss or state became non-finite "
                    "(learning rate %.4g); its last good state (step %d) is kept, the other "
                    "members go on", k, self.members.describe(k), at,
                    float(self.run.member_schedules[k](at - 1)), at - 1,
                )  # fmt: skip
        if len(self.stopped) == self.size:
            where = ", ".join(f"member {k} at step {s}" for k, s in sorted(self.stopped.items()))
            raise NonFiniteLossError(
                f"every member of the population became non-finite ({where}); stopped, "
                f"{self.run.checkpointer.latest_good()}"
            )

    def _log(self) -> None:
        self.heap_guard.check()
        rows = {}
        for k in range(self.size):
            if k not in self.stopped and self.window[k].get("count", 0) > 0:
                lr = float(self.run.member_schedules[k](self.step - 1))
                rows[k] = {**averages(self.window[k]), "learning_rate": lr}
        shown: dict[str, Any] = {
            f"mean {name}": float(np.mean([r[name] for r in rows.values()]))
            for name in ("loss", "top1")
            if rows
        }
        shown["members"] = f"{self.size - len(self.stopped)}/{self.size}"
        speed = self.progress.report(self.step, shown)
        if speed:
            self.rates.append(speed["images_per_sec"])
        for k, scalars in rows.items():
            self.writer.write(self.step, "train", {**scalars, **speed}, member=k)
        self.window = [{} for _ in range(self.size)]

    def evaluate(self) -> list[dict[str, float]]:
        """Each member's averages over one evaluation pass (sums added in float64 on the host,
        in the order a single run adds them)."""
        run = self.run
        totals: list[dict[str, float]] = [{} for _ in range(self.size)]
        for batch in run.data.make_eval():
            sums = jax.device_get(self.eval_fn(run.state, run.parallel.shard_batch(batch)))
            for k in range(self.size):
                totals[k] = _add(totals[k], {n: v[k] for n, v in sums.items()})
        return [{**averages(t), "num_examples": int(t.get("count", 0))} for t in totals]

    def evaluate_live(self) -> list[dict[str, float] | None]:
        """`evaluate()` with None for each stopped member: a stopped member's frozen state is
        not a result (NaN logits can even score 100%)."""
        evals = self.evaluate()
        return [None if k in self.stopped else e for k, e in enumerate(evals)]

    final_evaluation = evaluate_live

    def _evaluate(self) -> None:
        self.last_eval = evals = self.evaluate_live()
        best = self.run.loop["best"]
        for k, result in enumerate(evals):
            if result is None:
                continue
            self.writer.write(self.step, "eval", result, member=k)
            if best[k] is None or result["top1"] > best[k]["top1"]:
                best[k] = {"step": self.step, **result}
        top1 = [e["top1"] for e in evals if e is not None]
        logging.info(
            "eval at step %d: top1 per member %s (mean %.4f over %d of %d members)",
            self.step, [None if e is None else round(e["top1"], 4) for e in evals],
            float(np.mean(top1)), len(top1), self.size,
        )  # fmt: skip
        self.progress.start(self.step)

    def complete(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Adds `population`; `final_eval` becomes the mean over the members that did not
        stop, `best_eval` the best member's best evaluation."""
        run, members = self.run, self.members
        finals, bests = summary["final_eval"], run.loop["best"]
        params = run.parallel.unreplicate(run.state).params
        rows = []
        for k in range(self.size):
            row = members.describe(k)
            if k in self.stopped:
                row.update(status="stopped", stopped_at_step=self.stopped[k])
            else:
                row["status"] = summary["status"]
            member_params = jax.tree_util.tree_map(lambda x, k=k: x[k], params)
            live = k not in self.stopped
            row.update(final_eval=finals[k] if finals and live else None,
                       best_eval=bests[k] if live else None,
                       param_digest=param_digest(member_params))  # fmt: skip
            rows.append(row)
        going = [r for r in rows if r["status"] != "stopped" and r["final_eval"]]
        block: dict[str, Any] = {
            "size": self.size,
            "data_order": "own" if members.own_order else "shared",
            "varied": members.varied(),
            "members": rows,
            "stopped": {str(k): s for k, s in sorted(self.stopped.items())},
        }
        if going:
            block["final_eval"] = {
                name: population.summary_stats([r["final_eval"][name] for r in going])
                for name in ("top1", "top5", "loss")
            }
            summary["final_eval"] = {
                **{name: block["final_eval"][name]["mean"] for name in ("top1", "top5", "loss")},
                "num_examples": going[0]["final_eval"]["num_examples"],
                "members": len(going),
            }
        else:
            summary["final_eval"] = None
        ranked = [r for r in rows if r["best_eval"]]
        if ranked:
            block["best_eval"] = {
                "top1": population.summary_stats([r["best_eval"]["top1"] for r in ranked])
            }
            top = max(ranked, key=lambda r: r["best_eval"]["top1"])
            summary["best_eval"] = {"member": top["member"], **top["best_eval"]}
        else:
            summary["best_eval"] = None
        summary["population"] = block
        return summary
