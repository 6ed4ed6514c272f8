"""`Ops(stem_conv="space_to_depth")` and the stem that uses it: the same function and parameters
as the strided convolution it replaces, computed as a stride-1 convolution over 4x channels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resflax.models import ResNet
from resflax.ops import Ops
from resflax.ops.conv import conv_space_to_depth

NHWC = ("NHWC", "HWIO", "NHWC")


def _lax(x, w, strides, padding):
    return lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=NHWC, precision="highest"
    )


def _s2d(x, w, strides, padding):
    return conv_space_to_depth(x, w, strides, padding, dimension_numbers=NHWC, precision="highest")


@pytest.mark.parametrize(
    "hw, k, padding",
    [
        ((32, 32), 7, ((3, 3), (3, 3))),  # the ImageNet stem, small
        ((17, 18), 7, ((3, 2), (1, 3))),  # odd sizes, uneven padding
        ((15, 15), 3, ((1, 1), (1, 1))),  # the deep stem's first convolution
        ((20, 20), 4, ((0, 0), (0, 0))),  # an even kernel, unpadded
        ((9, 9), 5, ((0, 0), (0, 0))),  # padded input not a multiple of 2: cropped
    ],
)
def test_values_and_gradients_equal_the_strided_convolution(hw, k, padding):
    x = jax.random.normal(jax.random.key(0), (2, *hw, 3))
    w = jax.random.normal(jax.random.key(1), (k, k, 3, 5))
    ref, out = _lax(x, w, (2, 2), padding), _s2d(x, w, (2, 2), padding)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), ref.shape)
    want, got = (
        jax.vjp(lambda x, w, f=f: f(x, w, (2, 2), padding), x, w)[1](g) for f in (_lax, _s2d)
    )
    for a, b in zip(got, want, strict=True):  # the input's and the kernel's gradients
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_computed_as_a_stride_1_convolution_over_4x_channels():
    x, w = jnp.zeros((1, 32, 32, 3)), jnp.zeros((7, 7, 3, 8))
    eqns = jax.make_jaxpr(lambda x, w: _s2d(x, w, (2, 2), ((3, 3), (3, 3))))(x, w).eqns
    (conv,) = [e for e in eqns if e.primitive.name == "conv_general_dilated"]
    assert conv.params["window_strides"] == (1, 1)
    assert conv.invars[0].aval.shape == (1, 19, 19, 12)  # 16 + 4 - 1 blocks of 2x2x3
    assert conv.invars[1].aval.shape == (4, 4, 12, 8)  # 7x7 zero-padded to 8x8, as 4x4


@pytest.mark.parametrize(
    "strides, padding", [((1, 1), ((3, 3), (3, 3))), ((2, 2), "SAME"), ((3, 3), "VALID")]
)
def test_other_convolutions_go_to_lax_unchanged(strides, padding):
    x = jax.random.normal(jax.random.key(0), (1, 12, 12, 3))
    w = jax.random.normal(jax.random.key(1), (7, 7, 3, 4))
    np.testing.assert_array_equal(_s2d(x, w, strides, padding), _lax(x, w, strides, padding))


@pytest.mark.parametrize("stem", ["imagenet", "deep"])
def test_stem_same_parameters_and_logits(stem):
    kw = dict(
        stage_sizes=(1, 1), block="basic", widths=(4, 8), stem=stem, stem_width=4,
        num_classes=3,
    )  # fmt: skip
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    plain, s2d = ResNet(**kw), ResNet(**kw, ops=Ops(stem_conv="space_to_depth"))
    v = plain.init(jax.random.key(1), x)
    shapes = jax.tree_util.tree_map(jnp.shape, s2d.init(jax.random.key(1), x))
    assert shapes == jax.tree_util.tree_map(jnp.shape, v)  # converted weights load unchanged
    np.testing.assert_allclose(s2d.apply(v, x), plain.apply(v, x), rtol=1e-4, atol=1e-5)


def test_cifar_stem_unchanged(tiny_kwargs, images):
    # The CIFAR stem is stride 1: nothing to rearrange, the same program.
    s2d = Ops(stem_conv="space_to_depth")
    texts = [
        str(jax.make_jaxpr(lambda x, m=m: m.init(jax.random.key(0), x))(images))
        for m in (ResNet(**tiny_kwargs), ResNet(**tiny_kwargs, ops=s2d))
    ]
    assert texts[0] == texts[1]


def test_space_to_depth_is_plain_jax():
    """No custom rule: forward mode and export work through it."""
    x = jax.random.normal(jax.random.key(0), (1, 12, 12, 3))
    w = jax.random.normal(jax.random.key(1), (7, 7, 3, 4))
    pads = ((3, 3), (3, 3))
    _, t = jax.jvp(lambda x: _s2d(x, w, (2, 2), pads), (x,), (x,))
    np.testing.assert_allclose(t, _lax(x, w, (2, 2), pads), rtol=1e-4, atol=1e-4)
