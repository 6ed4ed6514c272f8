"""Reading a training config (an `ml_collections.ConfigDict`, see experiments/configs/base.py):
checks with errors that name the bad value, and the values derived from it."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from resflax.data.sources import IDX_SOURCES, SOURCES, TFDS_SOURCES
from resflax.models.registry import get_entry
from resflax.models.resnet import ResNet
from resflax.ops import Ops, auto, plain
from resflax.runtime.host_memory import GrowthGuard, check_mode
from resflax.runtime.xla_flags import parse_flags
from resflax.train import population, pretrained
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
    "bn_sums": "--config.ops.norm=closed (the Pallas sums were removed)",
    "bn_fuse_relu": "--config.ops.fuse_relu",
}


def _positive(name: str, value: Any, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    # `not value > 0` is also true of NaN; inf is refused here rather than met as a divergence.
    if value is None or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name}={value} must be positive and finite")


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


def _in_unit_interval(name: str, value: Any) -> None:
    if value is None or not 0 <= value < 1:
        raise ValueError(f"{name}={value} must be in [0, 1)")


PIPELINES = ("tfdata", "dali")


def _check_pipeline(config: Any) -> None:
    """data.pipeline: tf.data everywhere, DALI for the JPEG data sets under a mesh."""
    from resflax.data.dali import SOURCES as DALI_SOURCES

    data = config.data
    if data.pipeline not in PIPELINES:
        raise ValueError(f"data.pipeline={data.pipeline!r} is not one of {PIPELINES}")
    if data.pipeline != "dali":
        return
    if data.name not in DALI_SOURCES:
        raise ValueError(
            f"data.pipeline='dali' reads {DALI_SOURCES}, not data.name={data.name!r}; use "
            "data.pipeline='tfdata' for it"
        )
    if config.parallel == "pmap":
        raise ValueError(
            "data.pipeline='dali' feeds global arrays on a mesh: use parallel='jit' or "
            "'shard_map', not parallel='pmap'"
        )
    if config.get("population") and config.population.data_order == "own":
        raise ValueError(
            "population.data_order='own' reads K orders through data.pipeline='tfdata'; with "
            "data.pipeline='dali' the members share the order (population.data_order='shared')"
        )


def _check_data(data: Any) -> None:
    """The data block's sizes and fractions (the data set's own checks come when it is read)."""
    names = SOURCES + IDX_SOURCES + TFDS_SOURCES
    if data.name not in names:
        raise ValueError(f"data.name={data.name!r} is not one of {names}")
    if data.prefetch < 0:
        raise ValueError(f"data.prefetch={data.prefetch} must be >= 0")
    _positive("data.image_size", data.image_size, allow_none=True)
    if data.num_classes is not None and data.num_classes < 2:
        raise ValueError(f"data.num_classes={data.num_classes} must be at least 2")
    if data.parallel_calls != -1 and data.parallel_calls < 1:
        raise ValueError(f"data.parallel_calls={data.parallel_calls} must be -1 (auto) or >= 1")
    if data.name in IDX_SOURCES:
        from resflax.data.mnist_family import check_config  # reads no files

        check_config(data)
        return
    for name in ("mean", "std"):
        value = data[name]
        if value is not None and (len(value) != data.channels or min(value) < 0):
            raise ValueError(
                f"data.{name}={value} needs {data.channels} non-negative values (one per channel)"
            )
    if data.std is not None and min(data.std) == 0:
        raise ValueError(f"data.std={data.std} must be positive")
    if data.name == "digits":
        if not 0 < data.test_fraction < 1:
            raise ValueError(f"data.test_fraction={data.test_fraction} must be in (0, 1)")
        if data.image_size is not None:
            raise ValueError(f"data.image_size={data.image_size}: digits are 8x8 (leave it unset)")
    elif data.name == "fake":
        if data.num_classes is None or data.image_size is None:
            raise ValueError(
                f"data 'fake' needs data.num_classes (now {data.num_classes}) and "
                f"data.image_size (now {data.image_size})"
            )
        for name in ("channels", "train_size", "eval_size"):
            _positive(f"data.{name}", data[name])
    else:
        # Crop fraction, shuffle buffer, a fixed image size. Imported here: it needs TensorFlow.
        from resflax.data.tfds_spec import spec_from_config

        spec_from_config(data)


def _check_optimizer(config: Any) -> None:
    opt = config.optimizer
    if opt.name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name={opt.name!r} is not one of {OPTIMIZERS}")
    _positive("optimizer.learning_rate", opt.learning_rate)
    _positive("optimizer.reference_batch", opt.reference_batch, allow_none=True)
    _in_unit_interval("optimizer.momentum", opt.momentum)
    _in_unit_interval("optimizer.b1", opt.b1)
    _in_unit_interval("optimizer.b2", opt.b2)
    if not 0 <= opt.weight_decay < math.inf:
        raise ValueError(f"optimizer.weight_decay={opt.weight_decay} must be >= 0 and finite")
    _positive("optimizer.grad_clip_norm", opt.grad_clip_norm, allow_none=True)
    _positive("optimizer.trust_coefficient", opt.trust_coefficient)
    sched = config.schedule
    if sched.name not in SCHEDULES:
        raise ValueError(f"schedule.name={sched.name!r} is not one of {SCHEDULES}")
    if sched.unit not in UNITS:
        raise ValueError(f"schedule.unit={sched.unit!r} is not one of {UNITS}")
    if sched.warmup < 0:
        raise ValueError(f"schedule.warmup={sched.warmup} must be non-negative")
    _positive("schedule.decay_factor", sched.decay_factor)
    if sched.end_learning_rate < 0:
        raise ValueError(f"schedule.end_learning_rate={sched.end_learning_rate} must be >= 0")
    bounds = tuple(sched.boundaries)
    if any(b < 0 for b in bounds) or list(bounds) != sorted(bounds):
        raise ValueError(f"schedule.boundaries={bounds} must be non-negative and increasing")


def _check_model(model: Any) -> None:
    """The overrides' values (the model checks them too, but only once it is built)."""
    for name in ("stage_sizes", "widths"):
        value = model[name]
        if value is not None and not (
            value and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        ):
            raise ValueError(
                f"model.{name}={value} must be a tuple of positive integers, e.g. (3, 4, 6, 3)"
            )
    _positive("model.stem_width", model.stem_width, allow_none=True)
    for name in ("drop_path_rate", "dropout_rate"):
        if model[name] is not None:
            _in_unit_interval(f"model.{name}", model[name])


def validate(config: Any) -> None:
    """Everything that can be checked before touching data or devices."""
    get_entry(config.model.name)
    model_overrides(config)
    _check_model(config.model)
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
    _positive("num_devices", config.num_devices, allow_none=True)
    _positive("batch_size", config.batch_size)
    _positive("eval_batch_size", config.eval_batch_size, allow_none=True)
    if (config.num_epochs is None) == (config.num_steps is None):
        raise ValueError(
            f"set exactly one of num_epochs={config.num_epochs} and num_steps={config.num_steps}"
        )
    _positive("num_epochs", config.num_epochs, allow_none=True)
    _positive("num_steps", config.num_steps, allow_none=True)
    _positive("stop_at_step", config.stop_at_step, allow_none=True)
    _check_data(config.data)
    _check_pipeline(config)
    _check_optimizer(config)
    sched = config.schedule
    if (
        sched.unit == "steps"
        and config.num_steps is not None
        and sched.warmup >= max(config.num_steps, 1)
    ):
        raise ValueError(
            f"schedule.warmup={sched.warmup:g} steps must be below num_steps={config.num_steps}"
        )
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={config.label_smoothing} must be in [0, 1)")
    _positive("log_every_steps", config.log_every_steps)
    for name in ("eval_every_steps", "checkpoint_every_steps"):
        if config[name] < 0:
            raise ValueError(f"{name}={config[name]} must be >= 0 (0: only at the end)")
    _positive("max_to_keep", config.max_to_keep)
    if config.init_from:
        pretrained.check_not_a_file(config.init_from)
    population.members(config)


def check_batch_sizes(config: Any, devices: int) -> None:
    """Each global batch is shared evenly by the `devices` one step runs on; the message
    names the setting (batch_size or eval_batch_size) and the nearest valid values."""
    for name in ("batch_size", "eval_batch_size"):
        size = config[name]
        if size is not None and size % devices:
            below, above = size // devices * devices, (size // devices + 1) * devices
            near = f"{below} or {above}" if below else f"{above}"
            raise ValueError(
                f"{name}={size} is not divisible by the {devices} devices; use a multiple of "
                f"{devices} (e.g. {near}), or --config.num_devices"
            )


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
