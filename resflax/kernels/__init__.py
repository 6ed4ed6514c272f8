"""Kernels that the compilers do not generate, called from jitted JAX code.

`onednn`: kxk convolutions and their gradients in oneDNN through XLA:CPU's FFI
(`Ops(conv="onednn")`, which `resflax.ops.auto()` picks on a one-device CPU when built).
Built by `make install` (`python -m resflax.kernels.build`); importing resflax never needs
them.

(A Pallas kernel for BatchNorm's sums on GPUs lived here until 2026-12: 2% slower than XLA's
sums on an H200, and written for the Triton backend jax 0.12 deprecates.)
"""

import sysconfig
from pathlib import Path

# Here rather than in `build`, so that `python -m resflax.kernels.build` runs a module that
# `import resflax` has not imported already.
SOURCE = Path(__file__).resolve().parent / "onednn_conv.cc"
# Named as a compiled extension is (`.cpython-311-x86_64-linux-gnu.so`): each interpreter's
# environment builds its own (against its jaxlib and its oneDNN) beside the others.
LIBRARY = SOURCE.with_name("_onednn_conv" + sysconfig.get_config_var("EXT_SUFFIX"))
