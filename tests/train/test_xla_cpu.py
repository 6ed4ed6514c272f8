"""XLA:CPU flags: added before the backends start, the environment's own settings kept,
flags unknown to the installed jaxlib skipped instead of aborting the process."""

import json
import os
import subprocess
import sys

import jax
import pytest

from resflax.train.xla_cpu import DEFAULT_FLAGS, apply_cpu_flags, jaxlib_knows, parse_flags

PROBE = """
import json, os
from resflax.train.xla_cpu import apply_cpu_flags
added = apply_cpu_flags({flags!r})
import jax
jax.numpy.ones(2).block_until_ready()  # the backend starts with the flags: XLA parses them
print(json.dumps({{"added": added, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}}))
"""


def probe(flags, env_flags=None):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if env_flags is not None:
        env["XLA_FLAGS"] = env_flags
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(flags=flags)], env=env, capture_output=True,
        text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_default_flags_are_known_to_this_jaxlib_and_applied():
    assert jaxlib_knows("xla_cpu_experimental_ynn_fusion_type")
    result, _ = probe(DEFAULT_FLAGS, env_flags="--xla_force_host_platform_device_count=2")
    assert result["added"] == [DEFAULT_FLAGS]
    assert result["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {DEFAULT_FLAGS}"


def test_environment_wins_and_unknown_flags_are_skipped():
    mine = "--xla_cpu_experimental_ynn_fusion_type=dot"
    result, err = probe(f"{DEFAULT_FLAGS} --xla_cpu_no_such_flag=1", env_flags=mine)
    assert result == {"added": [], "XLA_FLAGS": mine}
    assert "--xla_cpu_no_such_flag=1 skipped: the installed jaxlib does not know it" in err
    assert not jaxlib_knows("xla_cpu_no_such_flag")


def test_too_late_changes_nothing_and_says_so(monkeypatch, caplog):
    jax.devices()  # backends started
    monkeypatch.setenv("XLA_FLAGS", "")
    assert apply_cpu_flags(DEFAULT_FLAGS) == []
    assert os.environ["XLA_FLAGS"] == ""
    assert "not applied: JAX's backends had already started" in caplog.text


def test_empty_applies_nothing_and_bad_entries_are_named():
    assert apply_cpu_flags("") == [] and parse_flags("  ") == []
    assert parse_flags("--a=1 --b") == [("a", "--a=1"), ("b", "--b")]
    for bad in ("xla_cpu_ftz=true", "-", "--"):
        with pytest.raises(ValueError, match=f"entry '{bad}' is not an XLA flag"):
            parse_flags(f"--ok=1 {bad}")
