"""The pure train and eval steps on a tiny ResNet."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resflax.models import ResNet
from resflax.train.optim import make_optimizer
from resflax.train.state import make_init
from resflax.train.step import eval_step, train_step

TINY = dict(stage_sizes=(1, 1), block="basic", widths=(8, 16), stem="cifar", stem_width=8,
            num_classes=4)  # fmt: skip


def _setup(**model_kw):
    model = ResNet(**{**TINY, **model_kw})
    tx = make_optimizer("sgd", optax.constant_schedule(0.05), weight_decay=1e-4)
    state = jax.jit(make_init(model, tx, (1, 8, 8, 3)))(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (16, 8, 8, 3))
    labels = jnp.arange(16) % 4
    x = x + labels[:, None, None, None].astype(jnp.float32)  # learnable signal
    return state, {"image": x, "label": labels, "mask": jnp.ones(16, bool)}


def test_training_reduces_the_loss_and_counts_steps():
    state, batch = _setup()
    # A private wrapper: jax.jit(train_step) shares its compile cache with other tests' jits.
    step = jax.jit(lambda s, b: train_step(s, b))
    first = None
    for _ in range(30):
        state, m = step(state, batch)
        first = first if first is not None else float(m["loss_sum"] / m["count"])
    last = float(m["loss_sum"] / m["count"])
    assert int(state.step) == 30
    assert last < 0.5 * first
    assert step._cache_size() == 1


def test_train_step_is_deterministic_and_updates_batch_stats():
    state, batch = _setup(drop_path_rate=0.2)
    a, ma = jax.jit(train_step)(state, batch)
    b, mb = jax.jit(train_step)(state, batch)
    jax.tree_util.tree_map(np.testing.assert_array_equal, (a.params, ma), (b.params, mb))
    before = state.batch_stats["stem"]["norm"]["mean"]
    assert not np.allclose(a.batch_stats["stem"]["norm"]["mean"], before)
    # The per-step key changes with the step, so stochastic depth draws differ step to step.
    assert not np.array_equal(state.step_key(), a.step_key())


def test_eval_counts_only_unmasked_examples():
    state, batch = _setup()
    masked = {**batch, "mask": jnp.arange(16) < 10}
    sums = jax.jit(eval_step)(state, masked)
    assert float(sums["count"]) == 10
    full = eval_step(state, {k: v[:10] for k, v in batch.items()})
    np.testing.assert_allclose(sums["loss_sum"], full["loss_sum"], rtol=1e-5)
    assert float(sums["top1_sum"]) == float(full["top1_sum"])


def test_state_shapes_without_allocating():
    model = ResNet(**TINY)
    tx = make_optimizer("sgd", optax.constant_schedule(0.1))
    abstract = jax.eval_shape(make_init(model, tx, (1, 8, 8, 3)), jax.random.key(0))
    assert abstract.step.shape == () and abstract.step.dtype == jnp.int32
    assert abstract.params["head"]["fc"]["kernel"].shape == (16, 4)
    assert isinstance(abstract.params["head"]["fc"]["kernel"], jax.ShapeDtypeStruct)
