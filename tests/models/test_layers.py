"""`relu_stored`: the same function and derivatives as ReLU, stored once by XLA; the 1x1
convolutions' product form and its gradients."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax import lax

from resflax.models import ResNet
from resflax.models.layers import conv_dot_1x1, get_activation, relu_stored


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
    assert get_activation("relu", stored=True) is relu_stored
    assert get_activation("relu") is nn.relu
    assert get_activation("silu", stored=True) is nn.silu
    with pytest.raises(ValueError, match="act='tanh' is not one of"):
        get_activation("tanh", stored=True)


def test_resnet_gradients_unchanged_and_barriers_kept(tiny_kwargs, images):
    """The tests run with XLA:CPU's barriers kept (conftest): the stored outputs appear as
    optimisation barriers in the compiled step, and the gradients are those of plain ReLU."""
    grads, texts = [], []
    for stored in (False, True):
        model = ResNet(**tiny_kwargs, stored_act=stored)
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
    # None (the default): on for the CPU backend the tests run on.
    assert "optimization_barrier" in jax.jit(ResNet(**tiny_kwargs).apply).lower(v, images).as_text()


def test_1x1_weight_gradient_contracts_in_place():
    """Written as a 2-D product, the 1x1 convolution's weight gradient reads the output
    gradient where it lies; from a 4-D einsum XLA:CPU transposed that gradient first."""
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((1, 1, 4, 16))
    dn = ("NHWC", "HWIO", "NHWC")

    def einsum_form(x, w, *args, **kwargs):
        return jnp.einsum("nhwc,cd->nhwd", x, w[0, 0])

    layouts = []
    for conv in (conv_dot_1x1, einsum_form):

        def loss(x, w, conv=conv):
            return jnp.sum(jnp.sin(conv(x, w, (1, 1), "VALID", dimension_numbers=dn)))

        text = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text()
        layouts.append(sum(text.count(op) for op in (" transpose(", " copy(")))
    assert layouts[0] == 0
    assert layouts[1] > 0  # if XLA stops doing this, the 2-D form is no longer needed


def test_1x1_weight_gradient_puts_the_narrower_operand_first():
    """Eigen runs the contraction over rows faster with the operand of fewer columns first,
    so a narrowing 1x1's weight gradient is `(g.T @ x).T`, kept in that order by a barrier;
    a widening one stays `x.T @ g`. Both equal autodiff's gradient of the 4-D convolution."""
    dn = ("NHWC", "HWIO", "NHWC")
    for cin, cout in ((16, 4), (4, 16)):
        x = jax.random.normal(jax.random.key(0), (2, 6, 6, cin))
        w = jax.random.normal(jax.random.key(1), (1, 1, cin, cout))

        def loss(w, conv, x=x):
            return jnp.sum(jnp.sin(conv(x, w, (1, 1), "VALID", dimension_numbers=dn)))

        got = jax.grad(loss)(w, conv_dot_1x1)
        want = jax.grad(loss)(w, lax.conv_general_dilated)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        text = jax.jit(jax.grad(loss), static_argnums=1).lower(w, conv_dot_1x1).compile().as_text()
        products = re.findall(r"= f32\[(\d+),(\d+)\]\{1,0\} dot\(", text)
        weight_grads = [p for p in products if sorted(map(int, p)) == sorted((cin, cout))]
        assert weight_grads == [(str(min(cin, cout)), str(max(cin, cout)))], products
        assert ("opt-barrier(" in text) == (cin > cout)
