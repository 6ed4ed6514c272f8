"""Save/restore is bitwise, keeps the data position, and refuses a workdir of another model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resflax.models import ResNet
from resflax.train.checkpoint import Checkpointer
from resflax.train.optim import make_optimizer
from resflax.train.parallel import make_parallel
from resflax.train.state import make_init
from resflax.train.step import train_step

TINY = dict(stage_sizes=(1, 1), block="basic", widths=(8, 16), stem="cifar", stem_width=8,
            num_classes=4)  # fmt: skip
FINGERPRINT = {"model": "tiny", "num_classes": 4}


def _state():
    tx = make_optimizer("sgd", optax.constant_schedule(0.1), weight_decay=1e-4)
    init = make_init(ResNet(**TINY), tx, (1, 8, 8, 3))
    state = jax.jit(init)(jax.random.key(0))
    batch = {"image": jnp.ones((4, 8, 8, 3)), "label": jnp.arange(4), "mask": jnp.ones(4, bool)}
    for _ in range(2):
        state, _ = jax.jit(train_step)(state, batch)
    return init, state


def test_round_trip_is_bitwise_and_keeps_the_position(tmp_path):
    init, state = _state()
    ckpt = Checkpointer(tmp_path, FINGERPRINT)
    ckpt.save(state, {"epoch": 1, "index": 5})
    ckpt.wait()
    assert ckpt.latest_step() == 2
    target = jax.eval_shape(init, jax.random.key(1))
    restored, position = Checkpointer(tmp_path, FINGERPRINT).restore(target)
    assert position == {"epoch": 1, "index": 5}
    for a, b in zip(
        jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state), strict=True
    ):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)
    assert restored.apply_fn == state.apply_fn
    np.testing.assert_array_equal(
        jax.random.key_data(restored.step_key()), jax.random.key_data(state.step_key())
    )


def test_empty_workdir_restores_nothing(tmp_path):
    init, _ = _state()
    assert (
        Checkpointer(tmp_path, FINGERPRINT).restore(jax.eval_shape(init, jax.random.key(0))) is None
    )


def test_workdir_of_another_model_is_refused_and_left_alone(tmp_path):
    _, state = _state()
    ckpt = Checkpointer(tmp_path, FINGERPRINT)
    ckpt.save(state, {"epoch": 0, "index": 2})
    ckpt.wait()
    other = Checkpointer(tmp_path, {"model": "resnet50", "num_classes": 4})
    with pytest.raises(ValueError, match=r"holds checkpoints of .*'tiny'.* not .*'resnet50'"):
        other.check_fingerprint()
    assert other.latest_step() == 2  # nothing deleted


def test_max_to_keep(tmp_path):
    _, state = _state()
    ckpt = Checkpointer(tmp_path, FINGERPRINT, max_to_keep=2, async_save=False)
    for step in range(3, 7):
        ckpt.save(state.replace(step=jnp.asarray(step, jnp.int32)), {"epoch": 0, "index": step})
    ckpt.wait()
    assert sorted(ckpt.manager.all_steps()) == [5, 6]
    with pytest.raises(ValueError, match="max_to_keep=0"):
        Checkpointer(tmp_path, FINGERPRINT, max_to_keep=0)


def test_saving_a_state_replicated_on_8_devices_compiles_only_its_checksums(tmp_path):
    """orbax's default (replica-parallel) save slices each replicated array once per device
    and compiles every slice: ResNet-20's first save on 8 devices took 2.3 s of compiles. The
    Checkpointer writes one replica as it is, and it restores bitwise. The one program a save
    compiles is the checksum of the whole state (resflax.train.integrity), once per run."""
    _, state = _state()
    state = jax.device_put(state, NamedSharding(make_parallel("jit", 8).mesh, P()))
    assert all(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(state.params))
    later = state.replace(step=jax.device_put(state.step + 1, state.step.sharding))
    compiles = []

    def listen(event, seconds, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        ckpt = Checkpointer(tmp_path, FINGERPRINT)
        ckpt.save(state, {"epoch": 0, "index": 2})
        ckpt.wait()
        first = len(compiles)
        ckpt.save(later, {"epoch": 0, "index": 3})
        ckpt.wait()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert (first, len(compiles)) == (1, 1)
    restored, _ = Checkpointer(tmp_path, FINGERPRINT).restore(state)
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.sharding == b.sharding
