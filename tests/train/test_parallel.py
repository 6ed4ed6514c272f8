"""jit over 8 devices, pmap over 8 devices and a single device train to the same parameters."""

import jax
import numpy as np
import optax
import pytest

from resflax.models import ResNet
from resflax.train.optim import make_optimizer
from resflax.train.parallel import AXIS, make_parallel
from resflax.train.state import make_init
from resflax.train.step import eval_step, train_step

TINY = dict(stage_sizes=(1, 1), block="basic", widths=(8, 16), stem="cifar", stem_width=8,
            num_classes=4)  # fmt: skip


def _batches(n=3, size=16):
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.normal(size=(size, 8, 8, 3)).astype(np.float32),
            "label": rng.integers(0, 4, size).astype(np.int32),
            "mask": np.ones(size, bool),
        }
        for _ in range(n)
    ]


def _train(kind, num_devices):
    par = make_parallel(kind, num_devices)
    model = ResNet(**TINY, axis_name=AXIS if kind == "pmap" else None)
    tx = par.wrap_tx(make_optimizer("sgd", optax.constant_schedule(0.1), weight_decay=1e-4))
    state = par.create_state(make_init(model, tx, (1, 8, 8, 3)), jax.random.key(0))
    step = par.train_step(train_step)
    for batch in _batches():
        state, sums = step(state, par.shard_batch(batch))
    evals = par.eval_step(eval_step)(state, par.shard_batch(_batches(1)[0]))
    return par.unreplicate(state), sums, evals


def test_jit8_pmap8_and_one_device_agree_after_three_steps():
    assert jax.local_device_count() == 8
    ref_state, ref_sums, ref_eval = _train("jit", 1)
    for kind in ("jit", "pmap"):
        state, sums, evals = _train(kind, 8)
        assert int(state.step) == 3
        for ours, ref in [
            (state.params, ref_state.params),
            (state.batch_stats, ref_state.batch_stats),
            (state.opt_state[-1] if kind == "pmap" else state.opt_state, ref_state.opt_state),
            (sums, ref_sums),
            (evals, ref_eval),
        ]:
            jax.tree_util.tree_map(
                lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), ours, ref
            )


def test_jit_state_is_replicated_and_batches_sharded():
    par = make_parallel("jit", 8)
    batch = par.shard_batch(_batches(1)[0])
    assert batch["image"].sharding.spec == jax.sharding.PartitionSpec(AXIS)
    assert len(batch["image"].addressable_shards) == 8
    model = ResNet(**TINY)
    tx = make_optimizer("sgd", optax.constant_schedule(0.1))
    state = par.create_state(make_init(model, tx, (1, 8, 8, 3)), jax.random.key(0))
    kernel = state.params["head"]["fc"]["kernel"]
    assert kernel.sharding.is_fully_replicated and len(kernel.devices()) == 8


@pytest.mark.parametrize("kind", ["jit", "pmap"])
def test_batch_not_divisible_by_devices_is_refused(kind):
    par = make_parallel(kind, 8)
    with pytest.raises(ValueError, match="batch_size=12 is not divisible by the 8 devices"):
        par.shard_batch(_batches(1, size=12)[0])


def test_bad_parallel_settings_are_named():
    with pytest.raises(ValueError, match="parallel='dp'"):
        make_parallel("dp")
    with pytest.raises(ValueError, match="num_devices=9"):
        make_parallel("jit", 9)
