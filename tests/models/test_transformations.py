"""Every registered model, built with default arguments, is plain JAX: forward mode, linearize,
Hessian-vector products, vmap, export and sharding all work, and agree with each other.

Every registered model (`list_models()` drives the parametrisation, so a new one is covered
without touching this file) is traced through each transformation, exported, serialised and
deserialised, and lowered with a sharded batch: a custom VJP or an FFI call anywhere fails
there. The numbers (jvp against vjp, linearize against jvp, the Hessian's symmetry, vmap
against a loop, exported and sharded outputs against plain ones) are checked, compiled, on
models that between them hold every kind of stem, block and shortcut.

Models are shrunk to narrow widths at 32x32 (the same stem, block kind, shortcut,
squeeze-excite, groups and head: the same operations) to keep the suite's time.

Variables always enter jitted functions as arguments: jaxlib 0.10.2's XLA:CPU computed
garbage (NaN, zeros, 1e36, differing run to run) for some of these models when the same
variables were closed over as constants (seen with wrn28_10, 8x32x32 inputs).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resflax.models import create_model, get_entry, list_models
from resflax.models.cost import walk_eqns
from resflax.ops import Ops, auto

# Primitives that a plain-JAX model must not contain: custom derivatives (a custom_vjp breaks
# forward mode) and foreign calls (jax.export refuses them).
FORBIDDEN = {"custom_vjp_call", "custom_vjp_call_jaxpr", "ffi_call", "custom_call"}


# Compiled, to keep the suite's time: the CIFAR stem with option-A shortcuts and basic blocks;
# the deep stem, max-pool, average-pool shortcut and bottlenecks; the ImageNet stem with
# pre-activation basic blocks and projections. (Every model is traced above.)
KINDS = ["resnet20", "resnet50d", "preact_resnet18"]


def shrunk(name: str, blocks: int = 2, **overrides):
    entry = get_entry(name)
    n = len(entry.config["stage_sizes"])
    return create_model(
        name,
        stage_sizes=tuple(min(s, blocks) for s in entry.config["stage_sizes"]),
        widths=tuple(16 * 2 ** min(i, 1) for i in range(n)),
        num_classes=10,
        **overrides,
    )


def setup(name: str, batch: int = 2, **overrides):
    model = shrunk(name, blocks=1, **overrides)
    x = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    return model, variables, x


def forward(model, variables, train: bool):
    """x (and optionally params) -> logits; call it inside a jitted function that received
    `variables` as an argument (see the module docstring)."""

    def f(x, params=None):
        v = {**variables, "params": params if params is not None else variables["params"]}
        if train:
            return model.apply(v, x, train=True, mutable=["batch_stats"])[0]
        return model.apply(v, x)

    return f


def _apply(model, train: bool):
    def f(variables, x):
        if train:
            return model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
        return model.apply(variables, x)

    return f


@pytest.mark.parametrize("name", list_models())
def test_every_transformation_traces_and_exports(name):
    """Traced from shapes alone (no compilation): forward mode, linearize, a Hessian-vector
    product, vmap, export through serialisation, and a batch sharded over 8 devices."""
    model = shrunk(name, blocks=1)
    assert model.ops == Ops() and model.ops.transformation_safe
    x = jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32)
    v = jax.eval_shape(model.init, jax.random.key(0), x)
    for train in (False, True):
        f = _apply(model, train)
        traced = {
            "forward": jax.make_jaxpr(f)(v, x),
            "jvp": jax.make_jaxpr(lambda v, x, f=f: jax.jvp(lambda x: f(v, x), (x,), (x,)))(v, x),
            "linearize": jax.make_jaxpr(lambda v, x, f=f: jax.linearize(lambda x: f(v, x), x)[0])(
                v, x
            ),
            "vmap": jax.make_jaxpr(jax.vmap(f, in_axes=(None, 0)))(
                v, jax.ShapeDtypeStruct((2, *x.shape), x.dtype)
            ),
        }
        for what, jaxpr in traced.items():
            used = {eqn.primitive.name for eqn in walk_eqns(jaxpr)}
            assert not used & FORBIDDEN, f"{name} {what} (train={train}) uses {used & FORBIDDEN}"

    def loss(params, v, x):
        return _apply(model, True)({**v, "params": params}, x).sum()

    def hvp(params, v, x):
        return jax.jvp(lambda p: jax.grad(loss)(p, v, x), (params,), (params,))[1]

    jax.make_jaxpr(hvp)(v["params"], v, x)
    exported = jax.export.export(jax.jit(_apply(model, False)))(v, x)
    restored = jax.export.deserialize(exported.serialize())
    assert restored.out_avals == exported.out_avals
    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
    sharded = jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=NamedSharding(mesh, PartitionSpec("batch"))
    )
    assert "custom_call_target" not in jax.jit(_apply(model, True)).lower(v, sharded).as_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", KINDS)
def test_forward_mode_linearize_hvp_and_vmap(name):
    """In one compiled program per model: jvp against vjp (<J v, u> = <v, Jᵀ u>), linearize
    against jvp, both in eval and train mode; a Hessian-vector product as jvp of grad, checked
    for symmetry (<u, H v> = <v, H u>); vmap over a leading axis against a loop."""
    # Batch 4: BatchNorm over 2 examples at the last stage's single position is ill-conditioned
    # enough to amplify float32 rounding past the tolerance.
    model, variables, x = setup(name, batch=4)
    v_in = jax.random.normal(jax.random.key(2), x.shape)
    u_out = jax.random.normal(jax.random.key(3), (x.shape[0], 10))
    params = variables["params"]
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(4), 2 * len(leaves))
    dirs = [
        jax.tree_util.tree_unflatten(
            treedef, [jax.random.normal(k, a.shape) for k, a in zip(ks, leaves, strict=True)]
        )
        for ks in (keys[: len(leaves)], keys[len(leaves) :])
    ]

    @jax.jit
    def checks(variables, x, v_in, u_out, d1, d2):
        params = variables["params"]
        out = {}
        for train in ("eval", "train"):
            f = forward(model, variables, train == "train")
            _, jv = jax.jvp(f, (x,), (v_in,))
            _, pullback = jax.vjp(f, x)
            (ju,) = pullback(u_out)
            _, lin = jax.linearize(f, x)
            # The adjoint identity's two sides, and the scale they are rounded at.
            scale = jnp.linalg.norm(jv) * jnp.linalg.norm(u_out)
            out[train] = (jnp.vdot(jv, u_out), jnp.vdot(v_in, ju), scale, jv, lin(v_in))

        def loss(p):
            return jnp.sum(jax.nn.log_softmax(forward(model, variables, True)(x, p))[:, 0])

        def hvp(d):
            return jax.jvp(jax.grad(loss), (params,), (d,))[1]

        def dot(a, b):
            return sum(
                jnp.vdot(p, q) for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
            )

        out["hvp"] = (dot(d1, hvp(d2)), dot(d2, hvp(d1)))
        f_eval = forward(model, variables, False)
        xs = jnp.stack([x, x[::-1]])
        out["vmap"] = (jax.vmap(f_eval)(xs), jnp.stack([f_eval(xs[0]), f_eval(xs[1])]))
        return out

    out = checks(variables, x, v_in, u_out, *dirs)
    for train in ("eval", "train"):
        jvu, vju, scale, jv, lin = out[train]
        assert abs(float(jvu) - float(vju)) < 1e-5 * float(scale), (name, train, jvu, vju, scale)
        np.testing.assert_allclose(lin, jv, rtol=1e-5, atol=1e-5 * float(np.abs(jv).max()))
        assert float(np.abs(jv).max()) > 0
    a, b = out["hvp"]
    assert abs(float(a) - float(b)) <= 1e-3 * max(abs(float(a)), abs(float(b)), 1e-3), (name, a, b)
    batched, looped = out["vmap"]
    np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", KINDS)
def test_export_round_trip_and_sharded_batch(name):
    """jax.export -> serialize -> deserialize gives the same logits (eval); jit over a batch
    sharded across 8 devices gives the same logits and batch statistics as one device."""
    model, variables, x = setup(name, batch=8)
    f = jax.jit(_apply(model, False))
    want = f(variables, x)
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (variables, x))
    exported = jax.export.export(f)(*shapes)
    restored = jax.export.deserialize(exported.serialize())
    np.testing.assert_allclose(restored.call(variables, x), want, rtol=1e-5, atol=1e-5)

    def train(v, x):
        return model.apply(v, x, train=True, mutable=["batch_stats"])

    mesh = Mesh(np.array(jax.devices()[:8]), ("batch",))
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("batch")))
    one = jax.jit(train)(variables, x)
    eight = jax.jit(train)(variables, sharded)
    np.testing.assert_allclose(eight[0], one[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(eight[1]), jax.tree.leaves(one[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_fast_policy_is_one_argument_away_and_computes_the_same():
    """`ops=auto()` changes how, not what: same variables, same logits and gradients (to float
    rounding), and forward mode refused, which is why it is not the default."""
    # Batch 8: over 2 examples the last stage's BatchNorm amplifies rounding to 1% (measured).
    plain_model, variables, x = setup("resnet18", batch=8)
    fast_model = shrunk("resnet18", blocks=1, ops=auto())
    assert not fast_model.ops.transformation_safe
    assert jax.tree.structure(fast_model.init(jax.random.key(0), x)) == jax.tree.structure(
        variables
    )

    def loss(p, v, model):
        return jnp.sum(forward(model, v, True)(x, p) ** 2)

    want, got = (
        jax.jit(jax.grad(loss), static_argnums=2)(variables["params"], variables, m)
        for m in (plain_model, fast_model)
    )
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()) + 1e-7)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: fast_model.apply(variables, x), (x,), (x,))
