"""`setup(config, workdir)`: everything a training session needs (data, model under its
execution policy, optimizer, state), restored from the workdir's latest checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from resflax.data.sources import make_source
from resflax.models.registry import create_model
from resflax.ops import Ops, data_device, population_batching
from resflax.runtime import host_memory
from resflax.train import config as config_lib
from resflax.train import population, pretrained, resume
from resflax.train.checkpoint import Checkpointer
from resflax.train.optim import make_optimizer, make_schedule, scaled_learning_rate
from resflax.train.parallel import Parallel, make_parallel
from resflax.train.state import make_init


def _count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


@dataclasses.dataclass
class Run:
    """What `setup` builds for one session of a run."""

    config: Any
    workdir: Path
    parallel: Parallel
    data: Any
    ops: Ops
    checkpointer: Checkpointer
    steps: config_lib.Steps
    schedule: Any
    state: Any
    # Saved with every checkpoint: the metric window, the training time and the best eval.
    loop: dict[str, Any]
    # What a data position means: the same data, batch, seed and processes.
    identity: dict[str, Any]
    start: int
    num_params: int
    # Config keys this session changed against the checkpoint it resumed: {key: (old, new)}.
    changed: dict[str, Any] = dataclasses.field(default_factory=dict)
    # A population run (resflax.train.population): its members, the optimizer of one member
    # built from its (traced) settings, and each member's learning-rate schedule.
    members: population.Members | None = None
    member_tx: Any = None
    member_schedules: list[Any] = dataclasses.field(default_factory=list)
    # How one step computes the members (vmap | map): resolved for this machine like `ops`.
    member_batching: str = "vmap"

    @property
    def lead(self) -> bool:
        return jax.process_index() == 0


def _fingerprint(
    config: Any, num_classes: int, members: population.Members | None
) -> dict[str, Any]:
    """The model's identity for checkpoints: architecture only, never the execution policy (and
    a population's size: its state holds that many members)."""
    overrides = config_lib.model_overrides(config)
    size = {} if members is None else {"population": members.size}
    return {"model": config.model.name, "num_classes": num_classes, **overrides,
            "prng_impl": config.prng_impl, **size}  # fmt: skip


def _optimizer(
    config: Any,
    steps: config_lib.Steps,
    *,
    learning_rate: Any = None,
    momentum: Any = None,
    weight_decay: Any = None,
) -> tuple[Any, Any]:
    """The schedule and optimizer of `config`; the settings given (a population member's,
    numbers or traced arrays) replace the config's."""
    opt = config.optimizer
    base_lr = opt.learning_rate if learning_rate is None else learning_rate
    schedule = make_schedule(
        config.schedule.name,
        learning_rate=scaled_learning_rate(base_lr, config.batch_size, opt.reference_batch),
        total_steps=steps.total, warmup_steps=steps.warmup, boundaries=steps.boundaries,
        decay_factor=config.schedule.decay_factor,
        end_learning_rate=config.schedule.end_learning_rate,
    )  # fmt: skip
    tx = make_optimizer(
        opt.name, schedule, momentum=opt.momentum if momentum is None else momentum,
        nesterov=opt.nesterov,
        weight_decay=opt.weight_decay if weight_decay is None else weight_decay,
        decay_norm_and_bias=opt.decay_norm_and_bias,
        grad_clip_norm=opt.grad_clip_norm, b1=opt.b1, b2=opt.b2,
        trust_coefficient=opt.trust_coefficient,
    )  # fmt: skip
    return schedule, tx


def _member_tx(config: Any, steps: config_lib.Steps) -> Any:
    """hparams (a member's traced settings) -> that member's optimizer."""

    def build(hparams: dict[str, Any]) -> Any:
        return _optimizer(
            config, steps, learning_rate=hparams["learning_rate"],
            momentum=hparams["momentum"], weight_decay=hparams["weight_decay"],
        )[1]  # fmt: skip

    return build


def _population_state(run: Run, model: Any) -> Any:
    """The members' stacked initial states, each from its own seed, where they will live."""
    members, config = run.members, run.config
    first = {k: jnp.asarray(v[0]) for k, v in members.hparams().items()}
    # Arrays, not numbers: the optimizer state has every slot the traced settings need.
    init = make_init(model, run.member_tx(first), (1, *run.data.image_shape))
    keys = [jax.random.key(seed, impl=config.prng_impl) for seed in members.seed]
    stacked = jax.random.wrap_key_data(
        jnp.stack([jax.random.key_data(k) for k in keys]), impl=config.prng_impl
    )
    return run.parallel.create_state(jax.vmap(init), stacked)


def _member_sources(config: Any, data: Any, members: population.Members) -> Any:
    """Member k's data order from its own seed: K sources read as one."""
    sources = [
        make_source(
            config.data, batch_size=config.batch_size, eval_batch_size=data_eval_batch(config),
            seed=seed, process_index=jax.process_index(), process_count=jax.process_count(),
        ).train
        for seed in members.seed
    ]  # fmt: skip
    return dataclasses.replace(data, train=population.StackedSource(sources))


def data_placement(config: Any, parallel: Parallel) -> Any:
    """Where DALI decodes and augments (data.pipeline="dali"): this machine's choice, an
    execution detail like the ops policy; None for the other pipelines."""
    if config.data.pipeline != "dali":
        return None
    from resflax.data.dali import Placement

    return Placement(
        device=data_device(), sharding=parallel.batch_sharding, dtype=config.dtype,
        threads=config.data.parallel_calls,
    )  # fmt: skip


def data_eval_batch(config: Any) -> int:
    return config.eval_batch_size or config.batch_size


def setup(config: Any, workdir: str | Path) -> Run:
    """Validates `config`, builds everything and restores `workdir`'s latest checkpoint (or
    the pretrained weights of `init_from`)."""
    config_lib.validate(config)
    members = population.members(config)
    workdir = Path(workdir)
    parallel = make_parallel(config.parallel, config.num_devices)
    eval_batch_size = data_eval_batch(config)
    for size in (config.batch_size, eval_batch_size):
        parallel.check_batch(size)
    data = make_source(
        config.data, batch_size=config.batch_size, eval_batch_size=eval_batch_size,
        seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count(),
        placement=data_placement(config, parallel),
    )  # fmt: skip
    if members is not None and members.own_order:
        data = _member_sources(config, data, members)
    # Refuse a workdir holding another model before anything in it is touched.
    checkpointer = Checkpointer(
        workdir, _fingerprint(config, data.num_classes, members), max_to_keep=config.max_to_keep,
        async_save=config.async_checkpointing,
        legacy_keys=tuple(config_lib.LEGACY_EXECUTION_FIELDS),
    )  # fmt: skip
    checkpointer.check_fingerprint()
    ops = config_lib.resolve_ops(config, parallel.global_devices)
    model = create_model(
        config.model.name, num_classes=data.num_classes, dtype=config.dtype,
        axis_name=parallel.axis_name, ops=ops,
        **config_lib.model_overrides(config),
    )  # fmt: skip
    steps = config_lib.to_steps(config, data.steps_per_epoch)
    schedule, tx = _optimizer(config, steps)
    if members is None:
        init = make_init(model, parallel.wrap_tx(tx), (1, *data.image_shape))
        state = parallel.create_state(init, jax.random.key(config.seed, impl=config.prng_impl))
    else:
        state = None
    identity = {
        "data": data.name, "batch_size": config.batch_size, "seed": config.seed,
        "steps_per_epoch": data.steps_per_epoch,
        "processes": jax.process_count() if data.per_process_shards else "any",
    }  # fmt: skip
    run = Run(config, workdir, parallel, data, ops, checkpointer, steps, schedule, state,
              {"window": {}, "train_seconds": 0.0, "best": None}, identity, 0, 0)  # fmt: skip
    if members is not None:
        run.members, run.member_tx = members, _member_tx(config, steps)
        chosen = config.population.batching
        run.member_batching = population_batching() if chosen == "auto" else chosen
        run.member_schedules = [
            _optimizer(config, steps, learning_rate=lr)[0] for lr in members.learning_rate
        ]
        run.loop.update(window=[{}] * members.size, best=[None] * members.size)
        run.state = _population_state(run, model)
    _restore(run)
    run.num_params = _count_params(parallel.unreplicate(run.state).params)
    if members is not None:
        run.num_params //= members.size
    return run


def _saved_config(run: Run, saved: dict[str, Any]) -> dict[str, Any]:
    """The config the checkpoint was written under: saved with it, or (checkpoints written
    before it was) the workdir's config.json, or nothing to compare."""
    if "config" in saved:
        return saved["config"]
    path = run.workdir / "config.json"
    try:
        return resume.flatten_tree(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _restore(run: Run) -> None:
    """The latest checkpoint into `run` (state, data position, loop), else `init_from`."""
    parallel, config = run.parallel, run.config
    restored = run.checkpointer.restore(parallel.unreplicate(run.state))
    if restored is not None:
        single, saved = restored
        if saved.get("setup", run.identity) != run.identity:
            raise ValueError(
                f"workdir {run.workdir} was trained with {saved['setup']}, not {run.identity}: "
                "its data position would point at other examples; use another --workdir"
            )
        run.changed = resume.changes(_saved_config(run, saved), config)
        for key, (old, new) in run.changed.items():
            logging.info("resuming with %s changed: %r -> %r", key, old, new)
        # The config names a policy; what it resolved to on this machine may differ too.
        before = saved.get("execution", {}).get("ops")
        if before is not None and before != run.ops.as_dict():
            logging.info("resuming under ops %s (saved under %s)", run.ops.as_dict(), before)
        run.state = parallel.replicate(single)
        run.data.train.restore(saved["data"])
        run.loop.update(saved["loop"])
    elif config.init_from:
        variables, meta = pretrained.load(config.init_from)
        run.state = parallel.replicate(
            pretrained.merge(parallel.unreplicate(run.state), variables, config.model.name, meta)
        )
        logging.info("initialised from %s (%s)", config.init_from, meta["source"])
    # A population's step is its furthest member's (a stopped member's counter stays behind).
    run.start = int(np.max(jax.device_get(parallel.unreplicate(run.state).step)))
    if run.start > run.steps.total:
        raise ValueError(
            f"workdir {run.workdir} is at step {run.start}, beyond num_steps={run.steps.total}; "
            "raise the number of steps or use another --workdir"
        )


def execution(run: Run) -> dict[str, Any]:
    """How this session computes (recorded beside the checkpoints and in the summary; none of
    it is the model's identity: another session may differ)."""
    return {
        "ops": run.ops.as_dict(),
        "backend": jax.default_backend(),
        "devices": run.parallel.num_devices,
        "parallel": run.config.parallel,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "host_malloc": host_memory.in_effect(),
        **({} if run.members is None else {"population_batching": run.member_batching}),
        "data_pipeline": run.config.data.pipeline,
        "data_device": data_device() if run.config.data.pipeline == "dali" else "cpu",
    }
