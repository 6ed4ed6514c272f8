"""Every registered model as a Flax NNX module, through `flax.nnx.bridge`.

The network stays the linen `ResNet` (one implementation, one set of variable names, the same
checkpoints and weight conversions); `flax.nnx.bridge.ToNNX` holds its variables as NNX state
(`nnx.Param` for linen's "params", `nnx.BatchStat` for "batch_stats"). `NNXResNet` adds what the
bridge leaves out: NNX's `model.train()` / `model.eval()` switch (a bare `ToNNX` has no
`use_running_average` attribute, so `eval()` would silently do nothing) and the `mutable=` that
linen needs for BatchNorm to update its statistics in train mode.

Not imported by `import resflax`: `flax.nnx` pulls in optax (which flax requires, so the core
install has it; without it, importing this module is one line naming the extra that pins it).

    from flax import nnx
    from resflax.nnx import create_model, train_step

    model = create_model("resnet18", rngs=nnx.Rngs(0), num_classes=10)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    sums = nnx.jit(train_step)(model, optimizer, batch)  # updates params and BatchNorm stats
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax.traverse_util import flatten_dict, unflatten_dict

from resflax import extras
from resflax.losses import cross_entropy, metric_sums
from resflax.models import registry
from resflax.models.resnet import ResNet

try:
    from flax import nnx
except ImportError as e:  # flax.nnx imports optax (flax requires it; a --no-deps install may not)
    if e.name is None or e.name.split(".")[0] != "optax":
        raise
    raise extras.MissingExtra(extras.message("train", "resflax.nnx", ["optax"])) from None

Batch = Mapping[str, jax.Array]
# Variables do not depend on the image size: 32x32 is the smallest input that every registered
# stem and downsampling path (ResNet-D's average-pooled shortcuts included) reduces to >= 1x1.
INPUT_SHAPE = (1, 32, 32, 3)
# The two linen collections of a ResNet and the NNX variable types the bridge maps them to.
COLLECTIONS = {"params": nnx.Param, "batch_stats": nnx.BatchStat}


class NNXResNet(nnx.Module):
    """A linen `ResNet` as an NNX module: calling it runs the network on NHWC images.

    Eval mode (running statistics) by default; `model.train()` makes calls normalise with the
    batch's statistics and update the running ones in place, `model.eval()` switches back, and
    `model(x, train=...)` overrides the mode for one call. `net` is the `nnx.bridge.ToNNX`
    holding the variables, under linen's submodule names (`model.net.stem["conv"]["kernel"]`).
    """

    def __init__(self, module: ResNet, *, rngs: nnx.Rngs) -> None:
        self.net = nnx.bridge.ToNNX(module, rngs=rngs)
        # The attribute `nnx.Module.train()` / `.eval()` set; static, so a mode switch retraces.
        self.use_running_average = True

    def __call__(
        self, x: jax.Array, *, train: bool | None = None, return_features: bool = False
    ) -> Any:
        train = not self.use_running_average if train is None else train
        # Without `mutable`, linen refuses to write the batch statistics in train mode; with it,
        # the bridge stores them back into this module's `nnx.BatchStat` variables.
        mutable = ["batch_stats"] if train else False
        return self.net(x, train=train, return_features=return_features, mutable=mutable)


def create_model(
    name: str,
    *,
    rngs: nnx.Rngs,
    input_shape: tuple[int, ...] = INPUT_SHAPE,
    variables: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> NNXResNet:
    """The registered model `name` as an initialised `NNXResNet`.

    `overrides` are `resflax.create_model`'s (any `ResNet` field: num_classes, dtype, scan,
    ops=resflax.ops.auto(), ...). `input_shape` only fixes the variables' shapes (its channel
    count matters, its spatial size does not). `rngs` seeds the initialisation; give it a
    "dropout" stream when `drop_path_rate` or `dropout_rate` is set. `variables` (linen's
    `{"params", "batch_stats"}`: a checkpoint, converted weights) are loaded as
    `from_linen_variables` loads them, instead of random values.
    """
    module = registry.create_model(name, **overrides)
    if (module.drop_path_rate or module.dropout_rate) and "dropout" not in rngs:
        raise ValueError(
            f"create_model({name!r}): drop_path_rate/dropout_rate need a 'dropout' stream: "
            "rngs=nnx.Rngs(0, dropout=1)"
        )
    if len(input_shape) != 4:
        raise ValueError(f"input_shape={tuple(input_shape)} must be NHWC (4 dimensions)")

    # One compiled initialisation rather than one dispatch per initialiser (ResNet-18 on a
    # 2-core CPU: 4.5 s instead of 9.6 s); it also runs under `nnx.eval_shape` (shapes only).
    @nnx.jit
    def build(rngs: nnx.Rngs, variables: Mapping[str, Any] | None) -> NNXResNet:
        model = NNXResNet(module, rngs=rngs)
        nnx.bridge.lazy_init(model.net, jnp.zeros(tuple(input_shape), jnp.float32))
        if variables is not None:
            # The random values are then unused and XLA drops their computation (ResNet-18
            # on a loaded 2-core CPU: 0.4 s instead of 11.7 s).
            from_linen_variables(model, variables)
        return model

    return build(rngs, variables)


def to_linen_variables(model: NNXResNet) -> dict[str, Any]:
    """The model's variables as linen's `{"params", "batch_stats"}` dict of arrays (for
    `resflax.create_model(...).apply`, `resflax.convert.export_torchvision`, checkpoints)."""
    out = {}
    for collection, kind in COLLECTIONS.items():
        tree = nnx.to_pure_dict(nnx.state(model.net, kind))
        if tree:  # a GroupNorm network has no "batch_stats", as linen's init gives none
            out[collection] = tree
    return out


def _check_fits(model: NNXResNet, variables: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """`variables` flattened (dicts or FrozenDicts); raises listing every missing, unexpected
    or misshapen variable, so that nothing is ever loaded in part."""
    want = flatten_dict(to_linen_variables(model))
    got = flatten_dict({c: dict(v) for c, v in variables.items()})
    name = "/".join
    missing = sorted(name(k) for k in want.keys() - got.keys())
    unexpected = sorted(name(k) for k in got.keys() - want.keys())
    shapes = sorted(
        f"{name(k)}: {tuple(jnp.shape(got[k]))}, want {want[k].shape}"
        for k in want.keys() & got.keys()
        if tuple(jnp.shape(got[k])) != want[k].shape
    )
    problems = [
        f"{what} {len(items)}: {items[:8]}"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if items
    ]
    if problems:
        raise ValueError("variables do not fit the model: " + "; ".join(problems))
    return got


def from_linen_variables(model: NNXResNet, variables: Mapping[str, Any]) -> NNXResNet:
    """Loads linen variables (`{"params", "batch_stats"}`: a resflax checkpoint, converted
    torchvision weights, `model.init` output) into `model`, in place, and returns it.

    Strict: every variable must be there with its shape; values take the model's dtypes."""
    got = _check_fits(model, variables)
    states = []
    for collection, kind in COLLECTIONS.items():
        state = nnx.state(model.net, kind)
        like = flatten_dict(nnx.to_pure_dict(state))
        if like:
            values = {k: jnp.asarray(got[(collection, *k)], v.dtype) for k, v in like.items()}
            nnx.replace_by_pure_dict(state, unflatten_dict(values))
        states.append(state)
    nnx.update(model.net, *states)
    return model


def train_step(
    model: NNXResNet, optimizer: nnx.Optimizer, batch: Batch, label_smoothing: float = 0.0
) -> dict[str, jax.Array]:
    """One optimizer step on `batch` ({"image", "label", "mask"}), in place: parameters by
    `optimizer` (an `nnx.Optimizer(model, tx, wrt=nnx.Param)`), BatchNorm statistics from the
    batch. The same computation as `resflax.train.step.train_step` (masked mean of the
    label-smoothed cross-entropy; weight decay is the optax transformation's), and the same
    metric sums. Wrap it in `nnx.jit` (`label_smoothing` static: bind it with `partial`)."""
    mask = batch["mask"].astype(jnp.float32)

    def loss_fn(model: NNXResNet) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        logits = model(batch["image"], train=True)
        per_example = cross_entropy(logits, batch["label"], label_smoothing)
        loss = jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        return loss, (logits, per_example)

    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (_, (logits, per_example)), grads = grad_fn(model)
    optimizer.update(model, grads)
    return metric_sums(logits, batch["label"], mask, per_example)


def eval_step(model: NNXResNet, batch: Batch) -> dict[str, jax.Array]:
    """Metric sums over the unmasked examples, with the running statistics (as
    `resflax.train.step.eval_step`), whatever mode `model` is in."""
    logits = model(batch["image"], train=False)
    return metric_sums(logits, batch["label"], batch["mask"])
