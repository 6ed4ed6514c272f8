"""Every bad input to the command lines is one line on stderr, `resflax: error: ...`, naming
the bad value or file and what would be valid, with exit status 1 and no traceback.

The table runs `resflax.main` and `resflax.convert` in this process (a subprocess costs ~2 s of
imports per case; absl's flags are reset between cases): stderr must hold exactly one line.
The process settings the CLI applies (XLA flags, malloc) are stubbed there, as they would
change every later test of this process; a few cases run as real subprocesses to show that
the whole stderr of the real program is that one line, and that RESFLAX_DEBUG=1 shows the
traceback instead. Pickled weights that would run code are refused without running it.
"""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _pytest.mark import ParameterSet
from absl import flags

import resflax.main as cli_main
from resflax import runtime
from resflax.convert.__main__ import main as convert_main
from resflax.runtime.host_memory import check_mode
from tests.test_main import ROOT

# ml_collections loads config files with the deprecated load_module(); pytest's "error" filter
# would turn that into the error under test.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
DIGITS = "--config=experiments/configs/digits.py"
FMNIST = "--config=experiments/configs/fashion_mnist.py:resnet20"
W = "--workdir={tmp}/w"
TINY = ["--config.model.stage_sizes=(1, 1, 1)", "--config.model.widths=(4, 8, 16)",
        "--config.model.stem_width=4", "--config.num_steps=2", "--config.schedule.warmup=0",
        "--config.prng_impl=rbg"]  # fmt: skip
FOLDER = ["--config.data.name=image_folder", "--config.data.image_size=16",
          "--config.batch_size=8"]  # fmt: skip
CONVERT = ["--model=resnet18", "--dst={tmp}/out"]
NEEDS_TORCH = "torch"


class Payload:
    """Unpickled, it creates the directory `marker`: what a malicious checkpoint would do,
    harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _images(root: Path, splits=("train", "test"), classes=("a", "b"), count=4) -> Path:
    from PIL import Image

    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = np.random.default_rng(i).integers(0, 255, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def _config_files(root: Path) -> None:
    root.mkdir()
    (root / "syntax.py").write_text("def get_config(:\n    pass\n")
    (root / "imports.py").write_text("import resflax_no_such_module\n")
    (root / "no_get_config.py").write_text("x = 1\n")
    (root / "returns_none.py").write_text("def get_config():\n    return None\n")
    (root / "raises.py").write_text("def get_config():\n    return {}['model']\n")
    (root / "no_argument.py").write_text(
        "from experiments.configs import digits\n\n\n"
        "def get_config():\n    return digits.get_config()\n"
    )


def _weights(root: Path) -> None:
    """Damaged and hostile weight files; those torch must write only where it is installed."""
    root.mkdir()
    rng = np.random.default_rng(0)
    (root / "garbage.pth").write_bytes(rng.bytes(1000))
    (root / "empty.pth").write_bytes(b"")
    (root / "garbage.safetensors").write_bytes(rng.bytes(1000))
    (root / "w.npz").write_bytes(b"")
    from safetensors.numpy import save_file

    save_file({"fc.weight": np.zeros((100, 100), np.float32)}, str(root / "full.safetensors"))
    full = (root / "full.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(full[: len(full) // 2])
    save_file({"conv1.weight": np.zeros((2, 2), np.float32)}, str(root / "no_fc.safetensors"))
    with (root / "code.pth").open("wb") as f:  # a bare pickle, as torch's legacy format
        pickle.dump({"fc.weight": Payload(root / "ran_pickle")}, f)
    try:
        import torch
    except ImportError:
        return
    torch.save({"fc.weight": torch.zeros(2, 2)}, root / "full.pth")
    full = (root / "full.pth").read_bytes()
    (root / "truncated.pth").write_bytes(full[: len(full) // 2])
    torch.save(
        {"fc.weight": torch.zeros(2, 2), "x": Payload(root / "ran_zip")}, root / "code_zip.pth"
    )


def _idx_folders(data: Path) -> None:
    """Fashion-MNIST-shaped IDX folders: a truncated train image file, a label out of range."""
    from tests.data.test_idx import write_folder

    root, _ = write_folder(data / "idx_truncated", n_train=64)
    images = root / "train-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    root, _ = write_folder(data / "idx_label", n_train=64)
    labels = bytearray(gzip.decompress((root / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    labels[-1] = 10
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(labels)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    _config_files(root / "configs")
    _weights(root / "weights")
    data = root / "data"
    _images(data / "good")
    (data / "empty").mkdir()
    _images(data / "no_test", splits=("train",))
    _images(data / "one_class", classes=("a",))
    _images(data / "empty_class")
    _idx_folders(data)
    (data / "empty_class" / "train" / "c").mkdir()
    _images(data / "empty_splits", count=0)
    _images(data / "junk")
    (data / "junk" / "train" / "b" / "junk.jpg").write_bytes(np.random.default_rng(1).bytes(99))
    (root / "a_file").write_text("")
    return root


# (id, program, arguments, words the line must hold). {tmp}: the case's own folder; {in}: the
# module's inputs; {cf}, {data}, {w}: its config files, image folders and weight files.
# fmt: off
CASES = [
    # --- config keys: unknown (with the level's valid keys), wrong type, out of range, sizes
    ("unknown_key", "main", [DIGITS, W, "--config.foo=1"],
     ["unknown config key 'foo'", "config has:", "batch_size", "num_steps"]),
    ("misspelled_key", "main", [DIGITS, W, "--config.num_stepz=5"],
     ["'num_stepz'", "Did you mean 'num_steps'"]),
    ("model_num_classes", "main", [DIGITS, W, "--config.model.num_classes=5"],
     ["'num_classes'", "there is --config.data.num_classes", "config.model has:", "widths"]),
    ("model_dtype", "main", [DIGITS, W, "--config.model.dtype=float16"],
     ["'dtype'", "there is --config.dtype", "config.model has:"]),
    ("moved_to_ops", "main", [DIGITS, W, "--config.model.conv_grad=dot"],
     ["unknown config key 'conv_grad'", "an execution setting now: --config.ops.conv"]),
    ("nested_unknown", "main", [DIGITS, W, "--config.optimizer.lr=0.1"],
     ["'lr'", "config.optimizer has:", "learning_rate"]),
    ("value_as_group", "main", [DIGITS, W, "--config.batch_size.x=1"],
     ["config.batch_size is a value (128)"]),
    ("int_not_a_number", "main", [DIGITS, W, "--config.batch_size=abc"],
     ["--config.batch_size='abc' is not an integer", "the recipe has 128"]),
    ("int_given_float", "main", [DIGITS, W, "--config.num_steps=1.5"],
     ["--config.num_steps='1.5' is not an integer"]),
    ("bool", "main", [DIGITS, W, "--config.optimizer.nesterov=maybe"],
     ["--config.optimizer.nesterov='maybe' is not true or false"]),
    ("float", "main", [DIGITS, W, "--config.optimizer.learning_rate=fast"],
     ["learning_rate='fast' is not a number"]),
    ("tuple_of_words", "main", [DIGITS, W, "--config.model.stage_sizes=abc"],
     ["model.stage_sizes=('abc',) must be a tuple of positive integers"]),
    ("dtype_value", "main", [DIGITS, W, "--config.dtype=float16"],
     ["dtype='float16' is not one of", "bfloat16"]),
    ("parallel_value", "main", [DIGITS, W, "--config.parallel=pjit"],
     ["parallel='pjit' is not one of", "'jit'", "'pmap'", "'shard_map'"]),
    ("parallel_shard_map_batch", "main",
     [DIGITS, W, "--config.parallel=shard_map", "--config.batch_size=100"],
     ["batch_size=100 is not divisible by the 8 devices", "96 or 104"]),
    ("negative_lr", "main", [DIGITS, W, "--config.optimizer.learning_rate=-0.1"],
     ["optimizer.learning_rate=-0.1 must be positive"]),
    ("momentum", "main", [DIGITS, W, "--config.optimizer.momentum=1.5"],
     ["optimizer.momentum=1.5 must be in [0, 1)"]),
    ("label_smoothing", "main", [DIGITS, W, "--config.label_smoothing=1"],
     ["label_smoothing=1.0 must be in [0, 1)"]),
    ("image_size_zero", "main", [DIGITS, W, "--config.data.image_size=0"],
     ["data.image_size=0 must be positive"]),
    ("digits_image_size", "main", [DIGITS, W, "--config.data.image_size=32"],
     ["data.image_size=32: digits are 8x8"]),
    ("batch_size_zero", "main", [DIGITS, W, "--config.batch_size=0"],
     ["batch_size=0 must be positive"]),
    ("batch_size_devices", "main", [DIGITS, W, "--config.batch_size=100"],
     ["batch_size=100 is not divisible by the 8 devices", "96 or 104"]),
    ("eval_batch_size_devices", "main", [DIGITS, W, "--config.eval_batch_size=12"],
     ["eval_batch_size=12 is not divisible by the 8 devices", "8 or 16"]),
    ("num_devices", "main", [DIGITS, W, "--config.num_devices=100"],
     ["num_devices=100 must be in [1, 8]"]),
    ("epochs_and_steps", "main", [DIGITS, W, "--config.num_epochs=2", "--config.num_steps=10"],
     ["--config.num_epochs=2.0 and --config.num_steps=10 both given; give one"]),
    ("neither_epochs_nor_steps", "main", [DIGITS, W, "--config.num_steps=none"],
     ["set exactly one of num_epochs=None and num_steps=None"]),
    ("warmup_past_the_end", "main", [DIGITS, W, "--config.num_steps=10"],
     ["schedule.warmup=50 steps must be below num_steps=10"]),
    ("digits_num_classes", "main", [DIGITS, W, "--config.data.num_classes=5"],
     ["data.num_classes=5", "'digits' has 10 classes"]),
    ("data_name", "main", [DIGITS, W, "--config.data.name=svhn"],
     ["data.name='svhn' is not one of", "cifar10"]),
    ("fmnist_no_folder", "main", [FMNIST, W, "--config.data.folder={tmp}/nowhere"],
     ["/nowhere", "make data-fashion-mnist", "--config.data.folder"]),
    ("fmnist_truncated", "main", [FMNIST, W, *TINY, "--config.data.folder={data}/idx_truncated"],
     ["idx_truncated/train-images-idx3-ubyte.gz", "truncated"]),
    ("fmnist_label", "main", [FMNIST, W, *TINY, "--config.data.folder={data}/idx_label"],
     ["idx_label/t10k-labels-idx1-ubyte.gz", "10"]),
    ("fmnist_schedule", "main", [FMNIST + ",slow", W], ["schedule 'slow' is not one of"]),
    ("fmnist_augment", "main", [FMNIST, W, "--config.data.augment=rotate"],
     ["data.augment='rotate' is not one of"]),
    ("fmnist_erasing", "main", [FMNIST, W, "--config.data.random_erasing=1.5"],
     ["data.random_erasing=1.5", "[0, 1]"]),
    ("learning_rate_inf", "main", [DIGITS, W, "--config.optimizer.learning_rate=inf"],
     ["optimizer.learning_rate=inf must be positive and finite"]),
    ("weight_decay_inf", "main", [DIGITS, W, "--config.optimizer.weight_decay=1e400"],
     ["optimizer.weight_decay=inf must be >= 0 and finite"]),
    ("population_unparsable", "main",
     [DIGITS, W, "--config.population.size=2", "--config.population.learning_rate=(0.1,abc)"],
     ["population.learning_rate=", "'(0.1,abc)' is not a finite number", "one per member"]),
    ("population_nan", "main",
     [DIGITS, W, "--config.population.size=2", "--config.population.weight_decay=(0.1,nan)"],
     ["population.weight_decay=", "is not a finite number"]),
    ("population_inf", "main",
     [DIGITS, W, "--config.population.size=2", "--config.population.learning_rate=(0.1,1e400)"],
     ["population.learning_rate=(0.1, inf): inf is not a finite number"]),
    ("model_name", "main", [DIGITS, W, "--config.model.name=resnet19"],
     ["unknown model 'resnet19'; similar: resnet18"]),
    ("ops_value", "main", [DIGITS, W, "--config.ops.conv=fft"],
     ["ops.conv='fft' is not one of ('lax', 'dot'"]),
    ("distributed_partial", "main",
     [DIGITS, W, "--config.distributed.enabled=true", "--config.distributed.num_processes=2"],
     ["distributed:", "missing", "coordinator_address"]),
    # --- flags
    ("no_workdir", "main", [DIGITS], ["--workdir is required"]),
    ("no_config", "main", [W], ["--config is required"]),
    ("unknown_flag", "main", [DIGITS, W, "--wokdir=x"], ["'wokdir'", "Did you mean: workdir"]),
    ("positional", "main", [DIGITS, W, "extra"], ["unexpected arguments ['extra']"]),
    # --- config files
    ("config_missing", "main", ["--config=experiments/configs/nope.py", W],
     ["No such file or directory: 'experiments/configs/nope.py'", "digits, fake_data"]),
    ("config_no_suffix", "main", ["--config=experiments/configs/digits", W],
     ["did you mean experiments/configs/digits.py?"]),
    ("config_directory", "main", ["--config=experiments/configs", W], ["Is a directory"]),
    ("config_syntax", "main", ["--config={cf}/syntax.py", W],
     ["syntax.py line 1: invalid syntax (not valid Python)"]),
    ("config_import", "main", ["--config={cf}/imports.py", W],
     ["imports.py line 1: ModuleNotFoundError", "resflax_no_such_module", "RESFLAX_DEBUG=1"]),
    ("config_no_get_config", "main", ["--config={cf}/no_get_config.py", W],
     ["no_get_config.py defines no get_config()"]),
    ("config_returns_none", "main", ["--config={cf}/returns_none.py", W],
     ["get_config() returned None, not a ConfigDict"]),
    ("config_raises", "main", ["--config={cf}/raises.py", W],
     ["raises.py line 2: KeyError: 'model'", "RESFLAX_DEBUG=1"]),
    ("config_argument_unknown", "main", ["--config=experiments/configs/cifar10.py:57", W],
     ["'57' is not in the table; valid depths: 20, 32, 44, 56, 110, 1202"]),
    ("config_takes_no_argument", "main", ["--config={cf}/no_argument.py:x", W],
     ["get_config() takes 0 positional arguments but 1 was given"]),
    # --- populations: size, per-member lists, what may vary
    ("population_size_zero", "main", [DIGITS, W, "--config.population.size=0"],
     ["population.size=0 must be an integer >= 1"]),
    ("population_size_negative", "main", [DIGITS, W, "--config.population.size=-2"],
     ["population.size=-2 must be an integer >= 1"]),
    ("population_list_length", "main",
     [DIGITS, W, "--config.population.size=3", "--config.population.learning_rate=(0.1,0.2)"],
     ["population.learning_rate has 2 values for population.size=3", "give 3"]),
    ("population_list_without_size", "main",
     [DIGITS, W, "--config.population.seed=(1,2)"],
     ["population.seed is set but population.size is not"]),
    ("population_bad_member_value", "main",
     [DIGITS, W, "--config.population.size=2", "--config.population.momentum=(0.9,1.5)"],
     ["population.momentum=(0.9, 1.5): 1.5 is invalid", "[0, 1)"]),
    ("population_varies_architecture", "main",
     [DIGITS, W, "--config.population.size=2", "--config.population.stage_sizes=(1,1,1)"],
     ["'stage_sizes'", "cannot vary within a population", "population.learning_rate"]),
    ("population_data_order", "main",
     [DIGITS, W, "--config.population.size=2", "--config.population.data_order=mine"],
     ["population.data_order='mine' is not one of ('shared', 'own')"]),
    ("population_pmap", "main",
     [DIGITS, W, "--config.population.size=2", "--config.parallel=pmap"],
     ["parallel='pmap'", "parallel='jit' only"]),
    # --- the workdir
    ("workdir_is_a_file", "main", [DIGITS, "--workdir={in}/a_file"],
     ["a_file' is a file, not a directory"]),
    ("workdir_under_a_file", "main", [DIGITS, "--workdir={in}/a_file/w"],
     ["cannot be written", "Not a directory"]),
    ("workdir_in_proc", "main", [DIGITS, "--workdir=/proc/resflax-test"],
     ["--workdir='/proc/resflax-test' cannot be written"]),
    ("workdir_in_sys", "main", [DIGITS, "--workdir=/sys/resflax-test"],
     ["--workdir='/sys/resflax-test' cannot be written"]),
    pytest.param(
        "main", [DIGITS, "--workdir={tmp}/read_only/w"],
        ["cannot be written", "Permission denied"],
        marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes to a 0o500 directory"),
        id="workdir_read_only",
    ),
    ("workdir_empty", "main", [DIGITS, "--workdir="], ["--workdir is empty"]),
    # --- data
    ("pipeline_unknown", "main", [DIGITS, W, "--config.data.pipeline=nvjpeg"],
     ["data.pipeline='nvjpeg' is not one of ('tfdata', 'dali')"]),
    ("dali_for_digits", "main", [DIGITS, W, "--config.data.pipeline=dali"],
     ["data.pipeline='dali' reads ('image_folder', 'imagenet2012', 'imagenette')",
      "not data.name='digits'", "data.pipeline='tfdata'"]),
    ("dali_under_pmap", "main",
     [DIGITS, W, *FOLDER, "--config.data.folder={data}/good", "--config.data.pipeline=dali",
      "--config.parallel=pmap"],
     ["data.pipeline='dali'", "use parallel='jit' or 'shard_map', not parallel='pmap'"]),
    ("dali_own_member_order", "main",
     [DIGITS, W, *FOLDER, "--config.data.folder={data}/good", "--config.data.pipeline=dali",
      "--config.population.size=2", "--config.population.data_order=own"],
     ["population.data_order='own'", "data.pipeline='tfdata'"]),
    ("dali_not_installed", "main",
     [DIGITS, W, *TINY, *FOLDER, "--config.data.folder={data}/good",
      "--config.data.pipeline=dali"],
     ["data.pipeline='dali' needs NVIDIA DALI, which is not installed",
      "pip install 'resflax[dali]' (in a checkout: make install-dali)"]),
    ("folder_missing", "main", [DIGITS, W, *FOLDER, "--config.data.folder={data}/nope"],
     ["data.folder='", "nope'", "no such directory", "point data.folder at it"]),
    ("folder_empty", "main", [DIGITS, W, *FOLDER, "--config.data.folder={data}/empty"],
     ["has no 'train' folder (data.train_split); found: []"]),
    ("folder_no_eval_split", "main", [DIGITS, W, *FOLDER, "--config.data.folder={data}/no_test"],
     ["has no 'test' folder (data.eval_split); found: ['train']"]),
    ("folder_one_class", "main", [DIGITS, W, *FOLDER, "--config.data.folder={data}/one_class"],
     ["1 class folder(s) ['a']; at least 2 classes are needed"]),
    ("folder_empty_class", "main",
     [DIGITS, W, *FOLDER, "--config.data.folder={data}/empty_class"],
     ["empty_class/train/c' holds no .jpg/.jpeg/.png images"]),
    ("folder_no_images", "main", [DIGITS, W, *FOLDER, "--config.data.folder={data}/empty_splits"],
     ["empty_splits/train/a' holds no"]),
    ("folder_undecodable", "main", [DIGITS, W, *FOLDER, "--config.data.folder={data}/junk"],
     ["junk/train/b/junk.jpg' starts with", "not a JPEG, PNG, GIF or BMP file"]),
    ("folder_num_classes", "main",
     [DIGITS, W, *FOLDER, "--config.data.folder={data}/good", "--config.data.num_classes=5"],
     ["data.num_classes=5, but 'image_folder' has 2 classes"]),
    ("tfds_not_prepared", "main",
     ["--config=experiments/configs/cifar10.py:56", W, "--config.data.data_dir={tmp}"],
     ["data set 'cifar10' is not prepared in", "tfds build cifar10"]),
    # --- weights
    ("init_from_a_weights_file", "main", [DIGITS, W, "--config.init_from={w}/code.pth"],
     ["init_from=", "code.pth' is a file; convert it first", "python -m resflax.convert"]),
    ("init_from_not_converted", "main", [DIGITS, W, *TINY, "--config.init_from={tmp}"],
     ["is not a converted checkpoint (no meta.json + variables)"]),
    ("safetensors_garbage", "convert", [*CONVERT, "--src={w}/garbage.safetensors"],
     ["garbage.safetensors' is not a readable .safetensors file"]),
    ("safetensors_truncated", "convert", [*CONVERT, "--src={w}/truncated.safetensors"],
     ["truncated.safetensors' is not a readable .safetensors file"]),
    ("pth_garbage", "convert", [*CONVERT, "--src={w}/garbage.pth"],
     ["garbage.pth: refused by torch.load(weights_only=True)", "nothing in it was run"]),
    ("pth_truncated", "convert", [*CONVERT, "--src={w}/truncated.pth"],
     ["truncated.pth' is not a readable torch checkpoint"]),
    ("pth_empty", "convert", [*CONVERT, "--src={w}/empty.pth"],
     ["empty.pth' is not a readable torch checkpoint"]),
    ("pth_pickled_code", "convert", [*CONVERT, "--src={w}/code.pth"],
     ["code.pth: refused by torch.load(weights_only=True)"]),
    ("pth_pickled_code_zip", "convert", [*CONVERT, "--src={w}/code_zip.pth"],
     ["code_zip.pth: refused by torch.load(weights_only=True)", "it holds a pickled",
      "could run code"]),
    ("pth_without_torch", "convert", [*CONVERT, "--src={w}/garbage.pth"],
     ["garbage.pth'", "needs torch, which is not installed", "pip install 'resflax[convert]'",
      "make install-convert"]),
    ("safetensors_without_safetensors", "convert", [*CONVERT, "--src={w}/full.safetensors"],
     ["full.safetensors'", "needs safetensors, which is not installed",
      "pip install 'resflax[convert]'"]),
    ("weights_missing", "convert", [*CONVERT, "--src={w}/nope.pth"],
     ["weights file", "nope.pth' does not exist"]),
    ("weights_format", "convert", [*CONVERT, "--src={w}/w.npz"],
     ["'w.npz': unknown format; valid: ('.safetensors', '.pth'"]),
    ("weights_not_a_classifier", "convert", [*CONVERT, "--src={w}/no_fc.safetensors"],
     ["no fc.weight, not a torchvision classifier state dict"]),
    ("convert_model", "convert", ["--model=resnet19", "--dst={tmp}/o", "--src={w}/full.pth"],
     ["unknown model 'resnet19'"]),
    ("convert_arguments", "convert", ["--model=resnet18"],
     ["the following arguments are required: --src, --dst", "usage: python -m resflax.convert"]),
    ("convert_dst_is_a_file", "convert",
     ["--model=resnet18", "--src={w}/full.safetensors", "--dst={in}/a_file"],
     ["--dst=", "a_file' is a file"]),
]
# fmt: on
TORCH_CASES = {
    "pth_empty",
    "pth_garbage",
    "pth_pickled_code",
    "pth_pickled_code_zip",
    "pth_truncated",
}


def _fill(args: list[str], inputs: Path, tmp: Path) -> list[str]:
    paths = {"{tmp}": tmp, "{in}": inputs, "{cf}": inputs / "configs", "{data}": inputs / "data",
             "{w}": inputs / "weights"}  # fmt: skip
    for key, value in paths.items():
        args = [a.replace(key, str(value)) for a in args]
    return args


def run_main(argv: list[str], monkeypatch) -> int:
    """`python -m resflax.main` in this process: absl's flags (and the override flags
    ml_collections defined for the last case) reset; XLA flags and malloc left as they are."""
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    argv = ["resflax.main", *argv]
    monkeypatch.setattr(sys, "argv", argv)  # where ml_collections reads the overrides
    # ml_collections loads every config file as module "config_config"; load_module() would
    # run the next file inside the last one's namespace, keeping its get_config.
    monkeypatch.delitem(sys.modules, "config_config", raising=False)
    monkeypatch.setattr(runtime, "apply_cpu_flags", lambda flags: [])
    monkeypatch.setattr(runtime, "apply_host_malloc", lambda mode: check_mode(mode) or "system")
    try:
        cli_main.main(cli_main._parse_flags(argv))
    except SystemExit as e:
        return e.code
    return 0


def run_convert(argv: list[str]) -> int:
    try:
        return convert_main(argv)
    except SystemExit as e:
        return e.code


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resflax: error: "), err[-3000:]
    return lines[0]


@pytest.mark.parametrize(
    ("program", "args", "words"),
    [c if isinstance(c, ParameterSet) else pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_bad_input_is_one_line_naming_it(program, args, words, inputs, tmp_path, monkeypatch,
                                         capfd, request):  # fmt: skip
    name = request.node.callspec.id
    if name in TORCH_CASES:
        pytest.importorskip("torch")
    if name == "pth_without_torch":
        monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, as without it
    if name == "safetensors_without_safetensors":
        for module in ("safetensors", "safetensors.numpy"):
            monkeypatch.setitem(sys.modules, module, None)
    if name == "dali_not_installed":
        monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as where DALI is not installed
    if name == "workdir_read_only":
        (tmp_path / "read_only").mkdir(mode=0o500)
    monkeypatch.delenv("RESFLAX_DEBUG", raising=False)
    argv = _fill(args, inputs, tmp_path)
    capfd.readouterr()
    status = run_main(argv, monkeypatch) if program == "main" else run_convert(argv)
    line = one_line(capfd.readouterr().err)
    assert status == 1, line
    for word in words:
        assert word in line, (word, line)
    # Nothing in a hostile pickle ran.
    assert not list((inputs / "weights").glob("ran_*"))


def test_the_table_is_large_enough():
    assert len(CASES) >= 40


def test_pickled_code_is_live_but_never_runs_through_the_cli(inputs, tmp_path, capfd):
    """The payload works (plain pickle runs it), yet the converter, which `make finetune`
    calls with SRC, refuses the file in one line and nothing is created."""
    pytest.importorskip(NEEDS_TORCH)
    marker = tmp_path / "ran"
    (tmp_path / "live.pth").write_bytes(pickle.dumps({"fc.weight": Payload(marker)}))
    pickle.loads((tmp_path / "live.pth").read_bytes())  # the control: this does run it
    assert marker.is_dir()
    marker.rmdir()
    status = run_convert(["--model=resnet18", f"--src={tmp_path / 'live.pth'}",
                          f"--dst={tmp_path / 'out'}"])  # fmt: skip
    assert status == 1 and "refused by torch.load(weights_only=True)" in one_line(
        capfd.readouterr().err
    )
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_debug_switch_shows_the_traceback_in_process(inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("RESFLAX_DEBUG", "1")
    with pytest.raises(AttributeError):  # ml_collections' own, unexplained
        run_main([DIGITS, f"--workdir={tmp_path}", "--config.foo=1"], monkeypatch)
    with pytest.raises(ValueError, match="does not exist"):
        run_convert(["--model=resnet18", f"--src={tmp_path}/nope.pth", f"--dst={tmp_path}/o"])


def _subprocess(args: list[str], **env: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})  # fmt: skip
    return done.returncode, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["resflax.main", DIGITS, W, "--config.model.num_classes=5"], ["config.model has:"]),
        # Starts JAX's backends: jax's INFO line about absent TPUs must not show.
        (["resflax.main", DIGITS, W, "--config.eval_batch_size=12"], ["eval_batch_size=12"]),
        (["resflax.main", DIGITS, "--workdir=/sys/resflax-test"], ["cannot be written"]),
        # Imports TensorFlow and tfds before failing.
        (["resflax.main", DIGITS, W, *FOLDER, "--config.data.folder={data}/junk"], ["junk.jpg"]),
        (["resflax.convert", *CONVERT, "--src={w}/code.pth"], ["refused by torch.load"]),
    ],
    ids=["config_key", "devices", "workdir", "image", "pickle"],
)
def test_the_real_program_prints_one_line(args, words, inputs, tmp_path):
    if args[0] == "resflax.convert":
        pytest.importorskip(NEEDS_TORCH)
    status, err = _subprocess(_fill(args, inputs, tmp_path))
    line = one_line(err)
    assert status == 1 and all(w in line for w in words), line
    assert not list((inputs / "weights").glob("ran_*"))


@pytest.mark.slow
def test_debug_switch_shows_the_traceback(tmp_path):
    args = ["resflax.main", DIGITS, f"--workdir={tmp_path}", "--config.data.image_size=0"]
    status, err = _subprocess(args, RESFLAX_DEBUG="1")
    assert status == 1 and "Traceback" in err
    assert "ValueError: data.image_size=0 must be positive" in err
