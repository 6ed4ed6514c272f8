"""Scanned and remat'ed stages compute exactly what the unrolled stage computes."""

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
