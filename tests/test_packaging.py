"""The package as pip sees it: the core dependencies (jax, flax, numpy) and the extras (train,
test, convert) in pyproject.toml, `resflax.__version__`, and the one-line error that each part
reached without its extra gives, naming the extra.

`test_the_core_install_is_enough_for_the_models` builds the wheel, checks its metadata and
build log, installs it with no extras into a new venv (packages from the registries through
pip's cache) and runs models and README's reuse example there, outside the checkout. It takes
about two minutes, so `make test` skips it and `make test-core` (run by .ci/run) runs it.
"""

from __future__ import annotations

import email
import json
import os
import re
import subprocess
import sys
import time
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import resflax
from resflax import extras

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
CORE = {"jax", "flax", "numpy"}
# Distributions whose modules `extras.MODULES` names (import name -> distribution).
DISTRIBUTIONS = {"optax": "optax", "orbax.checkpoint": "orbax-checkpoint", "absl": "absl-py",
                 "ml_collections": "ml-collections", "tensorflow": "tensorflow-cpu",
                 "tensorflow_datasets": "tensorflow-datasets", "tensorboard": "tensorboard",
                 "sklearn": "scikit-learn", "matplotlib": "matplotlib",
                 "safetensors": "safetensors", "torch": "torch",
                 "nvidia.dali": "nvidia-dali-cuda130", "PIL": "pillow"}  # fmt: skip
# Never in the core install: the training stack and the torch stack.
NOT_IN_CORE = ("tensorflow", "tensorflow-cpu", "tensorflow-datasets", "torch", "torchvision",
               "timm", "ml-collections", "tensorboard", "scikit-learn", "matplotlib",
               "safetensors", "nvidia-dali-cuda130", "nvidia-dali-cuda120")  # fmt: skip
CORE_INSTALL_ENV = "RESFLAX_TEST_CORE_INSTALL"


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")


def test_core_dependencies_are_jax_flax_numpy():
    assert {_name(r) for r in PROJECT["dependencies"]} == CORE


def test_each_extra_installs_what_its_guard_checks():
    extras_ = PROJECT["optional-dependencies"]
    assert set(extras_) == {"train", "test", "convert", "dali", "dali-cuda12"}
    for extra, modules in extras.MODULES.items():
        names = {_name(r) for r in extras_[extra]}
        assert {DISTRIBUTIONS[m] for m in modules} <= names, extra
    # .safetensors is read without torch: by `make finetune` (train) and by the converter alone.
    assert "safetensors" in {_name(r) for r in extras_["train"]}
    onednn = [r for r in extras_["train"] if r.startswith("onednn")]
    marker = "==2023.2.0; sys_platform == 'linux' and platform_machine == 'x86_64'"
    assert onednn == [f"onednn-cpu-gomp{marker}", f"onednn-devel-cpu-gomp{marker}"]


def test_license_is_an_spdx_expression_with_its_file():
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77"]  # PEP 639 metadata


def test_version_is_the_projects():
    assert resflax.__version__ == PROJECT["version"]


def test_version_of_a_checkout_that_is_not_installed(monkeypatch):
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert resflax._version() == PROJECT["version"]


def test_a_missing_module_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ml_collections", None)  # as if not installed
    assert extras.missing("train") == ["ml_collections"]
    assert extras.missing("convert") == [m for m in ("safetensors", "torch") if
                                         not extras.installed(m)]  # fmt: skip
    with pytest.raises(ImportError) as raised:
        extras.require("train", "resflax.train")
    assert str(raised.value) == (
        "resflax.train needs ml_collections, which is not installed: "
        "pip install 'resflax[train]' (in a checkout: make install)"
    )


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    ("blocked", "statement", "words"),
    [
        (
            "tensorflow",
            "import resflax.data.tfds",
            "the tf.data pipeline (data.pipeline='tfdata') needs tensorflow",
        ),
        ("sklearn", "import resflax.data.digits", "resflax.data needs sklearn"),
        ("optax", "import resflax.nnx", "resflax.nnx needs optax"),
    ],
    ids=["train", "data", "nnx"],
)
def test_importing_a_part_without_its_extra_names_it(blocked, statement, words):
    done = _python(f"import sys; sys.modules[{blocked!r}] = None; {statement}")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("resflax.extras.MissingExtra: ") and words in last, done.stderr
    assert "pip install 'resflax[train]'" in last


def test_training_modules_import_without_tensorflow():
    """TensorFlow is the tf.data pipeline's: the loop, the digits and the DALI pipeline load
    without it (a GPU host that feeds through DALI need not install it)."""
    done = _python(
        "import sys; sys.modules['tensorflow'] = None; sys.modules['tensorflow_datasets'] = None; "
        "import resflax.train.loop, resflax.data.dali, resflax.data.digits, resflax.main"
    )
    assert done.returncode == 0, done.stderr


def test_the_command_line_without_the_train_extra_is_one_line():
    done = _python(
        "import runpy, sys; sys.modules['ml_collections'] = None; "
        "sys.argv = ['resflax.main', '--config=x.py', '--workdir=w']; "
        "runpy.run_module('resflax.main', run_name='__main__')"
    )
    assert done.returncode == 1 and "absl" not in done.stderr.lower()
    assert done.stderr.strip() == (
        "resflax: error: python -m resflax.main needs ml_collections, which is not installed: "
        "pip install 'resflax[train]' (in a checkout: make install)"
    )


# --- the core install (make test-core)


def _run(args: list[str], log: Path, **kwargs) -> float:
    """Runs `args` with its output in `log`; returns the seconds it took."""
    start = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, timeout=900, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, args))}:\n{log.read_text()[-4000:]}"
    return time.monotonic() - start


def _source(dst: Path) -> Path:
    """What the wheel is built from, copied, so that the build's folders stay out of the
    checkout (and a locally built kernel cannot slip in)."""
    import shutil

    dst.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info")
    shutil.copytree(ROOT / "resflax", dst / "resflax", ignore=ignore)
    return dst


def _check_wheel(wheel: Path, log: str) -> None:
    lines = [line for line in log.splitlines() if re.search(r"deprecat|warning", line, re.I)]
    # setuptools says this in every build with PYTHONDONTWRITEBYTECODE: not about our metadata.
    assert [line for line in lines if "byte-compiling is disabled" not in line] == []
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = email.message_from_bytes(archive.read("resflax-0.1.0.dist-info/METADATA"))
    assert not [n for n in names if n.endswith(".so")]
    assert "resflax-0.1.0.dist-info/licenses/LICENSE" in names
    assert meta["License-Expression"] == "Apache-2.0" and meta["License-File"] == "LICENSE"
    # The extras' names are pinned in test_each_extra_installs_what_its_guard_checks;
    # the wheel must name the same ones, in pyproject's order.
    assert meta.get_all("Provides-Extra") == list(PROJECT["optional-dependencies"])
    core = {_name(r) for r in meta.get_all("Requires-Dist") if "extra ==" not in r}
    assert core == CORE


def _core_venv(tmp: Path) -> tuple[Path, dict[str, float]]:
    times = {}
    source = _source(tmp / "src")
    venv, wheels = tmp / "venv", tmp / "wheels"
    times["venv"] = _run([sys.executable, "-m", "venv", venv], tmp / "venv.log")
    python = venv / "bin" / "python"
    build = [python, "-m", "pip", "wheel", "--no-deps", "-v", "-w", wheels, source]
    times["wheel"] = _run(build, tmp / "wheel.log")
    (wheel,) = wheels.glob("resflax-*.whl")
    _check_wheel(wheel, (tmp / "wheel.log").read_text())
    # `make test-core` installs the locked versions (.ci/locks/core.txt); run alone, the ranges.
    lock = os.environ.get("RESFLAX_CORE_LOCK")
    constrain = ["-c", lock] if lock else []
    install = [python, "-m", "pip", "install", *constrain, wheel]
    times["install"] = _run(install, tmp / "install.log")
    return python, times


def _reuse_example(dst: Path) -> Path:
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "# reuse-example" in b]
    assert blocks, "README lost its module-reuse example (a python block marked # reuse-example)"
    dst.write_text(blocks[0])
    return dst


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get(CORE_INSTALL_ENV),
    reason=f"builds and fills a venv (~2 min): `make test-core` (sets {CORE_INSTALL_ENV}=1)",
)
def test_the_core_install_is_enough_for_the_models(tmp_path):
    python, times = _core_venv(tmp_path)
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True,
                            text=True, check=True)  # fmt: skip
    installed = {_name(p["name"]) for p in json.loads(listed.stdout)}
    assert not installed & set(NOT_IN_CORE), installed & set(NOT_IN_CORE)
    # optax and orbax-checkpoint come with flax, which requires them; nothing imports them.
    flax_needs = {_name(r) for r in metadata.requires("flax") if "extra ==" not in r}
    assert installed & {"optax", "orbax-checkpoint"} <= flax_needs
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    start = time.monotonic()
    check = [python, ROOT / "tests" / "core_install_check.py",
             _reuse_example(tmp_path / "reuse.py"), scratch]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JAX_PLATFORMS")}
    done = subprocess.run(check, cwd=scratch, capture_output=True, text=True, timeout=600, env=env)
    times["models"] = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"core install: {json.dumps({k: round(v, 1) for k, v in times.items()})}")
    assert f"{os.sep}site-packages{os.sep}" in found["file"]
    assert found["version"] == found["installed_version"] == PROJECT["version"]
    assert found["heavy_after_import"] == found["heavy_after_models"] == []
    assert found["resnet20"] == {"logits": [2, 10], "finite": True}
    assert found["resnet50"]["params"] == found["resnet50"]["published"] == 25_557_032
    assert found["resnet50"]["logits"] == [1, 1000]
    assert found["auto_conv"] != "onednn"
    assert found["reuse"]["logits"] == [8, 10]
    assert found["reuse"]["resnet18"] == [2, 2, 2, 2]
    assert {"stem", "stage4", "pre_logits"} <= set(found["reuse"]["features"])
    assert found["nnx"] == "create_model"
    train = "pip install 'resflax[train]' (in a checkout: make install)"
    for module in ("resflax.train", "resflax.data"):
        assert found[module].startswith(f"MissingExtra: {module} needs ") and train in found[module]
    convert = "pip install 'resflax[convert]'"
    pth, safetensors = found["read.pth"], found["read.safetensors"]
    assert "needs torch, which is not installed" in pth and convert in pth
    assert "needs safetensors, which is not installed" in safetensors and convert in safetensors
    main, error = found["main"], found["main"]["stderr"]
    assert main["status"] == 1 and error.count("\n") == 1, main
    assert error.startswith("resflax: error: python -m resflax.main needs ") and train in error
