"""The training command line's flags explained when they are wrong: a config file that is
missing, does not compile, fails in its own code or has no `get_config`; an override of a key
the config does not have (with the keys that level does have); a value of the wrong type.

absl and ml_collections report these as nested exceptions whose messages embed tracebacks; each
becomes one line here. `check_config_file` runs before absl loads the file, `explain` after a
failure, re-reading the config (its `get_config` is cheap and has no side effects) to name the
valid keys.
"""

from __future__ import annotations

import difflib
import os
import re
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from resflax.cli import DEBUG_HINT, describe, first_line, flatten, raised_by_resflax

RECIPES = Path(__file__).resolve().parents[1] / "experiments" / "configs"
# What a value must look like, by the type of the field it overrides.
_KINDS = {int: "an integer", float: "a number", bool: "true or false", tuple: "a tuple like (1, 2)"}


class ConfigFileError(ValueError):
    """The config file is missing or is not Python: reported as it is."""


def config_argument(argv: Sequence[str]) -> str | None:
    """The value of --config in `argv` ('file.py' or 'file.py:argument'), if given."""
    for i, arg in enumerate(argv):
        match = re.fullmatch(r"--?config(?:=(.*))?", arg)
        if match:
            if match.group(1) is not None:
                return match.group(1)
            return argv[i + 1] if i + 1 < len(argv) else None
    return None


def _recipes() -> str:
    names = sorted(p.stem for p in RECIPES.glob("*.py") if p.stem not in ("__init__", "base"))
    return f"the recipes are experiments/configs/<name>.py for <name> in: {', '.join(names)}"


def check_config_file(argument: str | None) -> None:
    """Before absl loads the file (which would defer a missing file's error to the first use of
    the config, and raise a syntax error as a traceback): it exists and compiles."""
    if argument is None:
        return  # absl says that --config is required
    path = argument.split(":", 1)[0]
    if not Path(path).is_file():
        what = "Is a directory" if Path(path).is_dir() else "No such file or directory"
        near = f"; did you mean {path}.py?" if Path(f"{path}.py").is_file() else ""
        raise ConfigFileError(f"--config: {what}: {path!r}{near}; {_recipes()}")
    try:
        source = Path(path).read_bytes()
    except OSError as e:
        raise ConfigFileError(f"--config: config file {path!r} cannot be read: {e.strerror}") from e
    try:
        compile(source, path, "exec")
    except (SyntaxError, ValueError) as e:
        line = f" line {e.lineno}" if getattr(e, "lineno", None) else ""
        reason = getattr(e, "msg", None) or first_line(e)
        raise ConfigFileError(f"config file {path}{line}: {reason} (not valid Python)") from e


def _innermost(error: BaseException) -> BaseException:
    """The first exception of the chain absl and ml_collections wrapped (by cause or context)."""
    seen = {id(error)}
    while True:
        inner = error.__cause__ or error.__context__
        if inner is None or id(inner) in seen:
            return error
        seen.add(id(inner))
        error = inner


def _line_in(error: BaseException, path: str) -> int | None:
    """The last line of `path` (the config file) in `error`'s traceback, if it passed there."""
    target = os.path.abspath(path)
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
             if os.path.abspath(f.filename) == target]  # fmt: skip
    return lines[-1] if lines else None


def _config_file_error(error: BaseException, argument: str) -> str | None:
    """One line for an error in the config file's own code, or None if it failed elsewhere."""
    path = argument.split(":", 1)[0]
    if isinstance(error, AttributeError) and getattr(error, "name", None) == "get_config":
        return (
            f"config file {path} defines no get_config(); a config file returns its ConfigDict "
            "from get_config() (see experiments/configs/digits.py)"
        )
    line = _line_in(error, path)
    if line is None:
        if isinstance(error, TypeError) and "get_config()" in str(error):
            return f"--config={argument}: {first_line(error)}"  # an argument it does not take
        return None
    if raised_by_resflax(error):  # a recipe refusing its argument, with the valid ones
        return f"--config={argument}: {flatten(str(error))}"
    what = f"{type(error).__name__}: {first_line(error)}"
    return f"config file {path} line {line}: {what}{DEBUG_HINT}"


def _load(argument: str) -> Any:
    """The config as ml_collections loads it: the file's `get_config(<argument>)`."""
    import importlib.util

    path, *arg = argument.split(":", 1)
    spec = importlib.util.spec_from_file_location("resflax_config_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*arg)


def _overrides(argv: Sequence[str]) -> Iterator[str]:
    for arg in argv:
        match = re.match(r"--?(?:no)?config\.([^=]+)", arg)
        if match:
            yield match.group(1)


def _paths(node: Any, prefix: str = "") -> Iterator[str]:
    from ml_collections import ConfigDict

    for key in node:
        value = node[key]
        yield f"{prefix}{key}"
        if isinstance(value, ConfigDict):
            yield from _paths(value, f"{prefix}{key}.")


def _unknown_key(config: Any, path: str) -> str | None:
    """One line for an override of `path` the config lacks, naming the keys of its level."""
    from ml_collections import ConfigDict

    from resflax.train.config import LEGACY_EXECUTION_FIELDS
    from resflax.train.population import may_vary

    node, seen = config, []
    for key in path.split("."):
        level = ".".join(["config", *seen])
        if not isinstance(node, ConfigDict):
            return f"--config.{path}: {level} is a value ({node!r}), not a group of keys"
        if key not in node:
            keys = sorted(node.keys())
            close = difflib.get_close_matches(key, keys, n=2)
            elsewhere = [p for p in _paths(config) if p.rsplit(".", 1)[-1] == key]
            if seen == ["population"]:
                hint = (f"; it cannot vary within a population (members share one architecture, "
                        f"data set and batch); may vary: {may_vary()}")  # fmt: skip
            elif key in LEGACY_EXECUTION_FIELDS:
                moved = LEGACY_EXECUTION_FIELDS[key]
                hint = f"; an execution setting now: {moved} (docs/execution.md)"
            elif close:
                hint = f"; Did you mean {' or '.join(repr(c) for c in close)}"
            elif elsewhere:
                hint = f"; there is {', '.join(f'--config.{p}' for p in elsewhere)}"
            else:
                hint = ""
            valid = ", ".join(keys)
            return f"unknown config key {key!r}{hint}; {level} has: {valid}"
        node, seen = node[key], [*seen, key]
    return None


def _bad_value(error: BaseException, config: Any) -> str | None:
    """One line for an override absl could not parse as the field's type."""
    from ml_collections.config_flags import config_path

    match = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", flatten(str(error)))
    if not match:
        return None
    path, value, reason = match.groups()
    try:
        kind = _KINDS.get(config_path.get_type(path, config))
        now = config_path.get_value(path, config)
    except (KeyError, AttributeError, TypeError, ValueError):
        return None
    what = f"is not {kind}" if kind else f"cannot be read: {reason}"
    return f"--config.{path}={value!r} {what}; the recipe has {now!r}"


def explain(error: BaseException, argv: Sequence[str]) -> str:
    """One line for an error raised while absl parsed `argv`."""
    from absl import flags

    if isinstance(error, ConfigFileError):
        return str(error)
    inner = _innermost(error)
    argument = config_argument(argv)
    if argument is not None:
        text = _config_file_error(inner, argument)
        if text:
            return text
        try:
            config = _load(argument)
        except Exception:  # the original error is the one to report
            config = None
        for path in _overrides(argv) if config is not None else ():
            text = _unknown_key(config, path)
            if text:
                return text
        text = _bad_value(error, config) if config is not None else None
        if text:
            return text
    required = re.search(r"Flag --(\w+) must have a value other than None", str(error))
    if required:
        name = required.group(1)
        if name == "config" and argument is not None:  # given, but get_config gave nothing
            return f"--config={argument}: get_config() returned None, not a ConfigDict"
        return f"--{name} is required: {flags.FLAGS[name].help}"
    if isinstance(error, flags.Error):
        lines = [line for line in str(error).splitlines() if not line.startswith("Pass --help")]
        return flatten("\n".join(lines))
    return describe(inner)


# A run's length: a recipe sets one of these, and setting one on the command line clears the
# other (`--config.num_steps=12` on a recipe written in epochs runs 12 steps).
LENGTH_KEYS = ("num_epochs", "num_steps")
_LENGTH = re.compile(r"--?config\.(num_epochs|num_steps)(?:=(.*))?")


def take_length_none(argv: Sequence[str]) -> tuple[list[str], set[str]]:
    """`argv` without `--config.num_epochs=none` / `--config.num_steps=none` (any case, with '='
    or as two arguments; absl would read 'none' as a number and fail), and the keys those
    clear. A later number for the same key wins over an earlier `none`, as the last value
    of a flag does."""
    kept, cleared, i = [], set(), 0
    while i < len(argv):
        match = _LENGTH.fullmatch(argv[i])
        if match is None:
            kept.append(argv[i])
            i += 1
            continue
        key, inline = match.groups()
        value = inline if inline is not None else argv[i + 1] if i + 1 < len(argv) else ""
        if value.lower() == "none":
            cleared.add(key)
            i += 1 if inline is not None else 2
            continue
        cleared.discard(key)
        kept.append(argv[i])
        i += 1
    return kept, cleared


def settle_length(config: Any, cleared: set[str]) -> None:
    """Applies the command line's length to the loaded `config`: the keys in `cleared` become
    None, and a key given a number there clears the other one (the recipe's). Numbers for both
    there are an error: which one should win is not clear."""
    from absl import flags
    from ml_collections import ConfigDict

    if not isinstance(config, ConfigDict):
        return  # reported as such when the config is read
    for key in sorted(cleared):
        unknown = _unknown_key(config, key)
        if unknown:
            raise ValueError(unknown)
    given = {k for k in LENGTH_KEYS if f"config.{k}" in flags.FLAGS
             and flags.FLAGS[f"config.{k}"].present} - cleared  # fmt: skip
    if len(given) == 2:
        raise ValueError(
            f"--config.num_epochs={config.num_epochs} and --config.num_steps={config.num_steps} "
            "both given; give one: it replaces the recipe's length, in either unit"
        )
    for key in cleared:
        config[key] = None
    for key in given:
        other = LENGTH_KEYS[1 - LENGTH_KEYS.index(key)]
        if other in config:
            config[other] = None
