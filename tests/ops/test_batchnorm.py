"""`Ops(norm="closed")`: BatchNorm's closed-form backward pass gives the same values, statistics
and gradients as differentiating Flax's forward pass (the default), with fewer sums over the
batch."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resflax.models import BatchNorm, ResNet, make_norm
from resflax.models.cost import walk_eqns
from resflax.models.norms import norm_act
from resflax.ops import Ops, auto
from resflax.ops.act import relu_stored

CLOSED, UNFUSED, PLAIN = Ops(norm="closed", fuse_relu=True), Ops(norm="closed"), Ops()
GRADS = {"closed": CLOSED, "autodiff": PLAIN}

RTOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _inputs(shape=(4, 5, 6, 8)):
    return jax.random.normal(jax.random.key(1), shape) * 2.0 + 1.0


def _value_and_grads(norm, x, dtype=jnp.float32, axis_name=None):
    """Loss, output, updated statistics and the gradients of a loss that is not linear in y."""
    bn = norm()
    v = bn.init(jax.random.key(0), x[0] if axis_name else x)
    params = jax.tree.map(lambda a: a + jnp.linspace(-0.3, 0.4, a.size), v["params"])
    w = jax.random.normal(jax.random.key(2), x.shape[-1:])

    def loss(params, x):
        y, upd = bn.apply({"params": params, "batch_stats": v["batch_stats"]}, x,
                          mutable=["batch_stats"])  # fmt: skip
        weights = w.reshape((1,) * (y.ndim - 1) + w.shape)
        return jnp.sum(jnp.sin(y.astype(jnp.float32)) * weights), (y, upd)

    f = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    if axis_name:
        f = jax.vmap(f, in_axes=(None, 0), axis_name=axis_name)
    return jax.jit(f)(params, x.astype(dtype))


def _assert_close(a, b, dtype=jnp.float32):
    rtol = RTOL[dtype]

    def close(u, w):
        u, w = np.asarray(u, np.float32), np.asarray(w, np.float32)
        np.testing.assert_allclose(u, w, rtol=rtol, atol=rtol * max(1.0, np.abs(w).max()))

    jax.tree.map(close, a, b)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("running_var", ["biased", "unbiased"])
def test_closed_form_matches_autodiff(dtype, running_var):
    x = _inputs()
    norms = [make_norm(train=True, dtype=dtype, ops=GRADS[g], running_var=running_var)
             for g in ("closed", "autodiff")]  # fmt: skip
    got, want = (_value_and_grads(norm, x, dtype) for norm in norms)
    _assert_close(got, want, dtype)
    # The forward pass is Flax's own arithmetic: bit-identical outputs and statistics.
    np.testing.assert_array_equal(np.asarray(got[0][1][0], np.float32),
                                  np.asarray(want[0][1][0], np.float32))  # fmt: skip


def test_closed_form_matches_autodiff_far_from_zero_mean():
    """Activations whose mean is 20 standard deviations: the closed form's sums of g and g x
    lose digits to cancellation as the centred form's rounded mean does."""
    x = jax.random.normal(jax.random.key(3), (8, 6, 6, 8)) + 20.0
    got, want = (
        _value_and_grads(make_norm(train=True, ops=GRADS[g]), x) for g in ("closed", "autodiff")
    )
    _assert_close(got[0], want[0])
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * np.abs(b).max())


def test_constant_channel_clipped_variance():
    """A constant channel's variance rounds to zero or below and is clipped; its true input
    and scale gradients are zero. Both backward passes give rounding noise amplified by
    rsqrt(eps) ~ 316 there (sum(g x̂) with x̂ = (x - mean) * 316 and x - mean a rounding
    error), each its own noise; every other channel matches."""
    x = _inputs().at[..., 3].set(0.7)
    got, want = (
        _value_and_grads(make_norm(train=True, ops=GRADS[g]), x) for g in ("closed", "autodiff")
    )
    _assert_close(got[0], want[0])
    keep = np.arange(8) != 3
    (g_params, g_x), (w_params, w_x) = got[1], want[1]
    _assert_close(g_params["bias"], w_params["bias"])
    _assert_close(g_params["scale"][keep], w_params["scale"][keep])
    _assert_close(g_x[..., keep], w_x[..., keep])
    scale_grads = np.abs(np.asarray(w_params["scale"][keep]))
    assert abs(float(g_params["scale"][3])) < 0.01 * scale_grads.max()
    assert np.abs(np.asarray(g_x[..., 3])).max() < 1e-3


def test_closed_form_matches_autodiff_when_synchronised():
    """With axis_name the statistics are over the mapped batch; the input's gradient is the
    whole mapped loss's and the parameters' is each shard's own, as autodiff of psum gives."""
    x = _inputs((2, 2, 5, 6, 8))
    got, want = (
        _value_and_grads(
            make_norm(train=True, ops=GRADS[g], axis_name="batch"), x, axis_name="batch"
        )
        for g in ("closed", "autodiff")
    )
    _assert_close(got, want)
    (_, (_, upd)), (g_params, _) = got
    # Shards see the same statistics, and different parameter gradients (their own share).
    np.testing.assert_allclose(upd["batch_stats"]["mean"][0], upd["batch_stats"]["mean"][1])
    assert not np.allclose(g_params["scale"][0], g_params["scale"][1])


def _batch_sums(norm, x) -> int:
    """Sums over the batch (reduce_sum with an activation-sized operand) in the gradient."""
    bn = norm()
    v = bn.init(jax.random.key(0), x)

    def loss(params, x):
        y, _ = bn.apply({**v, "params": params}, x, mutable=["batch_stats"])
        return jnp.vdot(jnp.sin(y), x)  # a dot, not one more sum

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(v["params"], x)
    big = x.size
    count = 0
    for eqn in walk_eqns(jaxpr):
        if eqn.primitive.name == "reduce_sum" and eqn.invars[0].aval.size >= big:
            count += 1
    return count


def test_closed_form_sums_twice_forward_and_twice_backward():
    x = _inputs()
    closed = _batch_sums(make_norm(train=True, ops=CLOSED), x)
    autodiff = _batch_sums(make_norm(train=True), x)
    assert closed == 4  # sum(x), sum(x^2); sum(g), sum(g * (x - mean))
    assert autodiff > closed


def test_cases_outside_the_closed_form_run_flax():
    x = _inputs()
    mask = jnp.ones(x.shape, bool).at[0].set(False)
    for kwargs, call in (({"use_bias": False}, {}), ({"axis": 1}, {}), ({}, {"mask": mask})):
        outs = []
        for g in ("closed", "autodiff"):
            bn = BatchNorm(use_running_average=False, ops=GRADS[g], **kwargs)
            v = bn.init(jax.random.key(0), x)
            outs.append(bn.apply(v, x, mutable=["batch_stats"], **call))
        jax.tree.map(np.testing.assert_array_equal, *outs)
    # Same variables as Flax's BatchNorm, so checkpoints and converted weights interchange.
    ours = BatchNorm(use_running_average=False, ops=CLOSED).init(jax.random.key(0), x)
    flax_ = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
    assert jax.tree.structure(ours) == jax.tree.structure(flax_)


def test_bad_norm_is_named():
    with pytest.raises(ValueError, match=r"ops\.norm='fused' is not one of"):
        Ops(norm="fused")


@pytest.mark.parametrize("extra", [{}, {"scan": True, "remat": True}])
def test_resnet_gradients_match_autodiff(tiny_kwargs, train_grads, extra):
    """Whole network (stem, blocks, projection shortcuts; scanned and rematerialised stages);
    Flax's form is the default, and auto() picks the closed form."""
    assert ResNet(**tiny_kwargs).ops.norm == "flax" and auto().norm == "closed"
    _assert_close(*(train_grads(ResNet(**tiny_kwargs, **extra, ops=GRADS[g]))
                    for g in ("closed", "autodiff")))  # fmt: skip


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("act", ["relu", "relu_stored"])
def test_relu_fused_into_the_closed_form_matches_relu_after(dtype, act):
    """`BatchNorm(act="relu")` under fuse_relu: the backward pass masks the gradient from x
    itself; the values, statistics and gradients are those of the ReLU applied after, and of
    autodiff."""
    x = _inputs()
    fused, after, autodiff = (
        _value_and_grads(
            partial(make_norm(train=True, dtype=dtype, ops=ops.replace(act=act)), act="relu"),
            x, dtype,
        )
        for ops in (CLOSED, UNFUSED, PLAIN)
    )  # fmt: skip
    _assert_close(fused, after, jnp.float32)  # same arithmetic: to float32 rounding
    _assert_close(fused, autodiff, dtype)
    y = np.asarray(fused[0][1][0], np.float32)
    assert (y == 0).mean() > 0.2 and (y > 0).mean() > 0.2  # the mask is exercised
    # Still two sums over the batch forward and two backward.
    assert _batch_sums(partial(make_norm(train=True, ops=CLOSED), act="relu"), x) == 4


def test_relu_fused_under_a_mapped_axis():
    x = _inputs((2, 4, 5, 6, 8))
    got, want = (
        _value_and_grads(
            partial(make_norm(train=True, axis_name="batch", ops=ops), act="relu"), x,
            axis_name="batch",
        )
        for ops in (CLOSED, UNFUSED)
    )  # fmt: skip
    _assert_close(got, want)


@pytest.mark.parametrize("extra", [{}, {"scan": True, "remat": True}, {"preact": True}])
def test_resnet_with_relu_fused_matches_unfused(tiny_kwargs, train_grads, extra, monkeypatch):
    """Every BatchNorm followed by a ReLU takes it in (stem and first norm of each basic block;
    not the second, whose ReLU follows the residual add): the same logits and gradients."""
    from resflax.ops import batchnorm

    fused_flags = []
    forward = batchnorm._bn_forward

    def spy(*args):
        fused_flags.append(args[-1])
        return forward(*args)

    monkeypatch.setattr(batchnorm, "_bn_forward", spy)
    results = []
    for fuse in (True, False):
        fused_flags.clear()
        results.append(train_grads(ResNet(**tiny_kwargs, **extra, ops=CLOSED if fuse else UNFUSED)))
        if fuse and not extra:
            # cifar stem + 4 basic blocks: 1 + 4 fused; 4 second norms + 1 projection not.
            assert sorted(fused_flags) == [False] * 5 + [True] * 5
        if not fuse:
            assert not any(fused_flags)
    _assert_close(*results)
    assert auto().fuse_relu is True


def test_norm_act_hands_only_relu_to_batch_norm():
    x = _inputs()
    bn, gn = make_norm(train=True), make_norm("group", groups=2)
    assert norm_act(bn, nn.relu).act == "relu"
    assert norm_act(bn, relu_stored).act == "relu"
    assert not isinstance(norm_act(bn, nn.silu), nn.Module)
    assert not isinstance(norm_act(gn, nn.relu), nn.Module)
    for norm, act in ((bn, nn.relu), (bn, nn.silu), (gn, nn.relu)):

        class Wrap(nn.Module):
            @nn.compact
            def __call__(self, x, norm=norm, act=act):
                return norm_act(norm, act, name="n")(x)

        v = Wrap().init(jax.random.key(0), x)
        got = Wrap().apply(v, x, mutable=["batch_stats"])[0]
        want = act(norm().apply({k: w["n"] for k, w in v.items()}, x, mutable=["batch_stats"])[0])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_bad_act_is_named():
    with pytest.raises(ValueError, match="BatchNorm act='gelu' is not one of"):
        BatchNorm(use_running_average=False, act="gelu").init(jax.random.key(0), _inputs())
