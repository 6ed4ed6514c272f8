"""Kernels that the compilers do not generate, called from jitted JAX code.

`onednn`: kxk convolutions and their gradients in oneDNN through XLA:CPU's FFI
(`Ops(conv="onednn")`, which `resflax.ops.auto()` picks on a one-device CPU when built).
Built by `make install` (`python -m resflax.kernels.build`); importing resflax never needs
them.

`channel_sums`: BatchNorm's per-channel sums as a Pallas (Triton) kernel for GPUs
(`Ops(norm="closed_pallas")`; measured, not picked by `auto()`). Nothing to build: Pallas
compiles it.
"""

from pathlib import Path

# Here rather than in `build`, so that `python -m resflax.kernels.build` runs a module that
# `import resflax` has not imported already.
SOURCE = Path(__file__).resolve().parent / "onednn_conv.cc"
LIBRARY = SOURCE.with_name("_onednn_conv.so")
