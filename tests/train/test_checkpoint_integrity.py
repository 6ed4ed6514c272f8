"""A damaged newest checkpoint is found, named, moved aside, and the run resumes from the newest
intact one, ending bitwise equal to a run that was never interrupted; with none intact, one clear
error and nothing moved."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resflax.train import integrity
from resflax.train.checkpoint import DAMAGED, CheckpointDamage
from resflax.train.loop import train_and_evaluate
from tests.saved import metric_lines, saved_state, tree_hash
from tests.train.test_loop import small_config, tensorboard_scalars

RUN = dict(num_steps=6, checkpoint_every_steps=2, log_every_steps=2, eval_every_steps=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run to step 6 and one stopped at step 4 (checkpoints 2 and 4)."""
    root = tmp_path_factory.mktemp("integrity")
    train_and_evaluate(small_config(**RUN), root / "straight")
    train_and_evaluate(small_config(stop_at_step=4, **RUN), root / "stopped")
    return root


def _largest_array_file(step_dir):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


def flip_one_bit(step):
    path = _largest_array_file(step)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def truncate_array_file(step):
    path = _largest_array_file(step)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete_array_file(step):
    _largest_array_file(step).unlink()


def delete_array_metadata(step):
    (step / "state" / "_METADATA").unlink()


def delete_data_position(step):
    (step / "data" / "metadata").unlink()


def malformed_data_position(step):
    (step / "data" / "metadata").write_text('{"setup": [1, 2')


def edited_data_position(step):
    # Valid JSON that reads back without complaint: only the checksum can tell.
    path = step / "data" / "metadata"
    position = json.loads(path.read_text())
    position["loop"]["train_seconds"] += 1.0
    path.write_text(json.dumps(position))


def delete_state(step):
    shutil.rmtree(step / "state")


def delete_model_record(step):
    (step / "meta" / "metadata").unlink()


def flipped_model_record(step):
    # One bit: resnet20 -> resnet21, still valid JSON. Believed before it is verified, this
    # read as "the workdir holds another model" and stopped the run (issue 35).
    path = step / "meta" / "metadata"
    text = path.read_text()
    assert '"resnet20"' in text
    path.write_text(text.replace('"resnet20"', '"resnet21"'))


def edited_checksum_record(step):
    path = step / "data" / "metadata"
    position = json.loads(path.read_text())
    digest = position["integrity"]["meta"]
    position["integrity"]["meta"] = ("0" if digest[0] != "0" else "1") + digest[1:]
    path.write_text(json.dumps(position))


DAMAGE = [
    flip_one_bit, truncate_array_file, delete_array_file, delete_array_metadata,
    delete_data_position, malformed_data_position, edited_data_position, delete_state,
    delete_model_record, flipped_model_record, edited_checksum_record,
]  # fmt: skip


# Upstream (orbax 0.12.8): when one array's read fails, orbax abandons the other arrays' read
# coroutines, and Python reports each as "Exception ignored in <coroutine ...>" when it is
# collected. Harmless (the failure itself reaches us and is handled), but the suite turns
# warnings into errors; remove this mark when orbax closes its sibling reads.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_damaged_newest_step_falls_back_and_ends_bitwise_equal(runs, tmp_path, damage, caplog):
    work = tmp_path / "w"
    shutil.copytree(runs / "stopped", work)
    damage(work / "checkpoints" / "4")
    with caplog.at_level("WARNING"):
        summary = train_and_evaluate(small_config(**RUN), work)
    assert summary["status"] == "finished" and summary["step"] == 6
    said = [r.getMessage() for r in caplog.records if "checkpoint 4" in r.getMessage()]
    assert said and "is damaged" in said[0] and "\n" not in said[0], said
    # Moved aside, never deleted; the run went on from step 2.
    assert (work / DAMAGED / "4").is_dir()
    a, b = saved_state(runs / "straight", 6), saved_state(work, 6)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert metric_lines(work) == metric_lines(runs / "straight")
    # Step 4 was logged by the first session and again after the fallback: TensorBoard, like
    # metrics.jsonl, shows it once, with the recomputed value.
    shown = tensorboard_scalars(work, "train/loss")
    logged = [(x["step"], x["loss"]) for x in metric_lines(work) if x["split"] == "train"]
    assert [s for s, _ in shown] == [s for s, _ in logged] == [2, 4, 6]
    assert [v for _, v in shown] == pytest.approx([v for _, v in logged], rel=1e-6)


@pytest.mark.slow
def test_an_empty_newer_step_directory_is_set_aside(runs, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(runs / "stopped", work)
    (work / "checkpoints" / "5").mkdir()
    summary = train_and_evaluate(small_config(**RUN), work)
    assert summary["step"] == 6 and (work / DAMAGED / "5").is_dir()
    a, b = saved_state(runs / "straight", 6), saved_state(work, 6)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_no_intact_step_is_one_clear_error_and_moves_nothing(runs, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(runs / "stopped", work)
    flip_one_bit(work / "checkpoints" / "4")
    delete_state(work / "checkpoints" / "2")
    before = tree_hash(work)
    with pytest.raises(CheckpointDamage, match=r"no intact checkpoint .*step 4: .*step 2: ") as e:
        train_and_evaluate(small_config(**RUN), work)
    assert "\n" not in str(e.value)
    assert tree_hash(work) == before and not (work / DAMAGED).exists()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int32", "uint32", "bool", "uint8"])
def test_any_single_bit_flip_changes_the_checksum(dtype):
    """Exhaustively for a small array: every bit of every element (bool: its one bit)."""
    x = np.asarray(jax.random.randint(jax.random.key(0), (3, 5), 0, 200).astype(dtype))
    want = integrity.array_checksums({"x": jnp.asarray(x)})
    raw = x.reshape(-1).view(np.uint8)
    for i in range(raw.size):
        for bit in range(1 if dtype == "bool" else 8):
            flipped = raw.copy()
            flipped[i] ^= 1 << bit
            y = jnp.asarray(flipped.view(x.dtype).reshape(x.shape))
            assert integrity.array_checksums({"x": y}) != want, (dtype, i, bit)


def test_checksums_see_swapped_elements():
    x = jnp.arange(8, dtype=jnp.float32)
    swapped = x.at[jnp.array([2, 5])].set(x[jnp.array([5, 2])])
    assert integrity.array_checksums([x]) != integrity.array_checksums([swapped])
