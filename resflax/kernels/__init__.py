"""Compiled CPU kernels that XLA:CPU lacks, called from jitted JAX code through the FFI.

`onednn`: kxk convolutions and their gradients in oneDNN (`conv_grad="onednn"`, the default on
a one-device CPU when built). Built by `make install` (`python -m resflax.kernels.build`);
importing resflax never needs them.
"""

from pathlib import Path

# Here rather than in `build`, so that `python -m resflax.kernels.build` runs a module that
# `import resflax` has not imported already.
SOURCE = Path(__file__).resolve().parent / "onednn_conv.cc"
LIBRARY = SOURCE.with_name("_onednn_conv.so")
