"""`Ops`: how a network's operations are computed, never what they compute.

A model's fields describe the architecture (the function); an `Ops` policy, handed to the model
as one argument, says which formulation of each operation the compiler gets. Every policy
computes the same function to float rounding, so a checkpoint trained under one policy resumes
under another. `Ops()` (`plain()`) is JAX's own primitives with JAX's own derivatives: every
transformation works (jvp, linearize, vmap, export, sharding). The faster formulations each
name what they give up (see `transformation_safe`); `resflax.ops.auto()` picks them for the
machine it runs on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

# conv: "lax" (JAX's convolution); "dot": 1x1 convolutions as matrix products and strided kxk
# input gradients by phases (`conv.conv_dot`); "canonical": dot, plus loop-friendly gradients
# of stride-1 kxk convolutions (scanned stages on XLA:CPU); "onednn": dot, with kxk convolutions
# (and in bfloat16 every convolution) in oneDNN through XLA:CPU's FFI (`resflax.kernels`).
CONVS = ("lax", "dot", "canonical", "onednn")
# stem_conv: the stem's strided first convolution as JAX writes it, or space-to-depth.
STEM_CONVS = ("lax", "space_to_depth")
# norm: BatchNorm in training mode as Flax writes it (JAX differentiates it), or the closed-form
# backward pass (`batchnorm.batch_norm_train`).
NORMS = ("flax", "closed")
# act: ReLU as JAX writes it, or stored once behind an optimisation barrier (`act.relu_stored`).
ACTS = ("relu", "relu_stored")
# pool: the stem's max-pool gradient as JAX derives it (select-and-scatter), or by phases.
POOLS = ("lax", "phases")
# Choices that existed and went, with the reason, for the error a stale command line gets.
REMOVED = {
    "closed_pallas": "removed 2026-12: its Pallas kernel ran on the Triton backend, which jax 0.12 "
    "deprecates, and was 2% slower than XLA's sums on an H200; use 'closed'",
}

_CHOICES = {
    "conv": CONVS,
    "stem_conv": STEM_CONVS,
    "norm": NORMS,
    "act": ACTS,
    "pool": POOLS,
}


@dataclasses.dataclass(frozen=True)
class Ops:
    """An execution policy. Field by field (the defaults are JAX's own forms):

    conv: "lax" | "dot" | "canonical" | "onednn" (custom gradients; onednn cannot be exported).
    stem_conv: "lax" | "space_to_depth" (plain JAX; faster with cuDNN).
    norm: "flax" | "closed" (BatchNorm's backward pass in closed form: a custom VJP, so no
        forward mode).
    fuse_relu: with a closed-form norm, a following ReLU runs inside it (its backward pass
        masks the gradient from the input it reads anyway).
    act: "relu" | "relu_stored" (a custom JVP around an optimisation barrier: every
        transformation works).
    pool: "lax" | "phases" (the max-pool gradient as two elementwise passes: a custom VJP).
    """

    conv: str = "lax"
    stem_conv: str = "lax"
    norm: str = "flax"
    fuse_relu: bool = False
    act: str = "relu"
    pool: str = "lax"

    def __post_init__(self) -> None:
        for field, valid in _CHOICES.items():
            value = getattr(self, field)
            if value not in valid:
                why = f" ({REMOVED[value]})" if value in REMOVED else ""
                raise ValueError(f"ops.{field}={value!r} is not one of {valid}{why}")
        if not isinstance(self.fuse_relu, bool):
            raise ValueError(f"ops.fuse_relu={self.fuse_relu!r} must be True or False")

    @property
    def transformation_safe(self) -> bool:
        """Whether every JAX transformation works through this policy: no custom VJP (forward
        mode) and no FFI call (export). Space-to-depth and relu_stored are plain JAX."""
        return self.conv == "lax" and self.norm == "flax" and self.pool == "lax"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Ops:
        unknown = sorted(set(changes) - set(self.as_dict()))
        if unknown:
            raise ValueError(f"ops has no field(s) {unknown}; valid: {sorted(self.as_dict())}")
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for logs: the fields that differ from `plain()`, or "plain"."""
        changed = {k: v for k, v in self.as_dict().items() if v != getattr(PLAIN, k)}
        return ", ".join(f"{k}={v}" for k, v in changed.items()) or "plain"

    # --- the implementations the model asks for --------------------------------------------
    def conv_fn(self) -> Callable[..., Any]:
        """A drop-in for `lax.conv_general_dilated` (`nn.Conv`'s `conv_general_dilated`)."""
        from resflax.ops import conv

        if self.conv == "onednn":
            from resflax.kernels import onednn

            if not onednn.available():
                raise ValueError(
                    f"ops.conv='onednn' needs the oneDNN kernels ({onednn.LIBRARY} is missing: "
                    "run `make install` or `python -m resflax.kernels.build`); valid without "
                    f"them: {tuple(c for c in CONVS if c != 'onednn')}"
                )
        return conv.IMPLEMENTATIONS[self.conv]

    def stem_conv_fn(self) -> Callable[..., Any]:
        """The same for the stem's strided first convolution."""
        if self.stem_conv == "lax":
            return self.conv_fn()
        from resflax.ops import conv

        return conv.conv_space_to_depth

    def relu(self) -> Callable[[Any], Any]:
        from resflax.ops import act

        return act.relu_stored if self.act == "relu_stored" else act.relu

    def store(self, y: Any) -> Any:
        """What a fused closed-form BatchNorm-ReLU does to its output for `act`."""
        from resflax.ops import act

        return act.stored(y) if self.act == "relu_stored" else y

    def batch_norm_train(self) -> Callable[..., Any] | None:
        """The closed-form training BatchNorm, or None for Flax's own."""
        if self.norm == "flax":
            return None
        from resflax.ops import batchnorm

        return batchnorm.batch_norm_train

    def max_pool(self, x: Any, window: int, stride: int, padding: int) -> Any:
        from resflax.ops import pool

        return pool.max_pool(x, window, stride, padding, phases=self.pool == "phases")


PLAIN = Ops()


def plain() -> Ops:
    """JAX's own primitives and derivatives everywhere: the library default."""
    return PLAIN
