"""torchvision and timm weights in resflax: for every torchvision ResNet and timm's ResNet-C/D
and SE-ResNet-50, random weights with randomised
BatchNorm statistics (defaults would make BatchNorm an identity and hide mapping mistakes) go
through a .safetensors file into resflax, and logits and every stage's features agree."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:
    import torch
    import torchvision
    from safetensors.torch import save_file
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # CI installs the convert extra: a missing torch there is a failure
    pytest.skip(
        "torch/torchvision not installed (pip install -e '.[convert]')", allow_module_level=True
    )

import resflax
from resflax.convert import export_torchvision, import_torchvision, read_state_dict

FAST = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"]
SLOW = ["resnet34", "resnet101", "resnet152", "resnext101_32x8d", "wide_resnet101_2"]
SIZE = 64  # every stage still sees >= 2x2 pixels; the weights do not depend on it


def reference(name, seed=0, library="torchvision"):
    torch.manual_seed(seed)
    if library == "timm":
        import timm

        model = timm.create_model(name, pretrained=False)
    else:
        model = getattr(torchvision.models, name)(weights=None)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.normal_(0.0, 0.2, generator=generator)
                m.running_mean.normal_(0.0, 0.2, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def torch_features(model, x):
    """Logits and the outputs of the stem (after max-pool), each layer and the pooling."""
    out = {}
    if hasattr(model, "stages"):  # timm's pre-activation resnetv2
        with torch.no_grad():
            h = out["stem"] = model.stem(x)
            for i, stage in enumerate(model.stages):
                h = out[f"stage{i + 1}"] = stage(h)
            out["pre_logits"] = torch.flatten(model.norm(h).mean((2, 3), keepdim=True), 1)
            logits = model(x)
        return logits.numpy(), {k: v.numpy() for k, v in out.items()}
    act = model.act1 if hasattr(model, "act1") else model.relu  # timm names it act1
    pool = model.global_pool if hasattr(model, "global_pool") else model.avgpool
    with torch.no_grad():
        h = model.maxpool(act(model.bn1(model.conv1(x))))
        out["stem"] = h
        for i in range(1, 5):
            h = getattr(model, f"layer{i}")(h)
            out[f"stage{i}"] = h
        out["pre_logits"] = torch.flatten(pool(h), 1)
        logits = model.fc(out["pre_logits"])
    return logits.numpy(), {k: v.numpy() for k, v in out.items()}


def abstract(model):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))


def check_parity(name, tmp_path, library="torchvision"):
    ref = reference(name, library=library)
    save_file(ref.state_dict(), str(tmp_path / f"{name}.safetensors"))
    state = read_state_dict(tmp_path / f"{name}.safetensors")
    model = resflax.create_model(name.replace("resnetv2_", "preact_resnet"))
    variables = import_torchvision(state, abstract(model))
    x = np.random.default_rng(0).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    logits, feats = model.apply(variables, x, return_features=True)
    want_logits, want = torch_features(ref, torch.from_numpy(x.transpose(0, 3, 1, 2)))
    pairs = [("logits", np.asarray(logits), want_logits)]
    for key, value in want.items():
        got = np.asarray(feats[key])
        pairs.append((key, got if got.ndim == 2 else got.transpose(0, 3, 1, 2), value))
    for key, got, expected in pairs:
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() <= 1e-4 * scale, (name, key)
    return ref, state, variables


@pytest.mark.parametrize("name", FAST)
def test_logits_and_features_match_torchvision(name, tmp_path):
    check_parity(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_logits_and_features_match_torchvision_deep(name, tmp_path):
    check_parity(name, tmp_path)


@pytest.mark.parametrize("name", ["resnet50c", "resnet50d", "seresnet50", "resnetv2_50"])
def test_logits_and_features_match_timm(name, tmp_path):
    check_parity(name, tmp_path, library="timm")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet101d", "resnetv2_101"])
def test_logits_and_features_match_timm_deep(name, tmp_path):
    check_parity(name, tmp_path, library="timm")


def test_timm_v2_round_trip_loads_in_timm(tmp_path):
    import timm

    ref, state, variables = check_parity("resnetv2_50", tmp_path, library="timm")
    exported = export_torchvision(variables)
    assert set(exported) == set(ref.state_dict())
    for key, value in state.items():
        np.testing.assert_array_equal(exported[key], value)
    fresh = timm.create_model("resnetv2_50", pretrained=False)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)


def test_timm_resnet_d_round_trip_is_exact(tmp_path):
    ref, state, variables = check_parity("resnet50d", tmp_path, library="timm")
    exported = export_torchvision(variables, avg_down=True)
    assert set(exported) == set(ref.state_dict())
    for key, value in state.items():
        np.testing.assert_array_equal(exported[key], value)


def test_export_round_trip_is_exact_and_loads_in_torchvision(tmp_path):
    ref, state, variables = check_parity("resnet18", tmp_path)
    exported = export_torchvision(variables)
    assert set(exported) == set(ref.state_dict())
    for key, value in state.items():
        np.testing.assert_array_equal(exported[key], value)
    again = import_torchvision(exported, abstract(resflax.create_model("resnet18")))
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = torchvision.models.resnet18(weights=None)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)


def test_missing_unexpected_and_misshapen_keys_are_listed():
    state = {k: v.numpy() for k, v in reference("resnet18").state_dict().items()}
    target = abstract(resflax.create_model("resnet18"))
    broken = dict(state)
    del broken["layer1.0.conv1.weight"]
    broken["layer9.0.conv1.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError) as info:
        import_torchvision(broken, target)
    message = str(info.value)
    assert "missing 1: ['layer1.0.conv1.weight']" in message
    assert "unexpected 1: ['layer9.0.conv1.weight']" in message
    wrong = dict(state, **{"fc.weight": np.zeros((10, 512), np.float32)})
    with pytest.raises(ValueError, match=r"shape mismatches 1: \['fc.weight: \(10, 512\)"):
        import_torchvision(wrong, target)


def test_a_new_head_is_kept_when_fc_is_skipped():
    state = {k: v.numpy() for k, v in reference("resnet18").state_dict().items()}
    model = resflax.create_model("resnet18", num_classes=7)
    own = model.init(jax.random.key(3), jnp.zeros((1, SIZE, SIZE, 3)))
    with pytest.raises(ValueError, match="shape mismatches 2"):
        import_torchvision(state, own)
    variables = import_torchvision(state, own, skip=("fc",))
    np.testing.assert_array_equal(
        variables["params"]["head"]["fc"]["kernel"], own["params"]["head"]["fc"]["kernel"]
    )
    np.testing.assert_array_equal(
        variables["params"]["stem"]["conv"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0)
    )


class Payload:
    """Something that is not a tensor: pickling it is what weights_only refuses."""


def test_pickled_objects_and_non_tensors_are_refused(tmp_path):
    torch.save({"w": torch.zeros(2), "obj": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth: refused by torch\.load\(weights_only=True\)"):
        read_state_dict(tmp_path / "evil.pth")
    torch.save({"w": torch.zeros(2), "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match=r"entries that are not tensors: \['epoch'\]"):
        read_state_dict(tmp_path / "mixed.pth")
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "wrapped.pth")
    np.testing.assert_array_equal(read_state_dict(tmp_path / "wrapped.pth")["w"], np.ones(2))
    with pytest.raises(ValueError, match="unknown format"):
        (tmp_path / "w.npz").write_bytes(b"")
        read_state_dict(tmp_path / "w.npz")


def test_forms_outside_these_layouts_are_refused():
    target = abstract(resflax.create_model("resnet50", scan=True))
    with pytest.raises(ValueError, match="has no torchvision/timm counterpart"):
        import_torchvision({}, target)


def test_train_mode_batchnorm_matches_torch_with_unbiased_running_variance():
    """Batch statistics normalise in train mode on both sides; torch momentum 0.1 is Flax
    momentum 0.9; torch updates the running variance with the unbiased batch variance, which
    `bn_running_var="unbiased"` reproduces (Flax's default uses the biased one)."""
    ref = reference("resnet18").train()
    state = {k: v.numpy().copy() for k, v in ref.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((4, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        want_logits = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    want = {k: v.numpy() for k, v in ref.state_dict().items()}
    worst = {}
    for running_var in ("unbiased", "biased"):
        model = resflax.create_model("resnet18", bn_running_var=running_var)
        variables = import_torchvision(state, abstract(model))
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        scale = np.abs(want_logits).max()
        assert np.abs(np.asarray(logits) - want_logits).max() <= 1e-4 * scale
        got = export_torchvision({"params": variables["params"], **updates})
        stats = [k for k in want if k.endswith(("running_mean", "running_var"))]
        worst[running_var] = max(
            np.abs(got[k] - want[k]).max() / np.abs(want[k]).max() for k in stats
        )
    assert worst["unbiased"] <= 1e-5
    assert worst["biased"] > 1e-3  # layer4 reduces over 4 x 2 x 2 values: n/(n-1) = 16/15


def test_bad_running_variance_mode_is_named():
    model = resflax.create_model("resnet18", bn_running_var="sample")
    with pytest.raises(
        ValueError, match=r"bn_running_var='sample' is not one of \('biased', 'unbiased'\)"
    ):
        model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
