"""Population training (resflax.train.population): K members in one vmapped step equal K
separate runs member by member, resume exactly, report per member, and stop a diverging
member alone.

Not bitwise: under `vmap` each convolution with per-member kernels becomes one grouped
convolution (and each product a batched one), which XLA:CPU sums in another order than K
separate convolutions; under `map` (the CPU's default, used where a test names no batching)
each member runs inside a loop body that XLA fuses differently from a run's own step. After 12
steps members differ from their separate runs by ~2e-7 of each array's largest value
(measured, both ways), far inside the 1e-5 relative bound held here."""

import json

import jax
import numpy as np
import pytest

from resflax.train import population
from resflax.train.loop import NonFiniteLossError, train_and_evaluate
from tests.saved import metric_lines, saved_state
from tests.train.test_loop import small_config

SEEDS, RATES = (3, 4, 5), (0.05, 0.1, 0.2)


def config(**changes):
    # threefry (the default), not small_config's rbg: its bits under vmap are each key's own.
    return small_config(prng_impl="threefry2x32", **changes)


def population_config(**changes):
    return config(**{"population.size": 3, "population.seed": SEEDS,
                     "population.learning_rate": RATES, "population.data_order": "own",
                     **changes})  # fmt: skip


def member_scalars(workdir, k, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "tensorboard" / f"member_{k}"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def assert_member_equals(stacked, single, k, rtol=1e-5, atol=1e-6):
    """Member k of a population's saved arrays equals a separate run's (params, statistics and
    optimizer state), within `rtol` relative to each array's largest value (+ `atol` for arrays
    near zero)."""
    for part in ("params", "batch_stats", "opt_state"):
        ours = jax.tree_util.tree_leaves(stacked[part])
        theirs = jax.tree_util.tree_leaves(single[part])
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            a, b = np.asarray(a)[k], np.asarray(b)
            assert a.shape == b.shape
            bound = rtol * np.max(np.abs(b)) + atol
            assert np.max(np.abs(a - b)) <= bound, (part, a.shape)


@pytest.fixture(scope="module")
def separate(tmp_path_factory):
    """The three members as separate runs (seed and learning rate each)."""
    runs = []
    for seed, lr in zip(SEEDS, RATES, strict=True):
        workdir = tmp_path_factory.mktemp(f"single{seed}")
        summary = train_and_evaluate(config(seed=seed, **{"optimizer.learning_rate": lr}), workdir)
        runs.append((workdir, summary))
    return runs


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The population of the three, stopped at step 6 and resumed to 12."""
    workdir = tmp_path_factory.mktemp("population")
    first = train_and_evaluate(population_config(stop_at_step=6), workdir)
    assert first["status"] == "stopped" and first["step"] == 6
    return workdir, train_and_evaluate(population_config(), workdir)


def test_members_default_to_consecutive_seeds_and_the_base_values():
    members = population.members(config(**{"population.size": 3, "seed": 7}))
    assert members.seed == (7, 8, 9)
    assert members.learning_rate == (0.1,) * 3 and members.weight_decay == (5e-4,) * 3
    assert members.varied() == ["seed"] and not members.own_order
    assert population.members(config()) is None
    hparams = members.hparams()
    assert hparams["momentum"].dtype == np.float32 and hparams["momentum"].shape == (3,)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"population.size": 0}, "population.size=0 must be an integer >= 1"),
        ({"population.size": 2, "population.weight_decay": (0.1,)},
         "population.weight_decay has 1 values for population.size=2"),
        ({"population.size": 2, "population.learning_rate": (0.1, -1.0)},
         "-1.0 is invalid; give positive numbers"),
        ({"population.size": 2, "population.seed": (1, -1)}, "give non-negative integers"),
        ({"population.label_smoothing": (0.1, 0.2)}, "population.size is not"),
        ({"population.size": 2, "parallel": "shard_map"}, "parallel='jit' only"),
        ({"population.size": 2, "population.batching": "loop"},
         "population.batching='loop' is not one of ('auto', 'vmap', 'map')"),
        ({"population.size": 2, "init_from": "runs/x"}, "starts from its members' seeds"),
        ({"population.size": 2, "optimizer.name": "adamw", "population.momentum": (0.8, 0.9)},
         "does not use momentum"),
    ],
)  # fmt: skip
def test_bad_populations_are_named(changes, words):
    with pytest.raises(ValueError) as error:
        population.members(config(**changes))
    assert words in str(error.value) and "\n" not in str(error.value)


def test_map_and_vmap_compute_the_same_members():
    def member(state, hparams, batch):
        return {"y": state["w"] * batch + hparams["lr"]}

    states = {"w": np.arange(6.0, dtype=np.float32).reshape(3, 2)}
    hparams = {"lr": np.float32([0.1, 0.2, 0.3])}
    shared, own = np.float32([1.0, 2.0]), np.arange(6.0, dtype=np.float32).reshape(3, 2)
    for batch, axis in ((shared, None), (own, 0)):
        by = {b: population.over_members(member, b, axis)(states, hparams, batch)["y"]
              for b in ("vmap", "map")}  # fmt: skip
        assert np.array_equal(by["vmap"], by["map"]) and by["map"].shape == (3, 2)
    with pytest.raises(ValueError, match="batching='loop' is not one of"):
        population.over_members(member, "loop", None)


def test_the_machine_picks_map_on_the_cpu_and_vmap_elsewhere():
    from resflax.ops import population_batching

    assert population_batching("cpu") == "map"
    assert population_batching("gpu") == population_batching("tpu") == "vmap"


def test_an_architecture_field_may_not_vary():
    c = config(**{"population.size": 2})
    with c.unlocked():
        c.population.widths = ((4, 8, 16), (8, 16, 32))
    with pytest.raises(ValueError, match=r"population\.widths cannot vary within a population"):
        population.members(c)


def test_three_members_equal_three_separate_runs_across_a_resume(separate, resumed):
    workdir, summary = resumed
    assert summary["status"] == "finished" and summary["step"] == 12
    for step in (6, 12):
        stacked = saved_state(workdir, step)
        assert np.asarray(stacked["step"]).tolist() == [step] * 3
        for k, (single_dir, _) in enumerate(separate):
            assert_member_equals(stacked, saved_state(single_dir, step), k)
    rows = summary["population"]["members"]
    for k, (_, single) in enumerate(separate):
        assert rows[k]["seed"] == SEEDS[k] and rows[k]["learning_rate"] == RATES[k]
        assert rows[k]["status"] == "finished"
        # 359 test images: one image is 0.28%; the tiny differences change none.
        assert rows[k]["final_eval"]["top1"] == single["final_eval"]["top1"]
        assert rows[k]["final_eval"]["loss"] == pytest.approx(single["final_eval"]["loss"], 1e-5)


def test_a_resumed_population_is_bitwise_an_uninterrupted_one(tmp_path, resumed):
    workdir, summary = resumed
    straight = train_and_evaluate(population_config(), tmp_path)
    assert straight["param_digest"] == summary["param_digest"]
    pairs = zip(summary["population"]["members"], straight["population"]["members"], strict=True)
    for a, b in pairs:
        assert a["param_digest"] == b["param_digest"] and a["final_eval"] == b["final_eval"]
    # Each member's lines once per step, as if the run had never stopped.
    assert metric_lines(workdir) == metric_lines(tmp_path)


def test_metrics_tensorboard_and_summary_per_member(resumed):
    workdir, summary = resumed
    lines = metric_lines(workdir)
    train = [(x["step"], x["member"]) for x in lines if x["split"] == "train"]
    assert train == [(s, k) for s in (4, 8, 12) for k in range(3)]
    evals = [x for x in lines if x["split"] == "eval" and x["step"] == 12]
    assert [x["member"] for x in evals] == [0, 1, 2]
    rows = summary["population"]["members"]
    for k, row in enumerate(rows):
        assert evals[k]["top1"] == row["final_eval"]["top1"]
        scalars = member_scalars(workdir, k, "eval/top1")
        assert [s for s, _ in scalars] == [6, 12]
        assert scalars[-1][1] == pytest.approx(row["final_eval"]["top1"])
        # The member's own learning rate: warmup of 2 steps, then cosine from RATES[k].
        lr = [x["learning_rate"] for x in lines if x.get("member") == k and x["split"] == "train"]
        assert lr[0] < RATES[k] and lr[0] > 0.5 * RATES[k]
    top1 = [row["final_eval"]["top1"] for row in rows]
    stats = summary["population"]["final_eval"]["top1"]
    assert stats["mean"] == pytest.approx(np.mean(top1))
    assert stats["std"] == pytest.approx(np.std(top1, ddof=1)) and stats["n"] == 3
    assert summary["final_eval"]["top1"] == pytest.approx(np.mean(top1))
    assert summary["best_eval"]["top1"] == max(r["best_eval"]["top1"] for r in rows)
    assert summary["population"]["varied"] == ["seed", "learning_rate"]
    assert json.loads((workdir / "summary.json").read_text()) == summary


def test_a_diverging_member_stops_alone_keeping_its_last_good_state(tmp_path):
    c = small_config(**{"population.size": 3, "population.learning_rate": (0.1, 1e30, 0.1),
                        "num_steps": 8, "eval_every_steps": 0,
                        "checkpoint_every_steps": 8})  # fmt: skip
    summary = train_and_evaluate(c, tmp_path)
    assert summary["status"] == "finished"
    rows = summary["population"]["members"]
    assert [r["status"] for r in rows] == ["finished", "stopped", "finished"]
    stopped_at = rows[1]["stopped_at_step"]
    assert 1 <= stopped_at <= 8 and summary["population"]["stopped"] == {"1": stopped_at}
    state = saved_state(tmp_path, 8)
    assert np.asarray(state["step"]).tolist() == [8, stopped_at - 1, 8]
    for leaf in jax.tree_util.tree_leaves(state["params"]):
        assert np.all(np.isfinite(leaf))
    assert summary["population"]["final_eval"]["top1"]["n"] == 2
    lines = metric_lines(tmp_path)
    train = [x for x in lines if x["split"] == "train" and "loss" in x]
    assert all(np.isfinite(x["loss"]) for x in train)
    # A log line covers the steps since the last one (log_every_steps=4); the window in which
    # the member stopped is dropped with it: its rows are those logged before it stopped,
    # then one row saying it stopped.
    assert [x["step"] for x in train if x["member"] == 1] == [s for s in (4, 8) if s < stopped_at]
    assert [x for x in lines if x["member"] == 1 and "loss" not in x] == [
        {"step": stopped_at, "split": "train", "member": 1, "status": "stopped",
         "reason": "non-finite loss or state"}
    ]  # fmt: skip
    assert {x["member"] for x in train if x["step"] == 8} == {0, 2}


def test_a_stopped_member_is_out_of_every_statistic(tmp_path, separate):
    """Issue 35's case: a member that diverges at once (learning rate 1e6) is never evaluated,
    never the best, and the population's mean equals that of the healthy members' separate
    runs; every metrics line is strict JSON."""
    c = population_config(**{"population.learning_rate": (*RATES[:2], 1e6)})
    summary = train_and_evaluate(c, tmp_path)
    block = summary["population"]
    assert [r["status"] for r in block["members"]] == ["finished", "finished", "stopped"]
    assert block["members"][2]["final_eval"] is None and block["members"][2]["best_eval"] is None
    healthy = [single["final_eval"]["top1"] for _, single in separate[:2]]
    assert block["final_eval"]["top1"]["n"] == summary["final_eval"]["members"] == 2
    # Within one test example (of 359) per member: members match their runs to ~2e-7.
    assert summary["final_eval"]["top1"] == pytest.approx(np.mean(healthy), abs=1 / 359)
    assert block["best_eval"]["top1"]["n"] == 2 and summary["best_eval"]["member"] in (0, 1)

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    text = (tmp_path / "metrics.jsonl").read_text().splitlines()
    lines = [json.loads(x, parse_constant=refuse) for x in text]
    assert not [x for x in lines if x["member"] == 2 and x["split"] == "eval"]
    assert [x["status"] for x in lines if x["member"] == 2 and "status" in x] == ["stopped"]
    json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)


def test_the_run_stops_when_every_member_has_diverged(tmp_path):
    c = small_config(**{"population.size": 2, "population.learning_rate": (1e30, 1e30),
                        "num_steps": 4, "checkpoint_every_steps": 4})  # fmt: skip
    with pytest.raises(NonFiniteLossError, match="every member of the population"):
        train_and_evaluate(c, tmp_path)


def test_eight_devices_equal_one(tmp_path):
    """jit over 8 devices shards each batch (the members are replicated; the other tests run
    on 8): the same members as on one device (where `auto()` runs oneDNN member by member),
    within the bound of a sum in another order."""
    changes = {"population.size": 2, "population.learning_rate": (0.05, 0.2),
               "population.batching": "vmap", "num_steps": 4, "eval_every_steps": 0,
               "checkpoint_every_steps": 4}  # fmt: skip
    one = train_and_evaluate(config(num_devices=1, **changes), tmp_path / "one")
    eight = train_and_evaluate(config(**changes), tmp_path / "eight")
    assert one["devices"] == 1 and eight["devices"] == 8
    single = saved_state(tmp_path / "one", 4)
    stacked = saved_state(tmp_path / "eight", 4)
    for k in range(2):
        assert_member_equals(stacked, jax.tree_util.tree_map(lambda x, k=k: x[k], single), k)


def test_shared_order_members_equal_runs_of_that_data_order(tmp_path):
    """Shared order: every member reads `seed`'s batches; with the members' seeds set to it
    too, member k is the separate run with member k's learning rate."""
    changes = {"num_steps": 4, "eval_every_steps": 0, "checkpoint_every_steps": 4}
    pop = config(**{"population.size": 2, "population.seed": (0, 0),
                    "population.learning_rate": (0.05, 0.2), **changes})  # fmt: skip
    train_and_evaluate(pop, tmp_path / "pop")
    stacked = saved_state(tmp_path / "pop", 4)
    for k, lr in enumerate((0.05, 0.2)):
        train_and_evaluate(config(**{"optimizer.learning_rate": lr, **changes}), tmp_path / f"{k}")
        assert_member_equals(stacked, saved_state(tmp_path / f"{k}", 4), k)


def test_scanned_rematerialised_members_equal_their_runs(tmp_path):
    changes = {"model.scan": True, "model.remat": True, "model.stage_sizes": (2, 1, 1),
               "population.batching": "vmap",
               "num_steps": 2, "schedule.warmup": 1, "eval_every_steps": 0,
               "checkpoint_every_steps": 2}  # fmt: skip
    pop = config(**{"population.size": 2, "population.data_order": "own", **changes})
    train_and_evaluate(pop, tmp_path / "pop")
    stacked = saved_state(tmp_path / "pop", 2)
    # Member 1 (member 0 alone would not show a mix-up of the member axis).
    train_and_evaluate(config(seed=1, **changes), tmp_path / "1")
    assert_member_equals(stacked, saved_state(tmp_path / "1", 2), 1)


def test_a_population_workdir_refuses_another_size(tmp_path, resumed):
    workdir, _ = resumed
    with pytest.raises(ValueError, match="'population': 3"):
        train_and_evaluate(population_config(**{"population.size": 2,
                                                "population.seed": (3, 4),
                                                "population.learning_rate": (0.1, 0.2)}),
                           workdir)  # fmt: skip
