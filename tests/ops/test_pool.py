"""`resflax.ops.pool.max_pool`: torch's padding; with `phases`, a gradient equal to JAX's
select-and-scatter (ties included) computed as elementwise passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.mark.parametrize("shape", [(2, 9, 8, 3), (1, 7, 7, 2), (2, 16, 16, 4)])
def test_max_pool_gradient_is_select_and_scatters_ties_included(shape):
    import flax.linen as nn

    from resflax.ops.pool import max_pool

    # Rounded, ReLU'd values: many equal maxima in a window, as after a stem's ReLU.
    x = jnp.maximum(jnp.round(jax.random.normal(jax.random.key(0), shape) * 2), 0)
    ref = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_array_equal(max_pool(x, 3, 2, 1, phases=True), ref)
    w = jax.random.normal(jax.random.key(1), ref.shape)

    def grad(pool):
        return jax.grad(lambda x: jnp.sum(pool(x) * w))(x)

    ours = grad(lambda x: max_pool(x, 3, 2, 1, phases=True))
    theirs = grad(lambda x: nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1))))
    # The same elements receive gradient; where overlapping windows pick the same element,
    # the sum's order (and so its last bit) may differ.
    np.testing.assert_array_equal(ours != 0, theirs != 0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window,stride,padding", [(2, 2, 0), (3, 1, 1), (5, 3, 2), (12, 3, 6)])
def test_max_pool_gradient_other_windows_and_strides(window, stride, padding):
    """Every stride phase (stride 1: one phase; 3: nine) and a window of 144 offsets, more
    than a byte can number, route the gradient as select-and-scatter does."""
    import flax.linen as nn

    from resflax.ops.pool import max_pool

    x = jnp.maximum(jnp.round(jax.random.normal(jax.random.key(0), (2, 17, 13, 3)) * 2), 0)
    pads = ((padding, padding), (padding, padding))

    def grad(pool):
        return jax.grad(lambda x: jnp.sum(pool(x) ** 2))(x)

    ours = grad(lambda x: max_pool(x, window, stride, padding, phases=True))
    theirs = grad(lambda x: nn.max_pool(x, (window, window), (stride, stride), padding=pads))
    np.testing.assert_array_equal(ours != 0, theirs != 0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_in_bfloat16_is_summed_in_float32_and_rounded_once():
    """Where windows overlap, an input receives up to four gradients: their sum is rounded to
    bf16 once (as select-and-scatter in float32, then rounded), not after every addition."""
    import flax.linen as nn

    from resflax.ops.pool import max_pool

    x = jnp.maximum(jax.random.normal(jax.random.key(0), (2, 16, 16, 4)), 0).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (2, 8, 8, 4)).astype(jnp.bfloat16)
    ours = jax.vjp(lambda x: max_pool(x, 3, 2, 1, phases=True), x)[1](w)[0]
    assert ours.dtype == jnp.bfloat16
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    pool = lambda x: nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))  # noqa: E731
    want = jax.vjp(pool, f32(x))[1](f32(w))[0].astype(jnp.bfloat16)
    np.testing.assert_array_equal(f32(ours), f32(want))


def test_max_pool_refuses_bad_padding_and_layout():
    from resflax.ops.pool import max_pool

    with pytest.raises(ValueError, match=r"padding=2 must be in \[0, window // 2 = 1\]"):
        max_pool(jnp.zeros((1, 8, 8, 1)), 3, 2, 2)
    with pytest.raises(ValueError, match=r"expects NHWC input, got shape \(8, 8\)"):
        max_pool(jnp.zeros((8, 8)), 3, 2, 1)


def test_plain_form_is_jax_reduce_window_and_takes_forward_mode():
    from resflax.ops.pool import max_pool

    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
    y, t = jax.jvp(lambda x: max_pool(x, 3, 2, 1), (x,), (jnp.ones_like(x),))
    np.testing.assert_array_equal(y, max_pool(x, 3, 2, 1, phases=True))
    np.testing.assert_array_equal(t, jnp.ones_like(y))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: max_pool(x, 3, 2, 1, phases=True), (x,), (x,))
