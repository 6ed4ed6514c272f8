"""Execution policies: how a model's operations are computed, chosen outside the model.

    model = resflax.create_model("resnet50")                       # plain JAX (the default)
    fast = resflax.create_model("resnet50", ops=resflax.ops.auto())  # fastest for this machine

`Ops` names the implementation of each operation (convolution, stem convolution, BatchNorm's
training form, activation, max-pool); every choice computes the same function. `plain()` is
JAX's own forms, under which every transformation works; `auto()` (in `machine`, the only module
of resflax that asks which machine it runs on) picks the measured fastest. Importing this
package loads jax only: the kernels load when a policy that uses them is traced.
"""

from resflax.ops.machine import auto, data_device, population_batching
from resflax.ops.policy import ACTS, CONVS, NORMS, PLAIN, POOLS, STEM_CONVS, Ops, plain

__all__ = [
    "ACTS", "CONVS", "NORMS", "PLAIN", "POOLS", "STEM_CONVS", "Ops", "auto", "data_device",
    "plain", "population_batching",
]  # fmt: skip
