"""Loss, metrics, schedules and optimizers: numbers checked against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resflax.losses import averages, cross_entropy, metric_sums, topk_correct
from resflax.train.optim import decay_mask, make_optimizer, make_schedule, scaled_learning_rate


def test_cross_entropy_matches_optax_with_label_smoothing():
    logits = jax.random.normal(jax.random.key(0), (6, 10))
    labels = jnp.arange(6) % 10
    targets = optax.smooth_labels(jax.nn.one_hot(labels, 10), 0.1)
    np.testing.assert_allclose(
        cross_entropy(logits, labels, 0.1), optax.softmax_cross_entropy(logits, targets), rtol=1e-6
    )
    with pytest.raises(ValueError, match=r"label_smoothing=1\.0"):
        cross_entropy(logits, labels, 1.0)


def test_topk_and_masked_sums():
    logits = jnp.array([[3.0, 2, 1, 0, -1, -2], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    labels = jnp.array([0, 0, 5])
    np.testing.assert_array_equal(topk_correct(logits, labels, 1), [1, 0, 0])
    np.testing.assert_array_equal(topk_correct(logits, labels, 5), [1, 0, 0])
    np.testing.assert_array_equal(topk_correct(logits, labels, 6), [1, 1, 1])
    sums = metric_sums(logits, labels, jnp.array([True, True, False]))
    assert float(sums["count"]) == 2 and float(sums["top1_sum"]) == 1
    avg = averages(sums)
    assert avg["top1"] == 0.5 and avg["top5"] == 0.5
    expected = float(cross_entropy(logits[:2], labels[:2]).mean())
    assert avg["loss"] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="count=0"):
        averages({"loss_sum": 0.0, "count": 0})


def test_he2015_cifar_schedule():
    s = make_schedule(
        "piecewise", learning_rate=0.1, total_steps=64_000, boundaries=(32_000, 48_000)
    )
    got = [float(s(t)) for t in (0, 31_999, 32_000, 47_999, 48_000, 63_999)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_warmup_then_piecewise_keeps_absolute_boundaries():
    s = make_schedule(
        "piecewise", learning_rate=0.4, total_steps=100, warmup_steps=10, boundaries=(50,)
    )
    np.testing.assert_allclose(
        [float(s(t)) for t in (0, 5, 10, 49, 50)], [0.0, 0.2, 0.4, 0.4, 0.04], rtol=1e-6
    )


def test_cosine_ends_at_end_learning_rate():
    s = make_schedule("cosine", learning_rate=1.0, total_steps=100, end_learning_rate=0.1)
    assert float(s(0)) == pytest.approx(1.0)
    assert float(s(50)) == pytest.approx(0.55, rel=1e-5)
    assert float(s(100)) == pytest.approx(0.1, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="step"), "schedule='step'"),
        (dict(learning_rate=-0.1), "learning_rate=-0.1"),
        (dict(total_steps=0), "total_steps=0"),
        (dict(warmup_steps=100), "warmup_steps=100"),
        (dict(boundaries=(60, 30)), r"boundaries=\(60, 30\)"),
    ],
)
def test_schedule_errors_name_the_value(kwargs, match):
    args = dict(kind="piecewise", learning_rate=0.1, total_steps=100, boundaries=(50,))
    with pytest.raises(ValueError, match=match):
        make_schedule(**{**args, **kwargs})


def test_linear_scaling():
    assert scaled_learning_rate(0.1, 1024, 256) == pytest.approx(0.4)
    assert scaled_learning_rate(0.1, 1024, None) == 0.1
    with pytest.raises(ValueError, match="batch_size=0"):
        scaled_learning_rate(0.1, 0, 256)


def test_decay_mask_skips_norms_and_biases():
    params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "bn": {"scale": jnp.ones(4)},
              "fc": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}}  # fmt: skip
    assert decay_mask(params) == {"conv": {"kernel": True}, "bn": {"scale": False},
                                  "fc": {"kernel": True, "bias": False}}  # fmt: skip
    assert all(jax.tree_util.tree_leaves(decay_mask(params, decay_norm_and_bias=True)))


def test_sgd_is_momentum_with_l2_on_kernels_only():
    params = {"k": jnp.array([[1.0, -2.0]]), "b": jnp.array([3.0])}
    grads = {"k": jnp.array([[0.5, 0.5]]), "b": jnp.array([1.0])}
    tx = make_optimizer("sgd", optax.constant_schedule(0.1), momentum=0.9, weight_decay=0.01)
    state = tx.init(params)
    p, v = params, {"k": jnp.zeros((1, 2)), "b": jnp.zeros(1)}
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        g = {"k": grads["k"] + 0.01 * p["k"], "b": grads["b"]}  # no decay on the bias
        v = {n: 0.9 * v[n] + g[n] for n in v}
        p = {n: p[n] - 0.1 * v[n] for n in p}
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), params, p)


@pytest.mark.parametrize("name", ["adamw", "lars"])
def test_other_optimizers_step(name):
    params = {"k": jnp.ones((2, 2)), "b": jnp.ones(2)}
    tx = make_optimizer(name, optax.constant_schedule(0.01), weight_decay=1e-4, grad_clip_norm=1.0)
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), tx.init(params), params)
    assert all(float(jnp.abs(u).max()) > 0 for u in jax.tree_util.tree_leaves(updates))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="rmsprop"), "optimizer='rmsprop'"),
        (dict(weight_decay=-1.0), "weight_decay=-1.0"),
        (dict(momentum=1.5), "momentum=1.5"),
        (dict(grad_clip_norm=0.0), "grad_clip_norm=0.0"),
    ],
)
def test_optimizer_errors_name_the_value(kwargs, match):
    args = dict(name="sgd", schedule=optax.constant_schedule(0.1))
    with pytest.raises(ValueError, match=match):
        make_optimizer(**{**args, **kwargs})
