"""The command line in separate processes: one-line errors with exit status 1 for bad input,
bitwise-exact resume across processes, SIGKILL during a checkpoint save, SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from resflax.kernels import onednn
from tests.saved import metric_lines, saved_state, tree_hash

ROOT = Path(__file__).parents[1]
DIGITS = "--config=experiments/configs/digits.py"
# ResNet-20's layout, tiny: these tests are about the process, not the model.
TINY = [
    "--config.model.stage_sizes=(1, 1, 1)", "--config.model.widths=(4, 8, 16)",
    "--config.model.stem_width=4", "--config.prng_impl=rbg", "--config.batch_size=64",
    "--config.schedule.warmup=2", "--config.eval_every_steps=0", "--config.log_every_steps=2",
]  # fmt: skip


def start(workdir, *flags, config=DIGITS):
    """The CLI in a new process; its output goes to a file (a pipe nobody reads could fill
    and stall it). Returns the process and a function reading its output so far."""
    log = Path(f"{workdir}.{time.monotonic_ns()}.log")
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "resflax.main", config, f"--workdir={workdir}", *flags],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return process, log.read_text


def run(workdir, *flags, config=DIGITS, timeout=300):
    process, output = start(workdir, *flags, config=config)
    try:
        process.wait(timeout=timeout)
    finally:
        process.kill()
    return process.returncode, output()


def error_line(stderr):
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("resflax: error: "), stderr[-2000:]
    return lines[-1]


def steps_saved(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


C10_57 = "--config=experiments/configs/cifar10.py:57"
NOPE = "--config=experiments/configs/nope.py"
C10_56 = "--config=experiments/configs/cifar10.py:56"
BAD_INPUT = [
    (["--config.model.name=resnet19"], DIGITS, "unknown model 'resnet19'; similar: resnet18"),
    ([], C10_57, "'57' is not in the table; valid depths: 20, 32, 44, 56, 110, 1202"),
    (["--config.num_stepz=5"], DIGITS, "unknown config key 'num_stepz'; Did you mean"),
    (["--config.batch_size=100"], DIGITS, "batch_size=100 is not divisible by the 8 devices"),
    (["--config.optimizer.learning_rate=-0.1"], DIGITS, "learning_rate=-0.1 must be positive"),
    (["--config.data.name=svhn"], DIGITS, "data.name='svhn' is not one of"),
    (["--config.xla_cpu_flags=xla_cpu_ftz"], DIGITS, "entry 'xla_cpu_ftz' is not an XLA flag"),
    (["--config.host_malloc=keep"], DIGITS, "host_malloc='keep' is not one of"),
    (["--config.ops.name=fast"], DIGITS, "ops.name='fast' is not one of ('auto', 'plain')"),
    (["--config.ops.conv=fft"], DIGITS, "ops.conv='fft' is not one of ('lax', 'dot'"),
    # The compiler settings left the model: asked for there, the key does not exist.
    (
        ["--config.model.conv_grad=dot"],
        DIGITS,
        "unknown config key 'conv_grad'; an execution setting now: --config.ops.conv",
    ),
    ([], NOPE, "No such file or directory: 'experiments/configs/nope.py'"),
    (
        ["--config.data.data_dir=/tmp/resflax-no-data"],
        C10_56,
        "data set 'cifar10' is not prepared in",
    ),
]


@pytest.mark.parametrize(("flags", "config", "expected"), BAD_INPUT)
def test_bad_input_is_one_line_naming_the_value(tmp_path, flags, config, expected):
    status, err = run(tmp_path / "w", *flags, config=config)
    assert status == 1
    assert expected in error_line(err)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """8 steps in one process, checkpoints at 4 and 8."""
    workdir = tmp_path_factory.mktemp("straight")
    status, err = run(workdir, *TINY, "--config.num_steps=8", "--config.checkpoint_every_steps=4")
    assert status == 0, err[-3000:]
    return workdir


@pytest.mark.slow
def test_resume_in_a_new_process_is_bitwise_equal(straight, tmp_path):
    # The resumed run also keeps freed memory (the straight one does not): same bits.
    flags = [*TINY, "--config.num_steps=8", "--config.checkpoint_every_steps=4",
             "--config.host_malloc=retain"]  # fmt: skip
    status, err = run(tmp_path, *flags, "--config.stop_at_step=3")
    assert status == 0, err[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "stopped"
    status, err = run(tmp_path, *flags)
    assert status == 0, err[-3000:]
    assert "resuming at step 3" in err
    assert_bitwise_equal(saved_state(straight, 8), saved_state(tmp_path, 8))
    assert metric_lines(straight) == metric_lines(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final_eval"]["num_examples"] == 359
    # The CLI set malloc to keep freed memory before JAX started (runtime/host_memory.py).
    glibc = "glibc" in (os.confstr("CS_GNU_LIBC_VERSION") or "")
    assert summary["execution"]["host_malloc"] == ("retain" if glibc else "system")


@pytest.mark.slow
def test_workdir_of_another_model_is_refused_and_kept(straight):
    before = tree_hash(straight)
    status, err = run(straight, *TINY, "--config.num_steps=8", "--config.model.name=resnet32")
    assert status == 1
    assert "holds checkpoints of {'model': 'resnet20'" in error_line(err)
    assert tree_hash(straight) == before


@pytest.mark.slow
def test_a_run_resumes_under_another_execution_policy(tmp_path):
    """The policy is an execution detail: a run started plain resumes under auto (and is
    recorded as such), where a model field would have been refused as another model."""
    flags = [*TINY, "--config.num_steps=6", "--config.checkpoint_every_steps=2"]
    status, err = run(tmp_path, *flags, "--config.ops.name=plain", "--config.stop_at_step=2")
    assert status == 0, err[-3000:]
    assert "ops: plain" in err
    first = json.loads((tmp_path / "summary.json").read_text())["execution"]["ops"]
    assert first == {"conv": "lax", "stem_conv": "lax", "norm": "flax", "fuse_relu": False,
                     "act": "relu", "pool": "lax"}  # fmt: skip
    status, err = run(tmp_path, *flags, "--config.ops.pool=lax")
    assert status == 0, err[-3000:]
    assert "resuming at step 2" in err and "resuming under ops" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished"
    # auto() on 8 CPU devices, with the one field the command line set.
    want = {"conv": "dot", "stem_conv": "lax", "norm": "closed", "fuse_relu": True,
            "act": "relu_stored", "pool": "lax"}  # fmt: skip
    assert summary["execution"]["ops"] == want
    saved = json.loads((tmp_path / "checkpoints/6/data/metadata").read_text())
    assert saved["execution"]["ops"] == summary["execution"]["ops"]


@pytest.mark.slow
def test_a_checkpoint_written_before_the_policy_left_the_model_resumes_bitwise(tmp_path):
    """Written by resflax 3b7c9a3 with --config.model.conv_grad=dot (so its fingerprint holds
    that field): the same variables load, the workdir is not refused, and auto() computes on
    8 CPU devices exactly what that code did: the same parameters to the bit at step 6."""
    import shutil

    fixture = ROOT / "tests/fixtures/pre_ops_checkpoint"
    expected = json.loads((fixture / "expected.json").read_text())
    shutil.copytree(fixture, tmp_path / "w", ignore=shutil.ignore_patterns("expected.json"))
    flags = [*TINY, "--config.num_steps=6", "--config.checkpoint_every_steps=2",
             "--config.max_to_keep=1"]  # fmt: skip
    status, err = run(tmp_path / "w", *flags)
    assert status == 0, err[-3000:]
    assert "resuming at step 4" in err
    summary = json.loads((tmp_path / "w/summary.json").read_text())
    want = expected["continued_to_step_6_by_that_code"]
    # Bitwise as that code computed on a CPU of the same kind (XLA:CPU's sums follow the
    # vector units): the digests recorded per kind; a new kind records its own (expected.json).
    assert summary["param_digest"] in want["param_digest_by_cpu"].values(), (
        summary["param_digest"],
        want["record_a_new_cpu"],
    )
    assert summary["final_eval"]["top1"] == want["final_eval_top1"]


@pytest.mark.slow
def test_sigkill_during_a_save_resumes_from_the_last_complete_step(straight, tmp_path):
    flags = [*TINY, "--config.num_steps=8", "--config.checkpoint_every_steps=1"]
    process, _ = start(tmp_path, *flags)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            checkpoints = tmp_path / "checkpoints"
            names = [p.name for p in checkpoints.iterdir()] if checkpoints.exists() else []
            if any("tmp" in n for n in names) and any(n.isdigit() for n in names):
                process.send_signal(signal.SIGKILL)  # mid-save: a step is half written
                break
            time.sleep(0.005)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL, "the run ended before a save could be cut"
    complete = steps_saved(tmp_path)
    assert complete and max(complete) < 8
    status, err = run(tmp_path, *flags)
    assert status == 0, err[-3000:]
    assert f"resuming at step {max(complete)}" in err
    assert_bitwise_equal(saved_state(straight, 8), saved_state(tmp_path, 8))
    assert metric_lines(straight) == metric_lines(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_ctrl_c_saves_the_current_step_and_exits_zero(tmp_path, signum):
    """A scheduler's SIGTERM and a user's Ctrl-C are treated alike: save, exit 0, resume."""
    flags = [*TINY, "--config.num_steps=5000", "--config.checkpoint_every_steps=0"]
    process, output = start(tmp_path, *flags)
    deadline = time.monotonic() + 240
    try:
        metrics = tmp_path / "metrics.jsonl"
        while time.monotonic() < deadline and process.poll() is None:
            if metrics.exists() and metrics.read_text().count("\n") >= 2:
                process.send_signal(signum)
                break
            time.sleep(0.05)
        process.wait(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, output()[-3000:]
    assert "Traceback" not in output() and f"{signum.name} received: saving" in output()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "preempted" and 4 <= summary["step"] < 5000
    assert steps_saved(tmp_path) == [summary["step"]]
    stop = summary["step"] + 4
    status, err = run(tmp_path, *flags, f"--config.stop_at_step={stop}")
    assert status == 0, err[-3000:]
    assert f"resuming at step {summary['step']}" in err
    assert steps_saved(tmp_path)[-1] == stop


@pytest.mark.slow
def test_default_run_reaches_the_accuracy_bar(tmp_path, monkeypatch):
    """`make train`'s job, unchanged, on one CPU device as on a fresh machine: ≥ 97% test
    accuracy (the time bar, < 5 minutes, is measured by hand:
    experiments/results/train_digits.md)."""
    monkeypatch.delenv("XLA_FLAGS")
    status, out = run(tmp_path, timeout=600)
    assert status == 0, out[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["devices"] == 1 and summary["step"] == 600
    # One CPU device: "auto" runs the kxk convolutions in oneDNN where `make install` built them.
    assert summary["execution"]["ops"]["conv"] == ("onednn" if onednn.available() else "dot")
    assert summary["final_eval"]["num_examples"] == 359
    assert summary["final_eval"]["top1"] >= 0.97


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_start_up_is_one_line_and_the_shells_status(tmp_path, signum):
    """Before the loop takes the signals over there is nothing to save: one line, exit
    128 + the signal's number, no traceback, nothing written in the workdir. (The signal is
    sent once the workdir has been checked, seconds before the first step; in the second
    or so before resflax.main runs at all, while Python imports jax, a signal has its default
    effect.)"""
    workdir = tmp_path / "w"
    process, output = start(workdir, *TINY)
    deadline = time.monotonic() + 120
    while not workdir.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signum)
    try:
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, output()[-3000:]
    assert output().strip().splitlines() == [
        f"resflax: error: stopped by {signum.name} outside the training steps (start-up or "
        "summary): nothing more was saved; the newest checkpoint, if any, is intact"
    ]
    assert {p.name for p in workdir.iterdir()} <= {"resflax.lock"}  # no checkpoint, no metrics
