"""A run's length from the command line: `--config.num_steps` on a recipe written in epochs (or
`--config.num_epochs` on one written in steps) replaces the recipe's length, `none` clears a
key explicitly, and numbers for both are refused in one line (tests/test_bad_inputs.py).

Through the CLI in this process (test_bad_inputs' runner), with the training itself stubbed:
what reaches it is the config the run would use. One real run checks the step count.
"""

from __future__ import annotations

import json

import pytest

import resflax.train.loop as loop
from resflax.cli_flags import take_length_none
from resflax.train.config import to_steps
from tests.test_bad_inputs import DIGITS, one_line, run_main

# ml_collections loads config files with the deprecated load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")
EPOCHS = "--config=experiments/configs/imagenet.py:18"  # 90 epochs
STEPS = DIGITS  # 600 steps


@pytest.fixture
def trained(monkeypatch):
    """The config `python -m resflax.main` hands to training (nothing is trained)."""
    seen = {}

    def fake(config, workdir):
        seen["config"] = config
        return {"status": "finished", "step": 0, "total_steps": 0, "final_eval": None}

    monkeypatch.setattr(loop, "train_and_evaluate", fake)
    return seen


def _length(args: list[str], tmp_path, monkeypatch, trained) -> tuple:
    assert run_main([*args, f"--workdir={tmp_path}/w"], monkeypatch) == 0
    config = trained["config"]
    return config.num_epochs, config.num_steps


@pytest.mark.parametrize(
    ("args", "length"),
    [
        ([EPOCHS], (90.0, None)),
        ([EPOCHS, "--config.num_steps=12"], (None, 12)),  # epochs -> steps
        ([EPOCHS, "--config.num_steps", "12"], (None, 12)),
        ([EPOCHS, "--config.num_epochs=none", "--config.num_steps=12"], (None, 12)),
        ([EPOCHS, "--config.num_epochs", "None", "--config.num_steps=12"], (None, 12)),
        ([STEPS], (None, 600)),
        ([STEPS, "--config.num_epochs=2.5"], (2.5, None)),  # steps -> epochs
        ([STEPS, "--config.num_steps=None", "--config.num_epochs=2.5"], (2.5, None)),
        ([STEPS, "--config.num_steps=100"], (None, 100)),  # the same unit, as before
        ([STEPS, "--config.num_epochs=none", "--config.num_epochs=3"], (3.0, None)),
    ],
    ids=["epochs", "epochs_to_steps", "two_arguments", "explicit_none", "explicit_none_apart",
         "steps", "steps_to_epochs", "explicit_none_steps", "same_unit", "last_wins"],
)  # fmt: skip
def test_a_length_on_the_command_line_replaces_the_recipes(
    args, length, tmp_path, monkeypatch, trained
):
    assert _length(args, tmp_path, monkeypatch, trained) == length


def test_steps_to_epochs_counts_steps_from_the_epochs(tmp_path, monkeypatch, trained):
    _length([STEPS, "--config.num_epochs=2"], tmp_path, monkeypatch, trained)
    assert to_steps(trained["config"], steps_per_epoch=11).total == 22


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([STEPS, "--config.num_epochs=2", "--config.num_steps=10"],
         "--config.num_epochs=2.0 and --config.num_steps=10 both given; give one"),
        ([STEPS, "--config.num_steps=none"],
         "set exactly one of num_epochs=None and num_steps=None"),
        ([STEPS, "--config.num_epochs=many"], "--config.num_epochs='many' is not a number"),
    ],
    ids=["both", "neither", "not_a_number"],
)  # fmt: skip
def test_a_length_that_cannot_be_is_one_line(args, words, tmp_path, monkeypatch, capfd):
    capfd.readouterr()
    assert run_main([*args, f"--workdir={tmp_path}/w"], monkeypatch) == 1
    assert words in one_line(capfd.readouterr().err)


def test_none_is_taken_out_before_absl_reads_numbers():
    argv = ["m", "--config=c.py", "--config.num_epochs=NONE", "--config.num_steps", "none",
            "--config.num_steps=4", "--config.batch_size=none", "x"]  # fmt: skip
    kept, cleared = take_length_none(argv)
    assert kept == ["m", "--config=c.py", "--config.num_steps=4", "--config.batch_size=none", "x"]
    assert cleared == {"num_epochs"}


@pytest.mark.slow
def test_a_recipe_in_steps_runs_the_epochs_given(tmp_path, monkeypatch):
    """digits (600 steps) with --config.num_epochs=0.2: 1,438 training images in batches of 128
    are 11 steps an epoch, so 2 steps."""
    tiny = ["--config.model.stage_sizes=(1, 1, 1)", "--config.model.widths=(4, 8, 16)",
            "--config.model.stem_width=4", "--config.schedule.warmup=0",
            "--config.prng_impl=rbg", "--config.eval_every_steps=0"]  # fmt: skip
    workdir = tmp_path / "w"
    args = [STEPS, *tiny, "--config.num_epochs=0.2", f"--workdir={workdir}"]
    assert run_main(args, monkeypatch) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["step"] == summary["total_steps"] == 2
