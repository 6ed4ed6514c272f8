"""Every config in experiments/configs loads, validates, builds its model, and documents the
command that runs it; depth arguments outside the tables are refused with the valid ones."""

import importlib
from pathlib import Path

import pytest

from resflax.models import count_params, create_model, get_entry
from resflax.train import config as config_lib

CONFIGS = Path(__file__).parents[1] / "experiments" / "configs"
RUNNABLE = sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem not in ("__init__", "base"))
ARGS = {
    "digits": [None, "resnet56"],
    "cifar10": [None, "20", "110", "resnet1202", "wrn28_10"],
    "cifar100": [None, "44"],
    "imagenet": [None, "18", "152", "resnext50_32x4d", "blog_resnet"],
    "fake_data": [None, "resnet18", "resnet56"],
    "imagenette": [None, "18", "resnet50d"],
    "finetune": [None, "resnet18"],
    "fashion_mnist": [None, "32", "resnet56,paper", "wrn28_10,fast"],
}


def load(name, arg=None):
    module = importlib.import_module(f"experiments.configs.{name}")
    return module.get_config(arg) if arg is not None else module.get_config()


def test_every_config_has_arguments_listed():
    assert sorted(ARGS) == RUNNABLE


@pytest.mark.parametrize(("name", "arg"), [(n, a) for n in ARGS for a in ARGS[n]])
def test_config_validates_and_builds_its_model(name, arg):
    config = load(name, arg)
    config_lib.validate(config)
    entry = get_entry(config.model.name)
    model = arg and arg.split(",")[0]  # fashion_mnist: <model>,<schedule>
    if model is not None and not model.isdigit():
        assert config.model.name == model
    model = create_model(entry.name, dtype=config.dtype, **config_lib.model_overrides(config))
    assert count_params(model, (1, 32, 32, 3)) == entry.params
    if name == "fake_data":
        assert (config.data.image_size, config.data.num_classes) == (
            entry.resolution,
            entry.num_classes,
        )


@pytest.mark.parametrize("name", RUNNABLE)
def test_docstring_shows_the_command(name):
    doc = importlib.import_module(f"experiments.configs.{name}").__doc__
    assert f"experiments/configs/{name}.py" in doc


def test_cifar_recipe_is_the_papers():
    c = load("cifar10", "56")
    assert (c.batch_size, c.num_steps, c.optimizer.learning_rate) == (128, 64_000, 0.1)
    assert (c.optimizer.momentum, c.optimizer.weight_decay) == (0.9, 1e-4)
    assert (c.schedule.name, c.schedule.unit, tuple(c.schedule.boundaries)) == (
        "piecewise",
        "steps",
        (32_000, 48_000),
    )
    assert load("cifar10", "110").schedule.warmup == 400 and c.schedule.warmup == 0
    assert load("cifar100", "56").data.name == "cifar100"


def test_fashion_mnist_paper_schedule_is_zhongs():
    """Zhong et al. 2017's Fashion-MNIST protocol: 300 epochs of batch 128, lr 0.1 ÷10 at 150
    and 225, momentum 0.9, weight decay 5e-4 on every parameter, pad 4 + crop + flip."""
    c = load("fashion_mnist", "resnet44,paper")
    steps = config_lib.to_steps(c, steps_per_epoch=60_000 // 128)
    assert (c.model.name, c.data.name, c.batch_size, c.num_epochs) == (
        "resnet44", "fashion_mnist", 128, 300,
    )  # fmt: skip
    assert steps.boundaries == (150 * 468, 225 * 468) and c.schedule.decay_factor == 0.1
    assert (c.optimizer.learning_rate, c.optimizer.momentum, c.optimizer.nesterov) == (
        0.1,
        0.9,
        False,
    )
    assert c.optimizer.weight_decay == 5e-4 and c.optimizer.decay_norm_and_bias
    assert c.data.augment is None and c.data.pad == 4 and c.data.random_erasing == 0
    assert load("fashion_mnist").num_epochs == 20


@pytest.mark.parametrize(
    ("arg", "message"),
    [("resnet20,slow", "schedule 'slow' is not one of"), ("1202", "'1202' is not in the table")],
)
def test_fashion_mnist_refuses_what_it_does_not_have(arg, message):
    with pytest.raises(ValueError, match=message):
        load("fashion_mnist", arg)


def test_imagenet_recipe_is_goyal():
    c = load("imagenet", "50")
    steps = config_lib.to_steps(c, steps_per_epoch=1_281_167 // 256)
    assert c.num_epochs == 90 and c.optimizer.reference_batch == 256
    assert steps.warmup == 5 * 5004 and steps.boundaries == (30 * 5004, 60 * 5004, 80 * 5004)
    assert c.model.zero_init_last is True


@pytest.mark.parametrize(
    ("name", "arg", "valid"),
    [("cifar10", "57", "20, 32, 44, 56, 110, 1202"), ("imagenet", "51", "18, 34, 50, 101")],
)
def test_depth_outside_the_table_is_refused(name, arg, valid):
    with pytest.raises(ValueError, match=f"'{arg}' is not in the table; valid depths: {valid}"):
        load(name, arg)


def test_cifar_config_refuses_an_imagenet_model():
    with pytest.raises(ValueError, match="'resnet50' is not in the table"):
        load("cifar10", "resnet50")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("dtype", "float16", "dtype='float16' is not one of"),
        ("parallel", "pjit", "parallel='pjit' is not one of"),
        ("batch_size", 0, "batch_size=0 must be positive"),
        ("log_every_steps", 0, "log_every_steps=0 must be positive"),
        ("checkpoint_every_steps", -1, "checkpoint_every_steps=-1 must be >= 0"),
        ("label_smoothing", 1.0, r"label_smoothing=1.0 must be in \[0, 1\)"),
    ],
)
def test_validate_names_the_bad_value(key, value, message):
    config = load("digits")
    config[key] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)


def test_validate_needs_exactly_one_length():
    config = load("digits")
    config.num_epochs = 3.0
    with pytest.raises(ValueError, match=r"exactly one of num_epochs=3\.0 and num_steps=600"):
        config_lib.validate(config)


def test_negative_learning_rate_is_refused():
    config = load("digits")
    config.optimizer.learning_rate = -0.1
    with pytest.raises(ValueError, match=r"optimizer.learning_rate=-0.1 must be positive"):
        config_lib.validate(config)


def test_model_overrides_keep_registry_values_unless_set():
    config = load("digits")
    assert config_lib.model_overrides(config) == {}
    config.model.scan = True
    model = create_model(config.model.name, **config_lib.model_overrides(config))
    assert model.scan is True and tuple(model.stage_sizes) == (3, 3, 3)


def test_distributed_is_off_by_default_and_needs_all_three_addresses():
    from resflax.train.distributed import initialize

    config = load("digits")
    assert initialize(config.distributed) is False
    config.distributed.enabled = True
    config.distributed.coordinator_address = "127.0.0.1:1234"
    with pytest.raises(ValueError, match=r"missing; give all three"):
        initialize(config.distributed)
    config.distributed.num_processes, config.distributed.process_id = 2, 2
    with pytest.raises(ValueError, match=r"process_id=2 is not in \[0, 2\)"):
        initialize(config.distributed)
