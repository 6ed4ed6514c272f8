"""Save/restore is bitwise, keeps the data position, refuses a workdir of another model or a
state of another structure, and restores an older pmap run's checkpoint."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resflax.models import ResNet
from resflax.train.checkpoint import DAMAGED, CheckpointDamage, Checkpointer
from resflax.train.optim import make_optimizer
from resflax.train.parallel import AXIS, make_parallel
from resflax.train.state import make_init
from resflax.train.step import train_step
from resflax.train.tree_layout import LayoutMismatch
from tests.saved import tree_hash

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


def _pmean_gradients():
    """What pmap runs chained in front of the optimizer before it averaged inside the update
    (resflax.train.tree_layout.legacy_pmap): a transform whose EmptyState added a slot."""

    def update(updates, state, params=None):
        return jax.lax.pmean(updates, AXIS), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _legacy_pmap_state():
    """Two steps of an older pmap run on 2 devices, as it would be saved (one copy)."""
    par = make_parallel("pmap", 2)
    tx = make_optimizer("sgd", optax.constant_schedule(0.1), weight_decay=1e-4)
    model = ResNet(**TINY, axis_name=par.axis_name)
    state = par.create_state(
        make_init(model, optax.chain(_pmean_gradients(), tx), (1, 8, 8, 3)), jax.random.key(0)
    )
    step = par.train_step(train_step)
    batch = {"image": jnp.ones((4, 8, 8, 3)), "label": jnp.arange(4), "mask": jnp.ones(4, bool)}
    for _ in range(2):
        state, _ = step(state, par.shard_batch(batch))
    return par.unreplicate(state)


def test_an_older_pmap_checkpoint_restores_without_its_empty_optimizer_slot(tmp_path):
    legacy = _legacy_pmap_state()
    assert isinstance(legacy.opt_state[0], optax.EmptyState)
    ckpt = Checkpointer(tmp_path, FINGERPRINT)
    ckpt.save(legacy, {"epoch": 0, "index": 2})
    ckpt.wait()
    init, _ = _state()  # jit's tree, which every driver now restores into
    restored, position = Checkpointer(tmp_path, FINGERPRINT).restore(
        jax.eval_shape(init, jax.random.key(1))
    )
    assert position == {"epoch": 0, "index": 2} and int(restored.step) == 2
    assert jax.tree.structure(restored.opt_state) == jax.tree.structure(legacy.opt_state[1])
    expected = (legacy.params, legacy.batch_stats, legacy.opt_state[1])
    for a, b in zip(
        jax.tree.leaves((restored.params, restored.batch_stats, restored.opt_state)),
        jax.tree.leaves(expected),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(jax.tree.leaves(restored.opt_state)[0]).sum()) > 0  # a trained trace


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (
            dict(widths=(8, 32)),
            r"batch_stats/stage2/block0/norm1/mean is float32\[16\] there, float32\[32\] here",
        ),
        (dict(grad_clip_norm=1.0), r"only in this run's state: opt_state/"),
    ],
    ids=["wider_model", "clipping_optimizer"],
)
def test_a_state_of_another_structure_is_refused_in_one_line_and_nothing_moved(
    tmp_path, other, message
):
    _, state = _state()
    ckpt = Checkpointer(tmp_path, FINGERPRINT, async_save=False)
    ckpt.save(state, {"epoch": 0, "index": 2})
    ckpt.save(state.replace(step=state.step + 1), {"epoch": 0, "index": 3})
    before = tree_hash(tmp_path)
    clip = other.pop("grad_clip_norm", None)
    tx = make_optimizer("sgd", optax.constant_schedule(0.1), weight_decay=1e-4, grad_clip_norm=clip)
    init = make_init(ResNet(**{**TINY, **other}), tx, (1, 8, 8, 3))
    with pytest.raises(LayoutMismatch, match=r"checkpoint 3 in .* of another structure") as e:
        Checkpointer(tmp_path, FINGERPRINT).restore(jax.eval_shape(init, jax.random.key(0)))
    assert re.search(message, str(e.value)), str(e.value)
    assert "\n" not in str(e.value) and not isinstance(e.value, CheckpointDamage)
    assert tree_hash(tmp_path) == before and not (tmp_path / DAMAGED).exists()
