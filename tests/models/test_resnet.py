"""Shapes, purity under jax transformations, precision, normalisation and the block knobs."""

import re
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resflax.models import BasicBlock, ResNet, create_model, make_conv, make_norm
from resflax.models.layers import shortcut


def _init(model, x, **kw):
    return model.init(jax.random.key(0), x, **kw)


def _shapes(model, x):
    return jax.eval_shape(lambda x: _init(model, x), x)


def test_resnet50_shapes_and_features():
    model = create_model("resnet50", num_classes=7)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    variables = _shapes(model, x)
    logits, feats = jax.eval_shape(
        lambda v, x: model.apply(v, x, return_features=True), variables, x
    )
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    expected = {
        "stem": (2, 56, 56, 64),
        "stage1": (2, 56, 56, 256),
        "stage2": (2, 28, 28, 512),
        "stage3": (2, 14, 14, 1024),
        "stage4": (2, 7, 7, 2048),
        "pre_logits": (2, 2048),
    }
    assert {k: v.shape for k, v in feats.items()} == expected


def test_cifar_and_blog_feature_shapes():
    for name, expected in [
        ("resnet20", {"stem": 32, "stage1": 32, "stage2": 16, "stage3": 8}),
        ("blog_resnet", {"stem": 56, "stage1": 56, "stage2": 28, "stage3": 14, "stage4": 7}),
    ]:
        model = create_model(name)
        r = 32 if name == "resnet20" else 224
        x = jax.ShapeDtypeStruct((1, r, r, 3), jnp.float32)
        v = _shapes(model, x)
        _, feats = jax.eval_shape(partial(model.apply, return_features=True), v, x)
        assert {k: feats[k].shape[1] for k in expected} == expected
    assert feats["pre_logits"].shape == (1, 1024)  # blog: after the 2048 and 1024 dense layers


def _conv1_spatial(name):
    model = create_model(name)
    x = jnp.zeros((1, 64, 64, 3))
    variables = _shapes(model, x)
    _, state = jax.eval_shape(
        lambda v: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        variables,
    )
    inter = state["intermediates"]["stage2"]["block0"]
    return inter["conv1"]["__call__"][0].shape[1], inter["conv2"]["__call__"][0].shape[1]


def test_stride_placement_v1_vs_v15():
    # 64x64 input -> 16x16 entering stage 2. v1 strides the first 1x1, v1.5 the 3x3.
    assert _conv1_spatial("resnet50_v1") == (8, 8)
    assert _conv1_spatial("resnet50") == (16, 8)
    # The parameters are the same shapes either way: only where the stride sits changes.
    a = _shapes(create_model("resnet50"), jnp.zeros((1, 64, 64, 3)))
    b = _shapes(create_model("resnet50_v1"), jnp.zeros((1, 64, 64, 3)))
    assert jax.tree_util.tree_map(lambda t: t.shape, a) == jax.tree_util.tree_map(
        lambda t: t.shape, b
    )


def test_parameter_names_are_stable():
    v = _shapes(create_model("resnet50d"), jnp.zeros((1, 64, 64, 3)))
    p = v["params"]
    assert set(p) == {"stem", "stage1", "stage2", "stage3", "stage4", "head"}
    assert set(p["stem"]) == {"conv1", "norm1", "conv2", "norm2", "conv3", "norm3"}
    assert set(p["stage2"]["block0"]) == {
        "conv1", "norm1", "conv2", "norm2", "conv3", "norm3", "proj_conv", "proj_norm",
    }  # fmt: skip
    assert set(p["stage2"]["block1"]) == {"conv1", "norm1", "conv2", "norm2", "conv3", "norm3"}
    assert set(p["head"]) == {"fc"}
    assert p["stage1"]["block0"]["conv2"]["kernel"].shape == (3, 3, 64, 64)  # HWIO
    se = _shapes(create_model("seresnet50"), jnp.zeros((1, 64, 64, 3)))
    assert se["params"]["stage4"]["block0"]["se"]["fc1"]["kernel"].shape == (2048, 128)


def test_grouped_and_wide_inner_widths():
    x = jnp.zeros((1, 64, 64, 3))
    rx = _shapes(create_model("resnext50_32x4d"), x)["params"]
    assert rx["stage1"]["block0"]["conv2"]["kernel"].shape == (3, 3, 4, 128)  # 32 groups x 4
    wd = _shapes(create_model("wide_resnet50_2"), x)["params"]
    assert wd["stage1"]["block0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    assert wd["stage1"]["block0"]["conv3"]["kernel"].shape == (1, 1, 128, 256)


def test_eval_is_deterministic_and_jit_vmap_grad_work(tiny_kwargs, images):
    model = ResNet(**tiny_kwargs)
    variables = _init(model, images)
    eager = model.apply(variables, images)
    assert eager.shape == (4, 5)
    np.testing.assert_array_equal(eager, model.apply(variables, images))
    jitted = jax.jit(model.apply)
    np.testing.assert_allclose(jitted(variables, images), eager, rtol=1e-5, atol=1e-6)
    per_image = jax.vmap(lambda im: model.apply(variables, im[None])[0])(images)
    np.testing.assert_allclose(per_image, eager, rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda x: model.apply(variables, x).sum())(images)
    assert g.shape == images.shape and bool(jnp.all(jnp.isfinite(g)))
    assert float(jnp.abs(g).sum()) > 0


def test_second_call_does_not_recompile(tiny_kwargs, images):
    model = ResNet(**tiny_kwargs)
    variables = _init(model, images)
    f = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    f(variables, images)
    f(variables, images + 1.0)
    assert f._cache_size() == 1


def test_train_mode_updates_batch_stats(tiny_kwargs, images):
    model = ResNet(**tiny_kwargs)
    variables = _init(model, images)
    logits, updates = model.apply(variables, images * 3 + 1, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 5)
    before = variables["batch_stats"]["stem"]["norm"]
    after = updates["batch_stats"]["stem"]["norm"]
    # Flax momentum 0.9 == torch momentum 0.1: new = 0.9 * old + 0.1 * batch statistic.
    x = model.apply(
        variables,
        images * 3 + 1,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda m, _: m.name == "conv" and m.parent.name == "stem",
    )
    stem_out = x[1]["intermediates"]["stem"]["conv"]["__call__"][0]
    np.testing.assert_allclose(
        after["mean"], 0.9 * before["mean"] + 0.1 * stem_out.mean((0, 1, 2)), rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(after["var"], before["var"])


def test_bfloat16_compute_keeps_float32_state(tiny_kwargs, images):
    model = ResNet(**tiny_kwargs, dtype="bfloat16")
    variables = _init(model, images)
    leaves = jax.tree_util.tree_leaves(variables)
    assert all(a.dtype == jnp.float32 for a in leaves)
    (logits, feats), updates = model.apply(
        variables, images, train=True, return_features=True, mutable=["batch_stats"]
    )
    assert logits.dtype == jnp.float32
    assert all(feats[k].dtype == jnp.bfloat16 for k in ("stem", "stage1", "stage2"))
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(updates))
    f32 = ResNet(**tiny_kwargs).apply(variables, images)
    np.testing.assert_allclose(model.apply(variables, images), f32, rtol=0.1, atol=0.1)


def test_group_norm(tiny_kwargs, images):
    model = ResNet(**tiny_kwargs, norm="group", norm_groups=2)
    variables = _init(model, images)
    assert "batch_stats" not in variables
    assert "scale" in variables["params"]["stem"]["norm"]
    assert model.apply(variables, images, train=True).shape == (4, 5)


def test_sync_batchnorm_under_pmap_matches_full_batch(tiny_kwargs):
    n = jax.local_device_count()
    assert n == 8, "tests run with 8 fake CPU devices"
    x = jax.random.normal(jax.random.key(3), (n, 8, 8, 3))
    plain = ResNet(**tiny_kwargs)
    variables = _init(plain, x)
    full, full_stats = plain.apply(variables, x, train=True, mutable=["batch_stats"])
    synced = ResNet(**tiny_kwargs, axis_name="batch")
    per_device, stats = jax.pmap(
        lambda v, xi: synced.apply(v, xi, train=True, mutable=["batch_stats"]),
        axis_name="batch",
        in_axes=(None, 0),
    )(variables, x[:, None])
    np.testing.assert_allclose(per_device[:, 0], full, rtol=1e-4, atol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-6),
        stats, full_stats,
    )  # fmt: skip


def test_zero_init_last_is_switchable():
    x = jnp.zeros((1, 32, 32, 3))
    on = _init(create_model("resnet20"), x)["params"]["stage1"]["block0"]["norm2"]["scale"]
    off = _init(create_model("resnet20", zero_init_last=False), x)["params"]["stage1"]["block0"]
    assert float(jnp.abs(on).max()) == 0.0
    assert float(off["norm2"]["scale"].min()) == 1.0
    pre = _init(create_model("preact_resnet110"), x)["params"]["stage1"]["block0"]["conv2"]
    assert float(jnp.abs(pre["kernel"]).max()) == 0.0


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 4, 2)

    class Holder(nn.Module):
        @nn.compact
        def __call__(self, x):
            return shortcut(x, features=6, strides=2, kind="A", conv=make_conv(), norm=None)

    y = Holder().apply({}, x)
    assert y.shape == (2, 2, 2, 6)
    np.testing.assert_array_equal(y[..., 2:4], x[:, ::2, ::2, :])
    assert float(jnp.abs(y[..., :2]).sum() + jnp.abs(y[..., 4:]).sum()) == 0.0


def test_avg_down_shortcut_pools_before_projecting():
    v = _shapes(create_model("resnet50d"), jnp.zeros((1, 64, 64, 3)))
    proj = v["params"]["stage2"]["block0"]["proj_conv"]["kernel"]
    assert proj.shape == (1, 1, 256, 512)
    model = create_model("resnet50d")
    _, state = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((1, 64, 64, 3)), capture_intermediates=True,
                              mutable=["intermediates"]), v,
    )  # fmt: skip
    # The projection itself is stride 1: pooling already halved the resolution.
    out = state["intermediates"]["stage2"]["block0"]["proj_conv"]["__call__"][0]
    assert out.shape == (1, 8, 8, 512)


def test_drop_path_rates_rise_linearly_and_apply_only_in_training(tiny_kwargs, images):
    # zero_init_last=False: a zero-initialised branch would make dropping it invisible.
    model = ResNet(**tiny_kwargs, drop_path_rate=0.5, zero_init_last=False)
    variables = _init(model, images)
    eval_out = model.apply(variables, images)
    plain = ResNet(**tiny_kwargs, zero_init_last=False)
    np.testing.assert_array_equal(eval_out, plain.apply(variables, images))
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, images, train=True, mutable=["batch_stats"])
    outs = {
        float(
            model.apply(
                variables,
                images,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(s)},
            )[0].sum()
        )
        for s in range(4)
    }
    assert len(outs) > 1
    stages = [s.drop_path_rates for s in _stages(model, images)]
    assert stages == [(0.125,), (0.25, 0.375, 0.5)]


def _stages(model, images):
    found = []

    def spy(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and type(context.module).__name__ == "Stage":
            found.append(context.module)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        model.init(jax.random.key(0), images)
    return found


def test_block_reused_in_user_module(images):
    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            conv, norm = make_conv(), make_norm(train=train)
            x = conv(8, (3, 3))(x)
            x = BasicBlock(8, conv=conv, norm=norm, act=nn.relu)(x)
            x = BasicBlock(16, conv=conv, norm=norm, act=nn.relu, strides=2)(x)
            return x.mean((1, 2))

    v = Tiny().init(jax.random.key(0), images)
    assert Tiny().apply(v, images).shape == (4, 16)


def test_readme_example_runs():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    example = [b for b in blocks if "# reuse-example" in b]
    assert example, "README lost its module-reuse example"
    namespace: dict = {}
    exec(example[0], namespace)
    assert namespace["logits"].shape == (8, 10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shortcut="E"), "shortcut='E'"),
        (dict(stem="vgg"), "stem='vgg'"),
        (dict(norm="layer"), "norm='layer'"),
        (dict(block="dense"), "block='dense'"),
        (dict(widths=(4,)), "widths=\\(4,\\)"),
        (dict(drop_path_rate=1.0), "drop_path_rate=1.0"),
        (dict(stride_on="5x5", block="bottleneck"), "stride_on='5x5'"),
        (dict(groups=2), "groups=2"),
    ],
)
def test_bad_configuration_is_named(tiny_kwargs, images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet(**{**tiny_kwargs, **kwargs}).init(jax.random.key(0), images)


def test_registry_errors_name_the_value():
    with pytest.raises(ValueError, match="unknown model 'resnet51'"):
        create_model("resnet51")
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['num_class'\]"):
        create_model("resnet50", num_class=10)
