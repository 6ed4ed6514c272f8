"""What a resumed run may change: cadence, length and the execution policy are logged and
recorded in config_history.jsonl; anything else is refused with one line unless
`allow_changes_on_resume` names it; config.json keeps the first session's config."""

import json
import shutil

import pytest

from resflax.train import resume
from resflax.train.checkpoint import DAMAGED, CheckpointDamage
from resflax.train.loop import train_and_evaluate
from resflax.train.tree_layout import LayoutMismatch
from tests.saved import tree_hash
from tests.train.test_loop import small_config

RUN = dict(num_steps=4, checkpoint_every_steps=2, log_every_steps=2, eval_every_steps=0)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("resume") / "w"
    train_and_evaluate(small_config(stop_at_step=2, **RUN), workdir)
    return workdir


def _copy(stopped, tmp_path):
    shutil.copytree(stopped, tmp_path / "w")
    return tmp_path / "w"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimizer.learning_rate": 0.2}, r"changed optimizer\.learning_rate: 0\.1 -> 0\.2"),
        ({"dtype": "bfloat16"}, r"changed dtype: 'float32' -> 'bfloat16'"),
        ({"schedule.name": "constant"}, r"changed schedule\.name: 'cosine' -> 'constant'"),
        ({"label_smoothing": 0.1}, r"changed label_smoothing: 0\.0 -> 0\.1"),
        ({"allow_changes_on_resume": "batch_size"}, r"names \['batch_size'\], which a resumed"),
        ({"allow_changes_on_resume": "optimizer.lr"}, r"unknown config keys \['optimizer\.lr'\]"),
    ],
)
def test_a_refused_change_is_one_line_and_changes_nothing(stopped, tmp_path, changes, message):
    work = _copy(stopped, tmp_path)
    before = tree_hash(work)
    with pytest.raises(ValueError, match=message) as e:
        train_and_evaluate(small_config(**RUN, **changes), work)
    assert "\n" not in str(e.value)
    assert tree_hash(work) == before


def test_an_allowed_change_is_recorded_not_overwritten(stopped, tmp_path):
    work = _copy(stopped, tmp_path)
    first = (work / "config.json").read_text()
    config = small_config(**{**RUN, "num_steps": 6, "log_every_steps": 3, "ops.name": "plain"})
    summary = train_and_evaluate(config, work)
    assert summary["step"] == 6 and summary["execution"]["ops"]["conv"] == "lax"
    assert (work / "config.json").read_text() == first
    (row,) = [json.loads(x) for x in (work / "config_history.jsonl").read_text().splitlines()]
    assert row["step"] == 2
    assert row["changes"] == {
        "log_every_steps": {"from": 2, "to": 3},
        "num_steps": {"from": 4, "to": 6},
        "ops.name": {"from": "auto", "to": "plain"},
        "stop_at_step": {"from": 2, "to": None},  # the first session stopped itself early
    }


def test_a_named_change_is_accepted(stopped, tmp_path):
    work = _copy(stopped, tmp_path)
    config = small_config(
        **RUN,
        **{"optimizer.learning_rate": 0.2, "allow_changes_on_resume": "optimizer.learning_rate"},
    )
    assert train_and_evaluate(config, work)["step"] == 4
    (row,) = [json.loads(x) for x in (work / "config_history.jsonl").read_text().splitlines()]
    assert row["changes"]["optimizer.learning_rate"] == {"from": 0.1, "to": 0.2}


def test_every_may_change_pattern_matches_a_config_key():
    """The table is not allowed to drift from the config: each pattern names real keys."""
    keys = resume.flatten(small_config())
    for pattern in resume.MAY_CHANGE:
        assert any(resume.may_change(k) and __import__("fnmatch").fnmatchcase(k, pattern)
                   for k in keys), pattern  # fmt: skip
    for key in resume.NEVER:
        assert key in keys and not resume.may_change(key)


def test_a_named_change_that_gives_the_state_another_tree_is_refused_not_taken_for_damage(
    stopped, tmp_path
):
    """Clipping adds an optimizer slot: the checkpoint cannot restore into the new state. One
    line naming the difference, and no step is moved aside as damaged."""
    work = _copy(stopped, tmp_path)
    before = tree_hash(work)
    change = {
        "optimizer.grad_clip_norm": 1.0,
        "allow_changes_on_resume": "optimizer.grad_clip_norm",
    }
    with pytest.raises(
        LayoutMismatch, match=r"checkpoint 2 .* only in this run's state: opt_s"
    ) as e:
        train_and_evaluate(small_config(**RUN, **change), work)
    assert "\n" not in str(e.value) and not isinstance(e.value, CheckpointDamage)
    assert tree_hash(work) == before and not (work / DAMAGED).exists()
