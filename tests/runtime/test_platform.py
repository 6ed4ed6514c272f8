"""`resflax.runtime.platform`: what the process will run on, read without starting JAX."""

import subprocess
import sys

from resflax.runtime.platform import backends_started

PROBE = """
from resflax.runtime.platform import backends_started
import jax
before = backends_started()
jax.numpy.ones(2).block_until_ready()
print(before, backends_started())
"""


def test_backends_started_pins_the_private_jax_accessor():
    """`backends_started` works around JAX's lack of a public accessor with the private
    `jax._src.xla_bridge.backends_are_initialized`: if a jax release moves or renames it, this
    fails first (and a public replacement may exist: use it)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["False", "True"]
    import jax

    jax.devices()
    assert backends_started()
