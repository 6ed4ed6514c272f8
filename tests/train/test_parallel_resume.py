"""A run stopped under one parallel driver resumes under another (jit, shard_map and pmap keep
one state tree), ending where a straight pmap run ends: bitwise where both sessions ran the same
programs, within 1e-5 where one ran another driver's (XLA orders the reductions differently:
about 4e-9 apart here). An older pmap run's checkpoint, with its extra optimizer slot, resumes
under jit and pmap too."""

import shutil

import jax
import numpy as np
import optax
import pytest

from resflax.train.loop import train_and_evaluate
from resflax.train.parallel import Parallel
from tests.saved import metric_lines, saved_state
from tests.train.test_checkpoint import _pmean_gradients
from tests.train.test_loop import small_config

RUN = dict(num_steps=4, checkpoint_every_steps=2, log_every_steps=2, eval_every_steps=0)


def _legacy_wrap_tx(self, tx):
    """How pmap wrapped the optimizer before it averaged inside the update."""
    return optax.chain(_pmean_gradients(), tx) if self.kind == "pmap" else tx


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A straight pmap run to step 4 and runs stopped at step 2 under each driver, and under
    pmap as older versions wrote it."""
    root = tmp_path_factory.mktemp("parallel_resume")
    train_and_evaluate(small_config(parallel="pmap", **RUN), root / "straight")
    for kind in ("jit", "shard_map", "pmap"):
        train_and_evaluate(small_config(parallel=kind, stop_at_step=2, **RUN), root / kind)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Parallel, "wrap_tx", _legacy_wrap_tx)
        train_and_evaluate(small_config(parallel="pmap", stop_at_step=2, **RUN), root / "legacy")
    # The legacy layout really was written: the same arrays, nested one level deeper.
    legacy, new = saved_state(root / "legacy", 2), saved_state(root / "pmap", 2)
    assert jax.tree.structure(legacy) != jax.tree.structure(new)
    assert len(legacy["opt_state"]) == 2 and legacy["opt_state"][0] is None
    return root


def _resume(runs, tmp_path, written_by, kind):
    work = tmp_path / "w"
    shutil.copytree(runs / written_by, work)
    summary = train_and_evaluate(small_config(parallel=kind, **RUN), work)
    assert summary["status"] == "finished" and summary["step"] == 4
    assert summary["parallel"] == kind
    return work


def _assert_same_state(a, b, bitwise):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if bitwise:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("written_by", "kind", "bitwise"),
    [
        ("pmap", "jit", False),
        ("jit", "pmap", False),
        ("shard_map", "pmap", False),
        ("legacy", "pmap", True),
        ("legacy", "jit", False),
    ],
)
def test_a_run_resumes_under_another_driver_to_the_straight_runs_state(
    runs, tmp_path, written_by, kind, bitwise
):
    work = _resume(runs, tmp_path, written_by, kind)
    straight, resumed = saved_state(runs / "straight", 4), saved_state(work, 4)
    # One tree for every driver: no device axis, no optimizer slot (a legacy one is dropped).
    _assert_same_state(resumed, straight, bitwise)
    if bitwise:
        assert metric_lines(work) == metric_lines(runs / "straight")
