"""Converted weights as a starting point: the convert CLI writes an orbax checkpoint, and
`config.init_from` loads everything but a classifier of another class count."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.convert.test_torchvision import reference, save_file
from tests.saved import saved_state
from tests.test_main import ROOT


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    save_file(reference("resnet18").state_dict(), str(root / "r18.safetensors"))
    cmd = [sys.executable, "-m", "resflax.convert", "--model=resnet18",
           f"--src={root / 'r18.safetensors'}", f"--dst={root / 'out'}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and again.stderr.strip().splitlines()[-1].endswith(
        "exists; choose another --dst (nothing was changed)"
    )
    return root


def test_convert_cli_writes_meta_and_variables(converted):
    meta = json.loads((converted / "out" / "meta.json").read_text())
    assert meta["model"] == "resnet18" and meta["num_classes"] == 1000
    assert (converted / "out" / "variables").is_dir()


def test_init_from_loads_all_but_a_new_head(converted, tmp_path):
    from resflax.train import pretrained
    from resflax.train.loop import train_and_evaluate
    from tests.train.test_loop import small_config

    images = tmp_path / "images"
    for split, n in (("train", 4), ("test", 2)):
        for c in ("a", "b", "c"):
            (images / split / c).mkdir(parents=True)
            for i in range(n):
                from PIL import Image

                pixels = np.random.default_rng(i).integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(images / split / c / f"{i}.png")
    config = small_config(**{
        "model.name": "resnet18", "data.name": "image_folder", "data.folder": str(images),
        "data.image_size": 16, "batch_size": 8, "num_steps": 1, "eval_every_steps": 0,
        "init_from": str(converted / "out"), "optimizer.learning_rate": 1e-30,
        "schedule.warmup": 0, "optimizer.weight_decay": 0.0,
    })  # fmt: skip
    config.model.stage_sizes = config.model.widths = config.model.stem_width = None
    train_and_evaluate(config, tmp_path / "w")
    loaded, _ = pretrained.load(converted / "out")
    params = saved_state(tmp_path / "w", 1)["params"]
    assert params["head"]["fc"]["kernel"].shape == (512, 3)  # the new classes, freshly made
    mine = {k: v for k, v in params.items() if k != "head"}
    theirs = {k: v for k, v in loaded["params"].items() if k != "head"}
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(a, b)  # lr 1e-30: one step leaves them as loaded
    config.model.name = "resnet34"
    with pytest.raises(
        ValueError, match=r"holds 'resnet18' weights, but config\.model\.name='resnet34'"
    ):
        train_and_evaluate(config, tmp_path / "other")
