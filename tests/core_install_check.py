"""Run by tests/test_packaging.py with the Python of a venv holding `pip install resflax` (no
extras), outside the checkout: prints one JSON object of what it found, which the test asserts.

    python tests/core_install_check.py <README's reuse example, a file> <a scratch folder>
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import subprocess
import sys
from pathlib import Path

HEAVY = ("tensorflow", "tensorflow_datasets", "optax", "orbax", "torch", "ml_collections")


def _heavy_loaded() -> list[str]:
    return sorted(m for m in HEAVY if m in sys.modules)


def _models(found: dict) -> None:
    """A CIFAR ResNet-20 (basic blocks) trained one step's forward pass; ResNet-50 (bottleneck
    blocks): its published count from the shapes at 224x224, then one apply at 32x32 (variables
    do not depend on the image size). README's example adds ResNet-18 and blocks of your own."""
    import jax
    import jax.numpy as jnp
    from flax.traverse_util import flatten_dict

    import resflax
    from resflax.models import get_entry

    x = jnp.ones((2, 32, 32, 3))
    model = resflax.create_model("resnet20")
    variables = jax.jit(model.init)(jax.random.key(0), x)
    logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    found["resnet20"] = {"logits": list(logits.shape), "finite": bool(jnp.isfinite(logits).all())}
    model = resflax.create_model("resnet50")
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 224, 224, 3)))
    count = sum(math.prod(v.shape) for v in flatten_dict(shapes["params"]).values())
    variables = jax.jit(model.init)(jax.random.key(0), x[:1])
    logits = model.apply(variables, x[:1])
    found["resnet50"] = {"params": count, "published": get_entry("resnet50").params,
                         "logits": list(logits.shape)}  # fmt: skip
    found["auto_conv"] = resflax.ops.auto().conv  # no oneDNN kernel is built in a wheel


def _refusals(found: dict, scratch: Path) -> None:
    """Each part that needs an extra says which, in one line."""
    for module in ("resflax.train", "resflax.data"):
        try:
            __import__(module)
            found[module] = None
        except ImportError as e:
            found[module] = f"{type(e).__name__}: {e}"
    from resflax.convert import read_state_dict

    for suffix in (".pth", ".safetensors"):
        path = scratch / f"w{suffix}"
        path.write_bytes(b"")
        try:
            read_state_dict(path)
        except ValueError as e:
            found[f"read{suffix}"] = str(e)
    done = subprocess.run(
        [sys.executable, "-m", "resflax.main", "--config=c.py", f"--workdir={scratch}/w"],
        capture_output=True, text=True, cwd=scratch, timeout=120,
    )  # fmt: skip
    found["main"] = {"status": done.returncode, "stderr": done.stderr}


def main() -> None:
    reuse_example, scratch = Path(sys.argv[1]), Path(sys.argv[2])
    found: dict = {}
    import jax

    # Initialisation compiles several times faster than with threefry (the default).
    jax.config.update("jax_default_prng_impl", "rbg")
    import resflax

    found["file"] = resflax.__file__
    found["version"] = resflax.__version__
    found["installed_version"] = importlib.metadata.version("resflax")
    found["heavy_after_import"] = _heavy_loaded()
    _models(found)
    namespace: dict = {}
    exec(compile(reuse_example.read_text(), "README.md (reuse-example)", "exec"), namespace)
    found["reuse"] = {"logits": list(namespace["logits"].shape),
                      "features": sorted(namespace["features"]),
                      "resnet18": namespace["backbone"].stage_sizes}  # fmt: skip
    found["heavy_after_models"] = _heavy_loaded()
    import resflax.nnx  # flax.nnx imports optax, which flax requires

    found["nnx"] = resflax.nnx.create_model.__name__
    _refusals(found, scratch)
    print(json.dumps(found))


if __name__ == "__main__":
    main()
