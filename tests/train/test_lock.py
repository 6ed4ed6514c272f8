"""One run per workdir: a second run is refused naming the holder, a dead holder's lock is
taken over with a log line, and two runs started together leave one clean run behind."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from resflax.train.lock import LOCK_FILE, WorkdirBusyError, WorkdirLock
from resflax.train.loop import train_and_evaluate
from tests.saved import tree_hash
from tests.test_main import DIGITS, TINY, error_line, start
from tests.train.test_loop import small_config


def test_a_second_run_is_refused_naming_the_holder_and_changes_nothing(tmp_path):
    with WorkdirLock(tmp_path / "w"):
        before = tree_hash(tmp_path / "w")
        with pytest.raises(WorkdirBusyError) as e:
            train_and_evaluate(small_config(num_steps=2), tmp_path / "w")
        assert tree_hash(tmp_path / "w") == before
    message = str(e.value)
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message and "\n" not in message
    assert "another --workdir" in message


def test_the_lock_is_released_on_exit_and_on_error(tmp_path):
    with pytest.raises(RuntimeError), WorkdirLock(tmp_path):
        raise RuntimeError("boom")
    with WorkdirLock(tmp_path):
        pass
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a clean exit leaves no holder behind


def test_a_dead_holders_lock_is_taken_over_with_a_log_line(tmp_path, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from resflax.train.lock import WorkdirLock; "
         f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirBusyError, match=f"pid {holder.pid} on "):
        WorkdirLock(tmp_path).acquire()
    holder.kill()  # as kill -9 would: no chance to clean up
    holder.wait()
    holder.stdout.close()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid
    with caplog.at_level("WARNING"), WorkdirLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    said = [r.getMessage() for r in caplog.records]
    assert any(f"taking over the lock of pid {holder.pid}" in s for s in said), said


def test_a_live_holder_on_this_host_is_refused_even_where_flock_is_not_enforced(tmp_path):
    """A filesystem that grants every flock (some network mounts) still cannot give the
    workdir to a second run: the recorded holder is alive on this host."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"pid": sleeper.pid, "host": socket.gethostname(), "started": time.time()}
        (tmp_path / LOCK_FILE).write_text(json.dumps(record))
        with pytest.raises(WorkdirBusyError, match=f"pid {sleeper.pid} .*support flock"):
            WorkdirLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_reused_pid_is_told_apart_by_its_start_time(tmp_path, caplog):
    """Where flock is not enforced, a recorded holder whose pid now belongs to another process
    (it started at another time) is not the holder: its lock is taken over, with a log line;
    with the right start time the same record refuses and says what to remove."""
    from resflax.train.lock import _start_time

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = _start_time(sleeper.pid)
        assert isinstance(started, int)
        record = {"pid": sleeper.pid, "host": socket.gethostname(), "started": time.time()}
        (tmp_path / LOCK_FILE).write_text(json.dumps({**record, "pid_start": started}))
        with pytest.raises(WorkdirBusyError, match=f"remove {tmp_path / LOCK_FILE}"):
            WorkdirLock(tmp_path).acquire()
        (tmp_path / LOCK_FILE).write_text(json.dumps({**record, "pid_start": started - 1}))
        with caplog.at_level("WARNING"), WorkdirLock(tmp_path):
            mine = json.loads((tmp_path / LOCK_FILE).read_text())
            assert mine["pid"] == os.getpid() and mine["pid_start"] == _start_time(os.getpid())
        assert any(f"taking over the lock of pid {sleeper.pid}" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
    finally:
        sleeper.kill()
        sleeper.wait()


def test_workdir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        WorkdirLock(tmp_path / "f").acquire()


@pytest.mark.slow
def test_two_runs_started_together_one_refused_one_clean(tmp_path):
    work = tmp_path / "w"
    flags = [*TINY, "--config.num_steps=6", "--config.checkpoint_every_steps=2"]
    a, out_a = start(work, *flags, config=DIGITS)
    b, out_b = start(work, *flags, config=DIGITS)
    codes = sorted((a.wait(timeout=300), b.wait(timeout=300)))
    assert codes == [0, 1], (out_a(), out_b())
    refused = out_a() if a.returncode else out_b()
    assert "is in use by pid" in error_line(refused)
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    train = [r["step"] for r in rows if r["split"] == "train"]
    assert train == [2, 4, 6]
    assert not list((work / "checkpoints").glob("*tmp*"))
