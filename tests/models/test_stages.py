"""Scanned and remat'ed stages compute exactly what the unrolled stage computes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resflax.models import ResNet, create_model, stack_blocks, unstack_blocks

VARIANTS = [
    dict(scan=True),
    dict(scan=True, scan_unroll=2),
    dict(remat=True),
    dict(scan=True, remat=True),
    dict(scan=True, remat=True, remat_policy="dots"),
]


def _close(a, b):
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), a, b
    )


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_same_outputs_as_unrolled(tiny_kwargs, images, block, variant):
    kw = {**tiny_kwargs, "block": block}
    unrolled = ResNet(**kw)
    variables = unrolled.init(jax.random.key(0), images)
    # Non-trivial statistics and last-norm scales, so every path matters.
    variables = jax.tree_util.tree_map(
        lambda a: a + 0.1 * jax.random.uniform(jax.random.key(a.size), a.shape), variables
    )
    other = ResNet(**kw, **variant)
    theirs = stack_blocks(variables) if variant.get("scan") else variables
    _close(other.apply(theirs, images), unrolled.apply(variables, images))

    out_u, new_u = unrolled.apply(variables, images, train=True, mutable=["batch_stats"])
    out_o, new_o = other.apply(theirs, images, train=True, mutable=["batch_stats"])
    _close(out_o, out_u)
    _close(unstack_blocks(new_o) if variant.get("scan") else new_o, new_u)

    def loss(params, model, vs):
        return model.apply({**vs, "params": params}, images, train=True,
                           mutable=["batch_stats"])[0].sum()  # fmt: skip

    g_u = jax.grad(loss)(variables["params"], unrolled, variables)
    g_o = jax.grad(loss)(theirs["params"], other, theirs)
    _close(unstack_blocks(g_o) if variant.get("scan") else g_o, g_u)


def test_scanned_init_has_stacked_parameters(tiny_kwargs, images):
    v = ResNet(**tiny_kwargs, scan=True).init(jax.random.key(0), images)
    stage2 = v["params"]["stage2"]
    assert set(stage2) == {"block0", "blocks"}
    assert stage2["blocks"]["conv1"]["kernel"].shape == (2, 3, 3, 8, 8)
    assert v["batch_stats"]["stage2"]["blocks"]["norm1"]["mean"].shape == (2, 8)
    # Each scanned block is initialised with its own key.
    k = stage2["blocks"]["conv1"]["kernel"]
    assert not np.allclose(k[0], k[1])


def test_stack_unstack_round_trip(tiny_kwargs, images):
    v = ResNet(**tiny_kwargs).init(jax.random.key(0), images)
    stacked = stack_blocks(v)
    assert set(stacked["params"]["stage2"]) == {"block0", "blocks"}
    assert set(stacked["params"]["stage1"]) == {"block0"}
    _close(unstack_blocks(stacked), v)
    assert jax.tree_util.tree_structure(unstack_blocks(stacked)) == jax.tree_util.tree_structure(v)


def test_stack_refuses_gaps():
    tree = {
        "block0": {"w": jnp.ones(2)},
        "block1": {"w": jnp.ones(2)},
        "block3": {"w": jnp.ones(2)},
    }
    with pytest.raises(ValueError, match=r"blocks \[1, 3\]"):
        stack_blocks(tree)


def test_scanned_drop_path_uses_per_block_rates(tiny_kwargs, images):
    model = ResNet(**tiny_kwargs, scan=True, drop_path_rate=0.5)
    v = model.init(jax.random.key(0), images)
    np.testing.assert_allclose(
        model.apply(v, images), ResNet(**tiny_kwargs, scan=True).apply(v, images)
    )
    out = model.apply(
        v, images, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
    )
    assert bool(jnp.all(jnp.isfinite(out[0])))


def test_deep_cifar_net_scans(images):
    model = create_model("resnet110", scan=True, num_classes=3, widths=(2, 2, 2), stem_width=2)
    x = jnp.zeros((1, 8, 8, 3))
    v = jax.eval_shape(model.init, jax.random.key(0), x)
    assert v["params"]["stage3"]["blocks"]["conv1"]["kernel"].shape == (17, 3, 3, 2, 2)


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

    from resflax.models.layers import conv_canonical_grad

    x = jax.random.normal(jax.random.key(0), (3, 9, 8, 5), dtype)
    w = jax.random.normal(jax.random.key(1), (*kernel, 5, 6), dtype)
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv):
        return lambda x, w: (conv(x, w, (1, 1), padding, dimension_numbers=dn) ** 2).sum()

    ref = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    ours = jax.grad(loss(conv_canonical_grad), (0, 1))(x, w)
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-4
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol * 10
        )
    if kernel != (1, 1):  # strided kxk convolutions are passed to lax untouched
        y = conv_canonical_grad(x, w, (2, 2), padding, dimension_numbers=dn)
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

    from resflax.models.layers import conv_dot_1x1

    x = jax.random.normal(jax.random.key(0), (3, 9, 7, 5), dtype)
    w = jax.random.normal(jax.random.key(1), (1, 1, 5, 6), dtype)
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv):
        return lambda x, w: (conv(x, w, strides, padding, dimension_numbers=dn) ** 2).sum()

    y = conv_dot_1x1(x, w, strides, padding, dimension_numbers=dn)
    ref_y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
    assert y.shape == ref_y.shape and y.dtype == ref_y.dtype
    ref = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    ours = jax.grad(loss(conv_dot_1x1), (0, 1))(x, w)
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

    from resflax.models.layers import conv_dot_1x1

    x = jax.random.normal(jax.random.key(0), (2, *size, 5), dtype)
    w = jax.random.normal(jax.random.key(1), (*kernel, 5, 6), dtype)
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv):
        return lambda x, w: (jnp.sin(conv(x, w, strides, padding, dimension_numbers=dn))).sum()

    ref = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    ours = jax.grad(loss(conv_dot_1x1), (0, 1))(x, w)
    tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype == dtype
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol * 10
        )
    # No dilated convolution is left in the backward pass: that is the point.
    text = jax.jit(jax.grad(loss(conv_dot_1x1))).lower(x, w).as_text()
    assert set(re.findall(r"lhs_dilate = \[\d+, \d+\]", text)) <= {"lhs_dilate = [1, 1]"}
    text = jax.jit(jax.grad(loss(lax.conv_general_dilated))).lower(x, w).as_text()
    assert f"lhs_dilate = [{strides[0]}, {strides[1]}]" in text  # what it replaces


def test_dot_1x1_leaves_other_convolutions_to_lax():
    from jax import lax

    from resflax.models.layers import conv_dot_1x1

    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    for shape, kw in [((3, 3, 4, 4), {}), ((1, 1, 2, 4), {"feature_group_count": 2}),
                      ((1, 1, 4, 4), {"rhs_dilation": (2, 2)})]:  # fmt: skip
        w = jax.random.normal(jax.random.key(1), shape)
        args = (x, w, (2, 2), ((0, 0), (0, 0)))
        np.testing.assert_array_equal(
            conv_dot_1x1(*args, dimension_numbers=dn, **kw),
            lax.conv_general_dilated(*args, dimension_numbers=dn, **kw),
        )


def test_conv_grad_auto_on_cpu_dot_or_canonical_for_scans(tiny_kwargs):
    assert ResNet(**tiny_kwargs, scan=True).resolved_conv_grad() == "canonical"
    assert ResNet(**tiny_kwargs).resolved_conv_grad() == "dot"
    assert ResNet(**tiny_kwargs, scan=True, conv_grad="lax").resolved_conv_grad() == "lax"
    with pytest.raises(ValueError, match="conv_grad='fft' is not one of"):
        ResNet(**tiny_kwargs, conv_grad="fft").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


@pytest.mark.parametrize("shape", [(2, 9, 8, 3), (1, 7, 7, 2), (2, 16, 16, 4)])
def test_max_pool_gradient_is_select_and_scatters_ties_included(shape):
    import flax.linen as nn

    from resflax.models.pool import max_pool

    # Rounded, ReLU'd values: many equal maxima in a window, as after a stem's ReLU.
    x = jnp.maximum(jnp.round(jax.random.normal(jax.random.key(0), shape) * 2), 0)
    ref = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_array_equal(max_pool(x, 3, 2, 1), ref)
    w = jax.random.normal(jax.random.key(1), ref.shape)

    def grad(pool):
        return jax.grad(lambda x: jnp.sum(pool(x) * w))(x)

    ours = grad(lambda x: max_pool(x, 3, 2, 1))
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

    from resflax.models.pool import max_pool

    x = jnp.maximum(jnp.round(jax.random.normal(jax.random.key(0), (2, 17, 13, 3)) * 2), 0)
    pads = ((padding, padding), (padding, padding))

    def grad(pool):
        return jax.grad(lambda x: jnp.sum(pool(x) ** 2))(x)

    ours = grad(lambda x: max_pool(x, window, stride, padding))
    theirs = grad(lambda x: nn.max_pool(x, (window, window), (stride, stride), padding=pads))
    np.testing.assert_array_equal(ours != 0, theirs != 0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_in_bfloat16_is_summed_in_float32_and_rounded_once():
    """Where windows overlap, an input receives up to four gradients: their sum is rounded to
    bf16 once (as select-and-scatter in float32, then rounded), not after every addition."""
    import flax.linen as nn

    from resflax.models.pool import max_pool

    x = jnp.maximum(jax.random.normal(jax.random.key(0), (2, 16, 16, 4)), 0).astype(jnp.bfloat16)
    w = jax.random.normal(jax.random.key(1), (2, 8, 8, 4)).astype(jnp.bfloat16)
    ours = jax.vjp(lambda x: max_pool(x, 3, 2, 1), x)[1](w)[0]
    assert ours.dtype == jnp.bfloat16
    f32 = lambda a: a.astype(jnp.float32)  # noqa: E731
    pool = lambda x: nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))  # noqa: E731
    want = jax.vjp(pool, f32(x))[1](f32(w))[0].astype(jnp.bfloat16)
    np.testing.assert_array_equal(f32(ours), f32(want))


def test_max_pool_refuses_bad_padding_and_layout():
    from resflax.models.pool import max_pool

    with pytest.raises(ValueError, match=r"padding=2 must be in \[0, window // 2 = 1\]"):
        max_pool(jnp.zeros((1, 8, 8, 1)), 3, 2, 2)
    with pytest.raises(ValueError, match=r"expects NHWC input, got shape \(8, 8\)"):
        max_pool(jnp.zeros((8, 8)), 3, 2, 1)
