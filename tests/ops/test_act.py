"""`Ops(act="relu_stored")`: the same function and derivatives as ReLU (a custom JVP, so every
transformation works), stored once by XLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from resflax.models import ResNet
from resflax.models.layers import get_activation
from resflax.ops import Ops, auto
from resflax.ops.act import relu_stored


def test_values_and_derivatives_equal_relu_including_at_zero():
    x = jnp.array([-2.0, -0.0, 0.0, 1e-30, 3.0])
    np.testing.assert_array_equal(relu_stored(x), nn.relu(x))
    g = jax.random.normal(jax.random.key(0), x.shape)
    mine = jax.vjp(relu_stored, x)[1](g)[0]
    theirs = jax.vjp(nn.relu, x)[1](g)[0]
    np.testing.assert_array_equal(mine, theirs)
    assert mine[1] == 0 and mine[2] == 0  # the subgradient at 0 is 0, as jax.nn.relu's
    # Forward mode works too (a custom_jvp, unlike the custom_vjp convolutions).
    np.testing.assert_array_equal(
        jax.jvp(relu_stored, (x,), (g,))[1], jax.jvp(nn.relu, (x,), (g,))[1]
    )
    assert relu_stored(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16


def test_only_relu_is_replaced():
    stored = Ops(act="relu_stored")
    assert get_activation("relu", stored) is relu_stored
    assert get_activation("relu") is nn.relu
    assert get_activation("silu", stored) is nn.silu
    with pytest.raises(ValueError, match="act='tanh' is not one of"):
        get_activation("tanh", stored)


def test_resnet_gradients_unchanged_and_barriers_kept(tiny_kwargs, images):
    """The tests run with XLA:CPU's barriers kept (conftest): the stored outputs appear as
    optimisation barriers in the compiled step, and the gradients are those of plain ReLU."""
    grads, texts = [], []
    for stored in (False, True):
        model = ResNet(**tiny_kwargs, ops=Ops(act="relu_stored" if stored else "relu"))
        v = model.init(jax.random.key(0), images)

        def loss(params, model=model, v=v):
            out = model.apply({**v, "params": params}, images, train=True, mutable=["batch_stats"])
            return jnp.sum(out[0] ** 2)

        compiled = jax.jit(jax.grad(loss)).lower(v["params"]).compile()
        grads.append(compiled(v["params"]))
        texts.append(compiled.as_text())
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *grads
    )
    assert "opt-barrier" not in texts[0]
    # stem, 2 per block (4 blocks): one barrier per ReLU.
    assert texts[1].count("opt-barrier(") == 1 + 2 * 4
    # Plain by default; auto() stores on the CPU backend the tests run on.
    assert (
        "optimization_barrier"
        not in jax.jit(ResNet(**tiny_kwargs).apply).lower(v, images).as_text()
    )
    fast = ResNet(**tiny_kwargs, ops=auto())
    assert "optimization_barrier" in jax.jit(fast.apply).lower(v, images).as_text()
