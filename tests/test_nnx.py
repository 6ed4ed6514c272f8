"""`resflax.nnx`: registered models as Flax NNX modules through `flax.nnx.bridge`.

The NNX train step must be the linen step, number for number (parameters, BatchNorm statistics,
metrics); variables must move between the two forms exactly; train/eval must switch BatchNorm;
every registry feature must build. Initialisations use the "rbg" PRNG: the same programs, but
XLA:CPU compiles them 5x faster than threefry's (see tests/train/test_loop.py).
"""

import re
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import resflax
from resflax import nnx as rnnx
from resflax.models import get_entry, list_models
from resflax.train.optim import make_optimizer
from resflax.train.state import make_init
from resflax.train.step import train_step

NAME = "resnet20"
TINY = dict(stage_sizes=(1, 1, 1), widths=(4, 8, 16), stem_width=4)  # ResNet-20's layout
SHAPE = (16, 8, 8, 3)


def rngs(seed=0, **streams):
    return nnx.Rngs(jax.random.key(seed, impl="rbg"), **streams)


def assert_trees_close(got, want, atol):
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=atol), got, want)


def randomised_stats(variables, seed=3):
    """`variables` with random running statistics: the defaults (0, 1) would make eval-mode
    BatchNorm nearly an identity and hide a statistic that never arrived."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(variables["batch_stats"])
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [
        jax.random.uniform(k, v.shape, minval=0.5, maxval=1.5)
        if path[-1].key == "var"
        else 0.2 * jax.random.normal(k, v.shape)
        for k, (path, v) in zip(keys, leaves, strict=True)
    ]
    return {**variables, "batch_stats": jax.tree_util.tree_unflatten(tree, new)}


@pytest.fixture(scope="module")
def linen():
    """The tiny model in linen form: module, a TrainState (SGD + momentum, weight decay large
    enough that a wrong decay mask would show at 1e-6) and a batch with masked examples."""
    module = resflax.create_model(NAME, **TINY)
    tx = make_optimizer("sgd", optax.constant_schedule(0.1), momentum=0.9, weight_decay=1e-2)
    state = jax.jit(make_init(module, tx, (1, *SHAPE[1:])))(jax.random.key(0, impl="rbg"))
    labels = jnp.arange(SHAPE[0]) % 10
    image = jax.random.normal(jax.random.key(1), SHAPE) + labels[:, None, None, None] / 4
    batch = {"image": image, "label": labels, "mask": jnp.arange(SHAPE[0]) < 13}
    return module, tx, state, batch


def linen_variables(state):
    return {"params": state.params, "batch_stats": state.batch_stats}


def random_variables(name, seed=0, **overrides):
    """Random linen variables of a registered model from numpy, without compiling an
    initialisation; random statistics too (see `randomised_stats`)."""
    module = resflax.create_model(name, **overrides)
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(seed)
    fill = lambda s: rng.normal(0.0, 0.1, s.shape).astype(s.dtype)  # noqa: E731
    return randomised_stats(jax.tree_util.tree_map(fill, shapes), seed)


@pytest.fixture(scope="module")
def tiny_model(linen):
    # Linen's initial variables: the same start for both steps, and no second init compiled.
    variables = linen_variables(linen[2])
    return rnnx.create_model(NAME, rngs=rngs(), input_shape=(1, 8, 8, 3), variables=variables,
                             **TINY)  # fmt: skip


@pytest.fixture
def model(tiny_model):
    return nnx.clone(tiny_model)  # each test changes its own copy


def test_three_sgd_steps_equal_the_linen_step(linen, model):
    _, tx, state, batch = linen
    start = linen_variables(state)
    assert_trees_close(rnnx.to_linen_variables(model), start, 0)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    linen_step = jax.jit(lambda s, b: train_step(s, b, label_smoothing=0.1))
    nnx_step = nnx.jit(lambda m, o, b: rnnx.train_step(m, o, b, label_smoothing=0.1))
    for _ in range(3):
        state, want = linen_step(state, batch)
        got = nnx_step(model, optimizer, batch)
        assert_trees_close(got, want, atol=1e-6)  # loss, top-1/5 and count sums
    after = rnnx.to_linen_variables(model)
    assert_trees_close(after, {"params": state.params, "batch_stats": state.batch_stats}, 1e-6)
    # Both really moved: parameters by the optimizer, statistics by the batches.
    for collection in ("params", "batch_stats"):
        moved = jax.tree_util.tree_map(
            lambda a, b: not np.allclose(a, b), after[collection], start[collection]
        )
        assert all(jax.tree_util.tree_leaves(moved)), collection
    assert int(optimizer.step[...]) == 3


def test_variables_convert_both_ways_and_eval_logits_match_linen(linen, model):
    module, _, state, batch = linen
    variables = randomised_stats(linen_variables(state))
    rnnx.from_linen_variables(model, variables)
    back = rnnx.to_linen_variables(model)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(variables)
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, variables)
    want, features = module.apply(variables, batch["image"], return_features=True)
    got, got_features = model(batch["image"], return_features=True)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert_trees_close(got_features, features, 1e-6)  # stem, stage1..3, pre_logits
    # NNX's own view: linen's collections became these variable types.
    assert set(nnx.state(model, nnx.BatchStat)["net"]["stem"]["norm"]) == {"mean", "var"}
    assert set(nnx.state(model, nnx.Param)["net"]["stem"]["norm"]) == {"scale", "bias"}


def test_loading_is_strict(linen, model):
    _, _, state, _ = linen
    params = dict(state.params)
    head = params.pop("head")
    with pytest.raises(ValueError, match=r"missing 2: \['params/head/fc/bias'"):
        rnnx.from_linen_variables(model, {"params": params, "batch_stats": state.batch_stats})
    params["head"] = {"fc": {**head["fc"], "kernel": jnp.zeros((16, 7))}, "extra": {"w": 1.0}}
    with pytest.raises(ValueError, match=r"unexpected 1.*head/extra/w.*shape 1.*\(16, 7\)"):
        rnnx.from_linen_variables(model, {"params": params, "batch_stats": state.batch_stats})
    with pytest.raises(ValueError, match=r"missing 4: \[.batch_stats/stage1/block0/norm1/mean"):
        stats = {**state.batch_stats, "stage1": {}}
        rnnx.create_model(NAME, rngs=rngs(), variables={**linen_variables(state),
                          "batch_stats": stats}, **TINY)  # fmt: skip


def test_train_and_eval_switch_batchnorm(linen, model):
    module, _, state, batch = linen
    variables = randomised_stats(linen_variables(state))
    rnnx.from_linen_variables(model, variables)
    x = batch["image"]
    assert model.use_running_average  # eval by default, as linen's train=False
    np.testing.assert_allclose(model(x), module.apply(variables, x), atol=1e-6)
    assert_trees_close(rnnx.to_linen_variables(model), variables, 0)  # eval writes nothing

    model.train()  # NNX's switch: batch statistics, running ones updated in place
    want, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(model(x), want, atol=1e-6)
    trained = rnnx.to_linen_variables(model)
    assert_trees_close(trained["batch_stats"], updates["batch_stats"], 1e-6)

    # A per-call override, then back to eval: the running statistics, now updated.
    trained_vars = {**variables, "batch_stats": updates["batch_stats"]}
    np.testing.assert_allclose(model(x, train=False), module.apply(trained_vars, x), atol=1e-6)
    model.eval()
    np.testing.assert_allclose(model(x), module.apply(trained_vars, x), atol=1e-6)
    assert_trees_close(rnnx.to_linen_variables(model), trained, 0)


def test_bridge_quirks_the_wrapper_exists_for(model):
    """Upstream behaviour of `flax.nnx.bridge.ToNNX` (flax 0.12.8) that `NNXResNet` works
    around. If this fails, flax changed: the wrapper's `mutable=` and `use_running_average`
    may have become unnecessary (or wrong)."""
    bare = model.net  # the plain bridge module, as `nnx.bridge.ToNNX(...).lazy_init(x)` gives
    assert type(bare) is nnx.bridge.ToNNX
    x = jnp.ones((2, 8, 8, 3))
    # 1. Train mode without `mutable=` is refused: linen's collections are immutable by default.
    with pytest.raises(flax.errors.ModifyScopeVariableError, match="batch_stats"):
        bare(x, train=True)
    # 2. NNX's `.train()` / `.eval()` set `use_running_average` where a module has it; a bare
    #    ToNNX has none, so the switch silently does nothing.
    assert not hasattr(bare, "use_running_average")
    bare.train()
    np.testing.assert_array_equal(bare(x), bare(x, train=False))
    # 3. With `mutable=`, the bridge returns the output alone and stores the updates itself.
    before = nnx.state(bare, nnx.BatchStat)["stem"]["norm"]["mean"][...]
    out = bare(x, train=True, mutable=["batch_stats"])
    assert isinstance(out, jax.Array)
    assert not np.allclose(nnx.state(bare, nnx.BatchStat)["stem"]["norm"]["mean"][...], before)


def test_execution_policy_passes_through(linen):
    module, _, state, batch = linen
    ops = resflax.ops.Ops(norm="closed", fuse_relu=True, act="relu_stored")
    variables = linen_variables(state)  # variables do not depend on the policy
    model = rnnx.create_model(NAME, rngs=rngs(), variables=variables, ops=ops, **TINY)
    assert model.net.to_nnx__module.ops == ops
    want, updates = module.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(model(batch["image"], train=True), want, atol=1e-5)
    assert_trees_close(rnnx.to_linen_variables(model)["batch_stats"], updates["batch_stats"], 1e-5)


def test_stochastic_depth_draws_from_the_dropout_stream(linen):
    batch = linen[3]
    # Random variables: at initialisation the last norm of each block scales by zero, so
    # dropping a block would change nothing.
    variables = random_variables(NAME, **TINY)
    model = rnnx.create_model(NAME, rngs=rngs(0, dropout=1), variables=variables,
                              drop_path_rate=0.5, **TINY)  # fmt: skip
    x = batch["image"]
    np.testing.assert_array_equal(model(x), model(x))  # eval: no blocks dropped
    model.train()
    assert not np.allclose(model(x), model(x))  # each call a new draw


def test_group_norm_models_have_no_batch_stats():
    model = nnx.eval_shape(
        lambda: rnnx.create_model(NAME, rngs=rngs(), norm="group", norm_groups=2, **TINY)
    )
    assert rnnx.to_linen_variables(model).keys() == {"params"}  # as linen's init gives


def test_arguments_are_checked_where_they_enter():
    with pytest.raises(ValueError, match="'dropout' stream"):
        rnnx.create_model(NAME, rngs=rngs(), drop_path_rate=0.1)
    with pytest.raises(ValueError, match=r"input_shape=\(32, 32, 3\) must be NHWC"):
        rnnx.create_model(NAME, rngs=rngs(), input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="unknown model 'resnet21'"):
        rnnx.create_model("resnet21", rngs=rngs())


# One model per code path of the registry (see the next test): block kinds, pre-activation,
# stems, shortcuts A/B/D, stride placement, groups, SE, a hidden head, 3 and 4 stages.
REPRESENTATIVE = ["resnet18", "resnet50", "resnet50_v1", "preact_resnet50", "resnet50c",
                  "resnet50d", "seresnet50", "resnext50_32x4d", "resnet20", "wrn28_10",
                  "blog_resnet"]  # fmt: skip


def test_representative_models_cover_every_registry_feature():
    def features(name):
        """A choice (string, flag) by value; a size only as set, and stages by count."""
        out = set()
        for key, value in get_entry(name).config.items():
            if key == "stage_sizes":
                out.add((key, len(value)))
            else:
                out.add((key, value if isinstance(value, str | bool) else "set"))
        return out

    everything = set().union(*(features(n) for n in list_models()))
    covered = set().union(*(features(n) for n in REPRESENTATIVE))
    assert everything - covered == set()


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_registered_models_build_with_their_published_parameter_count(name):
    # Shapes only: nnx.eval_shape traces the initialisation without computing it.
    model = nnx.eval_shape(lambda: rnnx.create_model(name, rngs=nnx.Rngs(0)))
    params = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
    assert sum(int(np.prod(p.shape)) for p in params) == get_entry(name).params
    assert jax.tree_util.tree_leaves(nnx.state(model, nnx.BatchStat))
    assert model.net.to_nnx__module == resflax.create_model(name)


def test_converted_checkpoint_loads_into_nnx(tmp_path):
    """The documented path for pretrained weights, torch-free: a torchvision-named
    .safetensors file -> `python -m resflax.convert`'s function -> `pretrained.load` -> NNX."""
    from safetensors.numpy import save_file

    from resflax.convert import export_torchvision
    from resflax.convert.__main__ import convert
    from resflax.train import pretrained

    variables = random_variables(NAME)
    save_file(export_torchvision(variables), str(tmp_path / "w.safetensors"))
    convert(NAME, str(tmp_path / "w.safetensors"), str(tmp_path / "converted"))
    loaded, meta = pretrained.load(tmp_path / "converted")
    assert meta["model"] == NAME
    model = rnnx.create_model(NAME, rngs=rngs(), variables=loaded)
    jax.tree_util.tree_map(np.testing.assert_array_equal, rnnx.to_linen_variables(model), variables)


def test_torchvision_resnet18_weights_give_torchs_logits_in_nnx():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from resflax.convert import export_torchvision, import_torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # random statistics, else eval-mode BatchNorm hides mapping mistakes
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    init = resflax.create_model("resnet18").init
    target = jax.eval_shape(init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))  # shapes only
    model = rnnx.create_model("resnet18", rngs=rngs(), variables=import_torchvision(state, target))
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = reference.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(x)))  # 4x faster than eager
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    back = export_torchvision(rnnx.to_linen_variables(model))  # and out again, exactly
    assert back.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_readme_example_runs():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "# nnx-example" in b]
    assert blocks, "README lost its Flax NNX example (a python block marked # nnx-example)"
    namespace: dict = {}
    with jax.default_prng_impl("rbg"):  # the example's program; a faster CPU compile
        exec(blocks[0], namespace)
    assert namespace["logits"].shape == (8, 10)
    assert float(namespace["sums"]["count"]) == 8
    assert isinstance(namespace["model"], rnnx.NNXResNet)
