"""ResNet = stem -> stages -> head, configured entirely by its fields (see `registry` for names)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resflax.models.blocks import get_block
from resflax.models.heads import Head
from resflax.models.layers import SHORTCUTS, Array, get_activation, make_conv
from resflax.models.norms import make_norm, norm_act
from resflax.models.stages import Stage
from resflax.models.stems import Stem
from resflax.ops.policy import PLAIN, Ops


class ResNet(nn.Module):
    """A residual network.

    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    block: "basic" or "bottleneck"; `preact=True` selects the pre-activation (v2) form, which
        also drops the stem's norm and adds `final_norm` before the head.
    widths: base width (planes) of each stage; bottlenecks output 4x that.
    stem: "imagenet" (7x7/2 + max-pool), "cifar" (3x3/1) or "deep" (3 x 3x3, ResNet-C/D).
    shortcut: "A" | "B" | "C" (He et al. 2015's options) | "D" (avg-pool downsampling).
    stride_on: "1x1" (v1) or "3x3" (v1.5) for bottleneck blocks.
    stage_strides: defaults to 1 for the first stage and 2 for the others.
    dtype: compute dtype ("bfloat16" for mixed precision); parameters and BatchNorm statistics
        stay float32 and logits are returned in float32.
    norm / axis_name: "batch" (synchronised over `axis_name` under pmap; leave None under jit
        with sharded arrays, where the batch mean is already global) or "group".
    bn_running_var: "biased" (Flax) or "unbiased" (torch: the running variance tracks the
        unbiased batch variance; use it to continue training converted torch weights exactly).
    scan / scan_unroll / remat / remat_policy: see `Stage`.
    ops: the execution policy (`resflax.ops.Ops`): how each operation is computed, never
        what. The default, `plain()`, is JAX's own forms, under which every transformation
        works; `resflax.ops.auto()` is the fastest measured for the machine. Not part of the
        architecture: variables and checkpoints are the same under any policy.
    """

    stage_sizes: Sequence[int]
    block: str = "bottleneck"
    widths: Sequence[int] = (64, 128, 256, 512)
    num_classes: int = 1000
    stem: str = "imagenet"
    stem_width: int = 64
    stage_strides: Sequence[int] | None = None
    shortcut: str = "B"
    stride_on: str = "3x3"
    preact: bool = False
    groups: int = 1
    base_width: int = 64
    se_ratio: float = 0.0
    drop_path_rate: float = 0.0
    dropout_rate: float = 0.0
    zero_init_last: bool = True
    head_hidden: Sequence[int] = ()
    act: str = "relu"
    norm: str = "batch"
    norm_groups: int = 32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_running_var: str = "biased"
    axis_name: str | None = None
    dtype: Any = jnp.float32
    scan: bool = False
    scan_unroll: int = 1
    remat: bool = False
    remat_policy: str = "nothing"
    ops: Ops = PLAIN

    def _check(self) -> tuple[int, ...]:
        n = len(self.stage_sizes)
        if n == 0 or any(int(s) < 1 for s in self.stage_sizes):
            raise ValueError(f"stage_sizes={tuple(self.stage_sizes)} must be positive integers")
        if len(self.widths) != n:
            raise ValueError(f"widths={tuple(self.widths)} needs one width per stage ({n})")
        strides = tuple(self.stage_strides or (1,) + (2,) * (n - 1))
        if len(strides) != n:
            raise ValueError(f"stage_strides={strides} needs one stride per stage ({n})")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={self.shortcut!r} is not one of {SHORTCUTS}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={self.drop_path_rate} must be in [0, 1)")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
        return strides

    @nn.compact
    def __call__(
        self, x: Array, train: bool = False, return_features: bool = False
    ) -> Array | tuple[Array, dict[str, Array]]:
        """Logits for NHWC images `x`; with `return_features`, also a dict of the stem's and
        every stage's output and `pre_logits` (for use as a backbone).

        In train mode pass `mutable=["batch_stats"]` to `apply`, and an rng named "dropout"
        when `drop_path_rate` or `dropout_rate` is set.
        """
        strides = self._check()
        if x.ndim != 4:
            raise ValueError(f"expected NHWC images, got an input of shape {x.shape}")
        dtype = jnp.dtype(self.dtype)
        act = get_activation(self.act, self.ops)
        conv = make_conv(dtype, self.ops)
        norm = make_norm(
            self.norm, train=train, dtype=dtype, axis_name=self.axis_name,
            momentum=self.bn_momentum, epsilon=self.bn_epsilon, groups=self.norm_groups,
            running_var=self.bn_running_var, ops=self.ops,
        )  # fmt: skip
        block = partial(
            get_block(self.block, self.preact), conv=conv, norm=norm, act=act,
            shortcut=self.shortcut, stride_on=self.stride_on, groups=self.groups,
            base_width=self.base_width, se_ratio=self.se_ratio,
            zero_init_last=self.zero_init_last, deterministic=not train,
        )  # fmt: skip
        features: dict[str, Array] = {}
        x = Stem(
            self.stem, self.stem_width, conv=conv, norm=norm, act=act, preact=self.preact,
            ops=self.ops, name="stem",
        )(x.astype(dtype))  # fmt: skip
        features["stem"] = x
        total = sum(self.stage_sizes)
        done = 0
        for i, (size, width, stride) in enumerate(
            zip(self.stage_sizes, self.widths, strides, strict=True), start=1
        ):
            # Stochastic depth rises linearly to drop_path_rate at the last block (Huang et al.).
            rates = tuple(self.drop_path_rate * (done + j + 1) / total for j in range(size))
            done += size
            x = Stage(
                block, size, width, stride, drop_path_rates=rates, scan=self.scan,
                scan_unroll=self.scan_unroll, remat=self.remat, remat_policy=self.remat_policy,
                name=f"stage{i}",
            )(x)  # fmt: skip
            features[f"stage{i}"] = x
        if self.preact:
            x = norm_act(norm, act, name="final_norm")(x)
        logits, features["pre_logits"] = Head(
            self.num_classes, self.head_hidden, self.dropout_rate, act=act, dtype=dtype,
            deterministic=not train, name="head",
        )(x)  # fmt: skip
        return (logits, features) if return_features else logits
