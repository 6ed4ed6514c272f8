"""Shared fixtures: a tiny ResNet configuration that exercises every code path quickly."""

import os

# Tests run with 8 fake CPU devices, and with XLA:CPU's optimisation barriers kept so that
# remat really recomputes (resflax/runtime/xla_flags.py); set here too so a bare `pytest` behaves
# like `make test`.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_disable_hlo_passes=cse_barrier_expander",
)

import jax
import jax.numpy as jnp
import pytest

TINY = dict(
    stage_sizes=(1, 3),
    block="basic",
    widths=(4, 8),
    stem="cifar",
    stem_width=4,
    num_classes=5,
)


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """The CLI runs in subprocesses (dozens, several compiling the same tiny programs) share
    one persistent compilation cache for the session: a warm cache halves a tiny run (8.6 ->
    4.6 s). JAX reads these variables when it is imported, so this process, which imported it
    above, compiles everything itself as before. Under xdist the workers share the folder."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(root / "jax-compilation-cache")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"


@pytest.fixture
def tiny_kwargs():
    return dict(TINY)


@pytest.fixture
def images():
    return jax.random.normal(jax.random.key(1), (4, 8, 8, 3))


@pytest.fixture
def train_grads(images):
    """For a ResNet: ((loss, updated batch_stats), parameter gradients) of a train-mode loss
    on `images` (a log-softmax, so that every logit matters)."""

    def run(model):
        v = model.init(jax.random.key(0), images)

        def loss(params):
            logits, upd = model.apply(
                {**v, "params": params}, images, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), upd

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])

    return run
