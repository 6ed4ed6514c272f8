"""`resflax.ops.conv`: the convolution forms equal lax's convolution, values and gradients."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resflax.ops.conv import conv_dot


@pytest.mark.parametrize(
    "kernel, padding, dtype",
    [
        ((3, 3), ((1, 1), (1, 1)), jnp.float32),
        ((1, 1), ((0, 0), (0, 0)), jnp.float32),
        ((7, 7), ((3, 3), (3, 3)), jnp.float32),
        ((3, 3), ((0, 2), (1, 0)), jnp.float32),
        ((3, 3), ((1, 1), (1, 1)), jnp.bfloat16),
    ],
)
def test_canonical_conv_gradients_equal_lax(kernel, padding, dtype):
    from jax import lax

    from resflax.ops.conv import conv_canonical

    x = jax.random.normal(jax.random.key(0), (3, 9, 8, 5), dtype)
    w = jax.random.normal(jax.random.key(1), (*kernel, 5, 6), dtype)
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv):
        return lambda x, w: (conv(x, w, (1, 1), padding, dimension_numbers=dn) ** 2).sum()

    ref = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    ours = jax.grad(loss(conv_canonical), (0, 1))(x, w)
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-4
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol * 10
        )
    if kernel != (1, 1):  # strided kxk convolutions are passed to lax untouched
        y = conv_canonical(x, w, (2, 2), padding, dimension_numbers=dn)
        np.testing.assert_array_equal(
            y, lax.conv_general_dilated(x, w, (2, 2), padding, dimension_numbers=dn)
        )


@pytest.mark.parametrize(
    "strides, padding, dtype",
    [
        ((1, 1), ((0, 0), (0, 0)), jnp.float32),
        ((2, 2), ((0, 0), (0, 0)), jnp.float32),  # odd sizes: 9x7 -> 5x4
        ((2, 1), "SAME", jnp.float32),
        ((2, 2), "VALID", jnp.float32),
        ((2, 2), ((0, 0), (0, 0)), jnp.bfloat16),
    ],
)
def test_dot_1x1_convolutions_equal_lax_with_gradients(strides, padding, dtype):
    from jax import lax

    from resflax.ops.conv import conv_dot

    x = jax.random.normal(jax.random.key(0), (3, 9, 7, 5), dtype)
    w = jax.random.normal(jax.random.key(1), (1, 1, 5, 6), dtype)
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv):
        return lambda x, w: (conv(x, w, strides, padding, dimension_numbers=dn) ** 2).sum()

    y = conv_dot(x, w, strides, padding, dimension_numbers=dn)
    ref_y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
    assert y.shape == ref_y.shape and y.dtype == ref_y.dtype
    ref = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    ours = jax.grad(loss(conv_dot), (0, 1))(x, w)
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    for a, b in zip((y, *ours), (ref_y, *ref), strict=True):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol * 10
        )
    # The input gradient of a strided 1x1 is zero off the sampled grid, as lax's.
    if strides == (2, 2):
        assert not np.asarray(ours[0][:, 1::2], np.float32).any()


@pytest.mark.parametrize(
    "size, kernel, strides, padding, dtype",
    [
        ((8, 8), (3, 3), (2, 2), ((1, 1), (1, 1)), jnp.float32),  # ResNet's stride-2 3x3
        ((9, 7), (3, 3), (2, 2), ((1, 1), (1, 1)), jnp.float32),  # odd sizes
        ((11, 10), (7, 7), (2, 2), ((3, 3), (3, 3)), jnp.float32),  # the stem's 7x7
        ((10, 9), (3, 4), (3, 2), ((0, 2), (1, 0)), jnp.float32),  # uneven everything
        ((9, 9), (3, 3), (2, 2), "SAME", jnp.float32),
        ((6, 6), (2, 2), (3, 3), "VALID", jnp.float32),  # phases no tap reaches
        ((8, 8), (3, 3), (2, 2), ((1, 1), (1, 1)), jnp.bfloat16),
    ],
)
def test_strided_convolution_input_gradient_by_phases_equals_lax(
    size, kernel, strides, padding, dtype
):
    from jax import lax

    from resflax.ops.conv import conv_dot

    x = jax.random.normal(jax.random.key(0), (2, *size, 5), dtype)
    w = jax.random.normal(jax.random.key(1), (*kernel, 5, 6), dtype)
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv):
        return lambda x, w: (jnp.sin(conv(x, w, strides, padding, dimension_numbers=dn))).sum()

    ref = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    ours = jax.grad(loss(conv_dot), (0, 1))(x, w)
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype == dtype
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol * 10
        )
    # No dilated convolution is left in the backward pass: that is the point.
    text = jax.jit(jax.grad(loss(conv_dot))).lower(x, w).as_text()
    assert set(re.findall(r"lhs_dilate = \[\d+, \d+\]", text)) <= {"lhs_dilate = [1, 1]"}
    text = jax.jit(jax.grad(loss(lax.conv_general_dilated))).lower(x, w).as_text()
    assert f"lhs_dilate = [{strides[0]}, {strides[1]}]" in text  # what it replaces


def test_dot_1x1_leaves_other_convolutions_to_lax():
    from jax import lax

    from resflax.ops.conv import conv_dot

    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    for shape, kw in [((3, 3, 4, 4), {}), ((1, 1, 2, 4), {"feature_group_count": 2}),
                      ((1, 1, 4, 4), {"rhs_dilation": (2, 2)})]:  # fmt: skip
        w = jax.random.normal(jax.random.key(1), shape)
        args = (x, w, (2, 2), ((0, 0), (0, 0)))
        np.testing.assert_array_equal(
            conv_dot(*args, dimension_numbers=dn, **kw),
            lax.conv_general_dilated(*args, dimension_numbers=dn, **kw),
        )


@pytest.mark.compiler_probe
def test_compiler_probe_1x1_weight_gradient_contracts_in_place():
    """Written as a 2-D product, the 1x1 convolution's weight gradient reads the output
    gradient where it lies; from a 4-D einsum XLA:CPU transposed that gradient first."""
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((1, 1, 4, 16))
    dn = ("NHWC", "HWIO", "NHWC")

    def einsum_form(x, w, *args, **kwargs):
        return jnp.einsum("nhwc,cd->nhwd", x, w[0, 0])

    layouts = []
    for conv in (conv_dot, einsum_form):

        def loss(x, w, conv=conv):
            return jnp.sum(jnp.sin(conv(x, w, (1, 1), "VALID", dimension_numbers=dn)))

        text = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text()
        layouts.append(sum(text.count(op) for op in (" transpose(", " copy(")))
    assert layouts[0] == 0
    assert layouts[1] > 0  # if XLA stops doing this, the 2-D form is no longer needed


@pytest.mark.compiler_probe
def test_compiler_probe_1x1_weight_gradient_puts_the_narrower_operand_first():
    """Eigen runs the contraction over rows faster with the operand of fewer columns first,
    so a narrowing 1x1's weight gradient is `(g.T @ x).T`, kept in that order by a barrier;
    a widening one stays `x.T @ g`. Both equal autodiff's gradient of the 4-D convolution."""
    dn = ("NHWC", "HWIO", "NHWC")
    for cin, cout in ((16, 4), (4, 16)):
        x = jax.random.normal(jax.random.key(0), (2, 6, 6, cin))
        w = jax.random.normal(jax.random.key(1), (1, 1, cin, cout))

        def loss(w, conv, x=x):
            return jnp.sum(jnp.sin(conv(x, w, (1, 1), "VALID", dimension_numbers=dn)))

        got = jax.grad(loss)(w, conv_dot)
        want = jax.grad(loss)(w, lax.conv_general_dilated)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        text = jax.jit(jax.grad(loss), static_argnums=1).lower(w, conv_dot).compile().as_text()
        products = re.findall(r"= f32\[(\d+),(\d+)\]\{1,0\} dot\(", text)
        weight_grads = [p for p in products if sorted(map(int, p)) == sorted((cin, cout))]
        assert weight_grads == [(str(min(cin, cout)), str(max(cin, cout)))], products
        assert ("opt-barrier(" in text) == (cin > cout)
