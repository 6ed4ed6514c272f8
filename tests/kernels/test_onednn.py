"""oneDNN convolutions (resflax.kernels): values and gradients against lax, inside models."""

import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resflax.kernels import build, onednn
from resflax.models import ResNet, create_model, make_conv
from resflax.models.cost import cost, count_macs
from resflax.ops import Ops, auto, machine
from resflax.ops.conv import conv_onednn

NHWC = ("NHWC", "HWIO", "NHWC")
LINUX_X86 = (platform.system(), platform.machine()) == ("Linux", "x86_64")
needs_kernels = pytest.mark.skipif(
    not LINUX_X86, reason="oneDNN's library is published for Linux x86-64 only"
)
needs_bf16 = pytest.mark.skipif(
    not (LINUX_X86 and machine.native_bf16()), reason="this CPU has no bf16 instructions"
)


@needs_kernels
def test_make_install_built_the_kernels():
    # `make install` builds them wherever oneDNN is published; a silent fallback to XLA's
    # convolutions would hide a slower step.
    assert onednn.available(), f"{onednn.LIBRARY} missing or not loadable"
    assert onednn.version().startswith("3.")


@needs_kernels
def test_the_kernels_were_compiled_against_the_headers_of_the_library_they_load():
    # Headers from one oneDNN release and a library from another can disagree on the layout of
    # what the kernels pass (descriptors, enums) with nothing failing loudly.
    assert onednn.compiled_version() == onednn.version()


CASES = [
    # (n, h, w, ci, co, k, stride, padding)
    (2, 9, 7, 3, 5, 3, 1, ((1, 1), (1, 1))),
    (2, 10, 11, 4, 6, 3, 2, ((1, 1), (1, 1))),  # strided, odd width
    (1, 15, 15, 3, 8, 7, 2, ((3, 3), (3, 3))),  # the ImageNet stem
    (3, 8, 8, 5, 4, 3, 2, ((0, 1), (0, 1))),  # asymmetric ("SAME" at stride 2)
    (2, 6, 5, 4, 4, 1, 1, ((0, 0), (0, 0))),
]


def _lax(s, p):
    return lambda x, w: lax.conv_general_dilated(x, w, (s, s), p, dimension_numbers=NHWC)


@needs_kernels
@pytest.mark.parametrize("n,h,w,ci,co,k,s,p", CASES)
def test_values_and_gradients_match_lax(n, h, w, ci, co, k, s, p):
    x = jax.random.normal(jax.random.key(0), (n, h, w, ci))
    kernel = jax.random.normal(jax.random.key(1), (k, k, ci, co))
    ref, got = _lax(s, p), jax.jit(lambda x, w: onednn.conv(x, w, (s, s), p))
    np.testing.assert_allclose(got(x, kernel), ref(x, kernel), rtol=1e-5, atol=1e-5)

    def loss(conv):
        return lambda x, w: (conv(x, w) ** 2).sum()

    for a, b in zip(
        jax.grad(loss(got), (0, 1))(x, kernel), jax.grad(loss(ref), (0, 1))(x, kernel), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

    # Second order: the gradient rules are themselves differentiable (each direction is the
    # others' transpose).
    def grad_norm_grad(conv):
        return jax.grad(lambda x: (jax.grad(loss(conv), 1)(x, kernel) ** 2).sum())(x)

    np.testing.assert_allclose(grad_norm_grad(got), grad_norm_grad(ref), rtol=1e-3, atol=1e-3)


@needs_bf16
@pytest.mark.parametrize("n,h,w,ci,co,k,s,p", CASES[1:3] + CASES[4:])
def test_bfloat16_values_and_gradients_match_lax(n, h, w, ci, co, k, s, p):
    """bf16 operands and results, float32 accumulation: within one bf16 rounding of lax's
    float32 convolution of the same bf16 values (gradients: within two)."""
    x = jax.random.normal(jax.random.key(0), (n, h, w, ci), jnp.bfloat16)
    kernel = jax.random.normal(jax.random.key(1), (k, k, ci, co), jnp.bfloat16)
    ref, got = _lax(s, p), jax.jit(lambda x, w: onednn.conv(x, w, (s, s), p))
    y = got(x, kernel)
    assert y.dtype == jnp.bfloat16
    exact = ref(x.astype(jnp.float32), kernel.astype(jnp.float32))
    # One bf16 rounding of the float32 result: half an ulp of 8 bits.
    np.testing.assert_allclose(y.astype(jnp.float32), exact, rtol=2**-8, atol=1e-2)
    g = jax.random.normal(jax.random.key(2), y.shape, jnp.bfloat16)
    grads = jax.vjp(lambda x, w: onednn.conv(x, w, (s, s), p), x, kernel)[1](g)
    want = jax.vjp(ref, x.astype(jnp.float32), kernel.astype(jnp.float32))[1](g.astype(jnp.float32))
    for a, b in zip(grads, want, strict=True):
        assert a.dtype == jnp.bfloat16
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=2**-7, atol=scale * 2**-8)


@needs_kernels
def test_vmap_and_the_compiled_call():
    x = jax.random.normal(jax.random.key(0), (3, 6, 6, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 2))
    p = ((1, 1), (1, 1))
    per_image = jax.vmap(lambda xi: onednn.conv(xi[None], w, (1, 1), p)[0])(x)
    np.testing.assert_allclose(per_image, _lax(1, p)(x, w), rtol=1e-5, atol=1e-5)
    hlo = jax.jit(lambda x, w: onednn.conv(x, w, (1, 1), p)).lower(x, w).as_text()
    assert onednn.TARGET in hlo
    # Documented limit: reverse mode only (custom_vjp), as the other CPU forms.
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda x: onednn.conv(x, w, (1, 1), p), (x,), (x,))


@needs_kernels
def test_layers_route_kxk_float32_and_every_bfloat16_convolution(monkeypatch):
    def conv(x, w, strides, padding):
        return conv_onednn(x, w, strides, padding, dimension_numbers=NHWC)

    x = jnp.ones((2, 8, 8, 4))
    w3, w1 = jnp.ones((3, 3, 4, 4)), jnp.ones((1, 1, 4, 4))

    def targets(f, *args):
        return onednn.TARGET in jax.jit(f).lower(*args).as_text()

    assert targets(lambda x, w: conv(x, w, (2, 2), "SAME"), x, w3)
    # float32 1x1 convolutions stay matrix products (XLA:CPU's are fast); in bfloat16 they go
    # to oneDNN too (XLA:CPU's bf16 products are not); mixed dtypes and groups go to XLA.
    assert not targets(lambda x, w: conv(x, w, (1, 1), "VALID"), x, w1)
    bf16 = lambda a: a.astype(jnp.bfloat16)  # noqa: E731
    monkeypatch.setattr(machine, "native_bf16", lambda: True)
    assert targets(lambda x, w: conv(x, w, (1, 1), ((1, 1), (1, 1))), bf16(x), bf16(w3))
    assert targets(lambda x, w: conv(x, w, (2, 2), "VALID"), bf16(x), bf16(w1))
    assert not targets(lambda x, w: conv(x, w, (1, 1), "VALID"), bf16(x), w1)
    # Without bf16 instructions oneDNN would emulate them, slower than XLA: asked for anyway,
    # it is an error naming the alternatives (auto() picks "dot" there).
    monkeypatch.setattr(machine, "native_bf16", lambda: False)
    with pytest.raises(ValueError, match=r"needs a CPU with bf16 instructions.*conv=.dot."):
        conv(bf16(x), bf16(w3), (1, 1), ((1, 1), (1, 1)))
    assert auto(dtype="bfloat16", devices=1, backend="cpu").conv == "dot"
    got = conv(x, w3, (2, 2), "SAME")
    want = lax.conv_general_dilated(x, w3, (2, 2), "SAME", dimension_numbers=NHWC)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@needs_kernels
@pytest.mark.parametrize("scan", [False, True])
def test_resnet_with_onednn_matches_canonical(tiny_kwargs, scan):
    # Scanned stages run the kernels inside XLA's loops (the ImageNet stem's 7x7/2 and the
    # strided first block outside them).
    kwargs = dict(tiny_kwargs, stem="imagenet", scan=scan)
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
    models = {g: ResNet(**kwargs, ops=Ops(conv=g)) for g in ("canonical", "onednn")}
    variables = models["onednn"].init(jax.random.key(0), x)

    def loss(model):
        def f(params):
            logits, _ = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return (logits**2).mean(), logits

        return jax.jit(jax.grad(f, has_aux=True))

    (g_ref, l_ref), (g_dnn, l_dnn) = (loss(m)(variables["params"]) for m in models.values())
    np.testing.assert_allclose(l_dnn, l_ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_dnn), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5)


@needs_bf16
def test_bfloat16_resnet_runs_every_convolution_in_onednn(tiny_kwargs):
    """In bf16 the 1x1 convolutions go to oneDNN too. Against the float32 step, its loss and
    gradients are as close as XLA's bf16 step's (conv "dot"): measured, relative L2 error
    of all gradients 0.067 (oneDNN) and 0.077 (XLA)."""
    kwargs = dict(tiny_kwargs, stem="imagenet", block="bottleneck", dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
    models = {g: ResNet(**kwargs, ops=Ops(conv=g)) for g in ("dot", "onednn")}
    models["f32"] = ResNet(**{**kwargs, "dtype": jnp.float32}, ops=Ops(conv="dot"))
    variables = models["onednn"].init(jax.random.key(0), x)

    def grads(model):
        def f(params):
            logits, _ = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jax.nn.log_softmax(logits.astype(jnp.float32))[:, 0].sum()

        return jax.jit(jax.value_and_grad(f))

    text = grads(models["onednn"]).lower(variables["params"]).as_text()
    convs = sum(1 for p in jax.tree_util.tree_leaves_with_path(variables["params"])
                if p[1].ndim == 4)  # fmt: skip
    assert text.count(onednn.TARGET) >= 3 * convs - 1  # forward, both gradients (not the stem's dx)
    # No convolution left to XLA, and products only for the classifier (its forward pass and
    # gradients); conv "dot" leaves 17 convolutions and 32 products here.
    assert text.count("stablehlo.convolution") == 0 and text.count("dot_general") <= 3
    (l_xla, g_xla), (l_dnn, g_dnn), (l_f32, g_f32) = (
        grads(m)(variables["params"]) for m in models.values()
    )
    assert abs(l_dnn - l_f32) <= max(2 * abs(l_xla - l_f32), 1e-2 * abs(l_f32))

    def norm(tree):
        return float(
            jnp.sqrt(sum(jnp.sum(a.astype(jnp.float32) ** 2) for a in jax.tree.leaves(tree)))
        )

    def error(g):
        return norm(jax.tree.map(jnp.subtract, g, g_f32)) / norm(g_f32)

    assert error(g_dnn) <= 1.25 * error(g_xla) and error(g_dnn) < 0.15


@needs_kernels
def test_cost_counts_the_kernels_macs():
    # Every direction does the forward pass's multiply-adds; the zoo's exact counts and the
    # benchmarks' utilisation must not change with the convolutions' implementation.
    shape = (2, 64, 64, 3)
    want = cost(create_model("resnet18"), shape).macs
    assert cost(create_model("resnet18", ops=Ops(conv="onednn")), shape).macs == want
    x = jnp.ones((2, 9, 9, 4))
    w = jnp.ones((3, 3, 4, 6))
    p = ((1, 1), (1, 1))
    fwd = count_macs(lambda x, w: onednn.conv(x, w, (2, 2), p), x, w)
    assert fwd == 2 * 5 * 5 * 3 * 3 * 4 * 6
    grads = count_macs(jax.grad(lambda x, w: onednn.conv(x, w, (2, 2), p).sum(), (0, 1)), x, w)
    assert grads == 3 * fwd


def test_auto_uses_the_kernels_on_one_cpu_device(monkeypatch):
    # The tests run with 8 devices: a sharded batch, which XLA cannot split for the kernels.
    assert auto().conv == "dot" and auto(scan=True).conv == "canonical"
    monkeypatch.setattr(onednn, "available", lambda: True)
    assert auto(devices=1).conv == "onednn"
    assert auto(devices=1, backend="gpu").conv == "lax"
    monkeypatch.setattr(onednn, "available", lambda: False)
    assert auto(devices=1).conv == "dot"


def test_onednn_unbuilt_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(onednn, "available", lambda: False)
    with pytest.raises(ValueError, match=r"ops.conv='onednn'.*make install"):
        make_conv(ops=Ops(conv="onednn"))


def test_build_says_what_is_missing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(build, "prefix_paths", lambda: (tmp_path / "include", tmp_path / "lib"))
    assert "onednn-cpu-gomp" in build.missing()
    assert build.main(["--out", str(tmp_path / "k.so")]) == 0
    assert "not built" in capsys.readouterr().out
    assert not (tmp_path / "k.so").exists()
