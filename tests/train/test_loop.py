"""The training loop in-process, on the embedded digits with ResNet-20: what lands in the
workdir, resume under pmap and shard_map, divergence, a workdir holding another model, bf16."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import digits
from resflax.models import count_params, create_model
from resflax.train.loop import NonFiniteLossError, train_and_evaluate
from tests.saved import metric_lines, saved_state, tree_hash


def small_config(**changes):
    c = digits.get_config()
    # ResNet-20's layout at a fraction of its cost: the loop is under test, not the model.
    c.model.stage_sizes, c.model.widths, c.model.stem_width = (1, 1, 1), (4, 8, 16), 4
    c.prng_impl = "rbg"  # compiles the initialisation 5x faster
    c.batch_size = 64
    c.num_steps = 12
    c.schedule.warmup = 2
    c.log_every_steps = 4
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 6
    for key, value in changes.items():
        target = c
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    return c


def tensorboard_scalars(workdir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("digits")
    return workdir, train_and_evaluate(small_config(), workdir)


def test_run_writes_summary_metrics_checkpoints_and_tensorboard(digits_run):
    workdir, summary = digits_run
    assert summary["status"] == "finished" and summary["step"] == 12
    assert summary["final_eval"]["num_examples"] == 359  # every test example, once
    tiny = create_model("resnet20", stage_sizes=(1, 1, 1), widths=(4, 8, 16), stem_width=4)
    assert summary["num_params"] == count_params(tiny, (1, 8, 8, 1))
    assert json.loads((workdir / "summary.json").read_text()) == summary
    lines = metric_lines(workdir)
    assert [(x["step"], x["split"]) for x in lines] == [
        (4, "train"), (6, "eval"), (8, "train"), (12, "train"), (12, "eval"),
    ]  # fmt: skip
    assert all(np.isfinite(x["loss"]) and 0 <= x["top1"] <= 1 for x in lines)
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [6, 12]
    assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "resnet20"
    loss = tensorboard_scalars(workdir, "train/loss")
    assert [step for step, _ in loss] == [4, 8, 12]
    assert loss[-1][1] == pytest.approx(lines[3]["loss"], rel=1e-6)
    assert [step for step, _ in tensorboard_scalars(workdir, "eval/top1")] == [6, 12]


def test_workdir_of_another_model_is_refused_and_left_untouched(digits_run):
    workdir, _ = digits_run
    before = tree_hash(workdir)
    config = small_config(**{"model.name": "resnet32"})
    with pytest.raises(ValueError, match=r"holds checkpoints of .*resnet20.*use another --workdir"):
        train_and_evaluate(config, workdir)
    assert tree_hash(workdir) == before


def test_finished_run_resumes_to_its_summary(digits_run, tmp_path):
    import shutil

    workdir, summary = digits_run
    shutil.copytree(workdir, tmp_path / "w")
    again = train_and_evaluate(small_config(), tmp_path / "w")
    assert again["final_eval"] == summary["final_eval"] and again["step"] == 12
    assert metric_lines(tmp_path / "w") == metric_lines(workdir)


@pytest.mark.slow
def test_pmap_resume_is_bitwise_equal_to_straight_run(tmp_path):
    config = dict(parallel="pmap", num_steps=6, checkpoint_every_steps=3, eval_every_steps=0)
    config["log_every_steps"] = 2  # the stop at 3 falls inside a window: it is saved too
    train_and_evaluate(small_config(**config), tmp_path / "straight")
    stopped = train_and_evaluate(small_config(stop_at_step=3, **config), tmp_path / "split")
    assert stopped["status"] == "stopped" and stopped["step"] == 3
    train_and_evaluate(small_config(**config), tmp_path / "split")
    a, b = saved_state(tmp_path / "straight", 6), saved_state(tmp_path / "split", 6)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert metric_lines(tmp_path / "straight") == metric_lines(tmp_path / "split")
    # TensorBoard sees one clean curve: the restart marker drops nothing before the resume.
    logged = [
        (x["step"], x["loss"]) for x in metric_lines(tmp_path / "split") if x["split"] == "train"
    ]
    shown = tensorboard_scalars(tmp_path / "split", "train/loss")
    assert [s for s, _ in shown] == [s for s, _ in logged] == [2, 4, 6]
    assert [v for _, v in shown] == pytest.approx([v for _, v in logged], rel=1e-6)


@pytest.mark.slow
def test_shard_map_run_resumes_bitwise_and_its_checkpoint_resumes_under_jit(tmp_path):
    import shutil

    config = dict(parallel="shard_map", num_steps=6, checkpoint_every_steps=3, eval_every_steps=0)
    config["log_every_steps"] = 2
    straight = train_and_evaluate(small_config(**config), tmp_path / "straight")
    assert straight["status"] == "finished" and straight["step"] == 6
    assert straight["parallel"] == straight["execution"]["parallel"] == "shard_map"
    assert straight["final_eval"]["num_examples"] == 359  # eval on the mesh: every example
    stopped = train_and_evaluate(small_config(stop_at_step=3, **config), tmp_path / "split")
    assert stopped["status"] == "stopped" and stopped["step"] == 3
    shutil.copytree(tmp_path / "split", tmp_path / "to_jit")
    train_and_evaluate(small_config(**config), tmp_path / "split")
    a, b = saved_state(tmp_path / "straight", 6), saved_state(tmp_path / "split", 6)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert metric_lines(tmp_path / "straight") == metric_lines(tmp_path / "split")
    # No device axis and no extra optimizer slot: jit restores the checkpoint as its own. Not
    # bitwise: XLA's collectives add the gradients in another order than the explicit pmean.
    resumed = train_and_evaluate(small_config(**{**config, "parallel": "jit"}), tmp_path / "to_jit")
    assert resumed["step"] == 6 and resumed["parallel"] == "jit"
    c = saved_state(tmp_path / "to_jit", 6)
    assert jax.tree.structure(c) == jax.tree.structure(a)
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(c["params"]), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = small_config(
        **{"optimizer.learning_rate": 1e30, "schedule.warmup": 0, "checkpoint_every_steps": 1},
    )
    config.log_every_steps = 1
    with pytest.raises(NonFiniteLossError, match=r"training loss is \S+ at step (\d+)") as info:
        train_and_evaluate(config, tmp_path)
    bad = int(info.value.args[0].split(" at step ")[1].split()[0])
    assert "\n" not in str(info.value)
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < bad
    state = saved_state(tmp_path, max(saved))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


def test_bfloat16_trains_with_float32_params(tmp_path):
    config = small_config(dtype="bfloat16", num_steps=4, eval_every_steps=0)
    summary = train_and_evaluate(config, tmp_path)
    assert summary["dtype"] == "bfloat16" and np.isfinite(summary["final_eval"]["loss"])
    state = saved_state(tmp_path, 4)
    assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype("float32")}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 32}, r"was trained with \{.*'batch_size': 64.*not .*'batch_size': 32"),
        ({"num_steps": 6}, r"is at step 12, beyond num_steps=6"),
    ],
)
def test_resume_with_another_data_setup_or_fewer_steps_is_refused(
    digits_run, tmp_path, changes, message
):
    import shutil

    workdir, _ = digits_run
    shutil.copytree(workdir, tmp_path / "w")
    before = tree_hash(tmp_path / "w")
    with pytest.raises(ValueError, match=message):
        train_and_evaluate(small_config(**changes), tmp_path / "w")
    assert tree_hash(tmp_path / "w") == before
