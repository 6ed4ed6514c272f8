"""Reading a training config (an `ml_collections.ConfigDict`, see experiments/configs/base.py):
checks with errors that name the bad value, and the values derived from it."""

from __future__ import annotations

import dataclasses
from typing import Any

from resflax.data.sources import SOURCES, TFDS_SOURCES
from resflax.models.registry import get_entry
from resflax.models.resnet import ResNet
from resflax.ops import Ops, auto, plain
from resflax.runtime.host_memory import GrowthGuard, check_mode
from resflax.runtime.xla_flags import parse_flags
from resflax.train.optim import OPTIMIZERS, SCHEDULES
from resflax.train.parallel import PARALLEL

DTYPES = ("float32", "bfloat16")
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
UNITS = ("epochs", "steps")
OPS_NAMES = ("auto", "plain")
# Settings that were model fields before the execution policy left the model, and where they
# live now. A checkpoint written then may carry them in its fingerprint, where they never
# changed the function; the CLI names the new place when one is asked for.
LEGACY_EXECUTION_FIELDS = {
    "conv_grad": "--config.ops.conv",
    "stored_act": "--config.ops.act=relu_stored",
    "stem_s2d": "--config.ops.stem_conv=space_to_depth",
    "bn_grad": "--config.ops.norm=closed (or flax)",
    "bn_sums": "--config.ops.norm=closed_pallas",
    "bn_fuse_relu": "--config.ops.fuse_relu",
}


def _positive(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or not value > 0:
        raise ValueError(f"{name}={value} must be positive")


def model_overrides(config: Any) -> dict[str, Any]:
    """The config's model fields that are set (None means: the registry's value)."""
    fields = {f.name for f in dataclasses.fields(ResNet)} - {"parent", "name", "ops"}
    set_ = {k: v for k, v in config.model.items() if k != "name" and v is not None}
    unknown = sorted(set(set_) - fields)
    if unknown:
        raise ValueError(
            f"model override(s) {unknown} are not ResNet fields; valid: {sorted(fields)}"
        )
    return set_


def _check_ops_name(config: Any) -> None:
    if config.ops.name not in OPS_NAMES:
        raise ValueError(f"ops.name={config.ops.name!r} is not one of {OPS_NAMES}")


def _ops_overrides(config: Any) -> dict[str, Any]:
    return {k: v for k, v in config.ops.items() if k != "name" and v is not None}


def resolve_ops(config: Any, devices: int) -> Ops:
    """The execution policy the run uses: `config.ops.name` resolved for this machine (auto)
    or plain, with the fields set in `config.ops` on top. `devices`: those one step runs on."""
    _check_ops_name(config)
    if config.ops.name == "plain":
        base = plain()
    else:
        scan = model_overrides(config).get("scan", get_entry(config.model.name).config.get("scan"))
        base = auto(scan=bool(scan), dtype=config.dtype, devices=devices)
    return base.replace(**_ops_overrides(config))


def validate(config: Any) -> None:
    """Everything that can be checked before touching data or devices."""
    get_entry(config.model.name)
    model_overrides(config)
    _check_ops_name(config)
    plain().replace(**_ops_overrides(config))  # each field's value, named if it is wrong
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype={config.dtype!r} is not one of {DTYPES}")
    parse_flags(config.get("xla_cpu_flags") or "")
    check_mode(config.get("host_malloc", "auto"))
    GrowthGuard(config.get("host_malloc_max_growth", 2.0))
    if config.prng_impl not in PRNG_IMPLS:
        raise ValueError(f"prng_impl={config.prng_impl!r} is not one of {PRNG_IMPLS}")
    if config.parallel not in PARALLEL:
        raise ValueError(f"parallel={config.parallel!r} is not one of {PARALLEL}")
    _positive("batch_size", config.batch_size)
    _positive("eval_batch_size", config.eval_batch_size, allow_none=True)
    if (config.num_epochs is None) == (config.num_steps is None):
        raise ValueError(
            f"set exactly one of num_epochs={config.num_epochs} and num_steps={config.num_steps}"
        )
    _positive("num_epochs", config.num_epochs, allow_none=True)
    _positive("num_steps", config.num_steps, allow_none=True)
    _positive("stop_at_step", config.stop_at_step, allow_none=True)
    if config.data.name not in SOURCES + TFDS_SOURCES:
        raise ValueError(f"data.name={config.data.name!r} is not one of {SOURCES + TFDS_SOURCES}")
    if config.data.prefetch < 0:
        raise ValueError(f"data.prefetch={config.data.prefetch} must be >= 0")
    opt = config.optimizer
    if opt.name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={opt.name!r} is not one of {OPTIMIZERS}")
    _positive("optimizer.learning_rate", opt.learning_rate)
    _positive("optimizer.reference_batch", opt.reference_batch, allow_none=True)
    sched = config.schedule
    if sched.name not in SCHEDULES:
        raise ValueError(f"schedule.name={sched.name!r} is not one of {SCHEDULES}")
    if sched.unit not in UNITS:
        raise ValueError(f"schedule.unit={sched.unit!r} is not one of {UNITS}")
    if sched.warmup < 0:
        raise ValueError(f"schedule.warmup={sched.warmup} must be non-negative")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={config.label_smoothing} must be in [0, 1)")
    _positive("log_every_steps", config.log_every_steps)
    for name in ("eval_every_steps", "checkpoint_every_steps"):
        if config[name] < 0:
            raise ValueError(f"{name}={config[name]} must be >= 0 (0: only at the end)")
    _positive("max_to_keep", config.max_to_keep)


@dataclasses.dataclass(frozen=True)
class Steps:
    """The run's length and schedule in optimizer steps."""

    total: int
    warmup: int
    boundaries: tuple[int, ...]


def to_steps(config: Any, steps_per_epoch: int) -> Steps:
    if config.num_steps is not None:
        total = int(config.num_steps)
    else:
        total = max(1, round(config.num_epochs * steps_per_epoch))
    scale = steps_per_epoch if config.schedule.unit == "epochs" else 1
    return Steps(
        total=total,
        warmup=round(config.schedule.warmup * scale),
        boundaries=tuple(round(b * scale) for b in config.schedule.boundaries),
    )
