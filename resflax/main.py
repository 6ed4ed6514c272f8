"""Command line: train a config in a workdir, resuming from what is there.

    python -m resflax.main --config=experiments/configs/digits.py --workdir=runs/digits
    python -m resflax.main --config=experiments/configs/cifar10.py:resnet56 --workdir=runs/x \\
        --config.num_steps=1000

The config is locked: overriding a key that does not exist is an error. Exit status: 0 when
finished or preempted (SIGTERM; run again to resume), 1 on a bad config or input (one line on
stderr naming the value), 2 on divergence (non-finite loss).
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, with an optional ':argument'.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


class _LibraryInfoFilter(std_logging.Filter):
    """Drops INFO lines from libraries (orbax logs several per checkpoint) so the progress
    lines stay readable; their warnings and errors still show."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def _one_line(error: BaseException, unwrap: bool = True) -> str:
    """A flag or config error as one line: with `unwrap`, its innermost cause (absl and
    ml_collections wrap them in tracebacks and repr'd multi-line messages)."""
    while unwrap and error.__cause__ is not None:
        error = error.__cause__
    text = str(error.args[0]) if error.args else str(error)
    if isinstance(error, KeyError | AttributeError) and "Did you mean" in text:
        text = text.strip("'\"").replace("\\'", "'").replace("\\n", "\n")
        key, _, hint = text.partition("\n")
        return f"unknown config key {key.strip()}; {hint.strip()}"
    if isinstance(error, KeyError | AttributeError) and re.fullmatch(r"""["']*\w+["']*""", text):
        key = text.strip("'\"")
        from resflax.train.config import LEGACY_EXECUTION_FIELDS

        moved = LEGACY_EXECUTION_FIELDS.get(key)
        hint = f"; an execution setting now: {moved} (docs/execution.md)" if moved else ""
        return f"unknown config key '{key}'{hint}"
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Pass --help")]
    if len(lines) > 1 and (isinstance(error, OSError) or lines[0].startswith("flag --config")):
        lines = lines[-1:]  # the underlying error, after a traceback or a list of attempts
    return re.sub(r"^\w+Error: ", "", "; ".join(lines))


def _fail(error: BaseException, status: int = 1, unwrap: bool = True) -> None:
    print(f"resflax: error: {_one_line(error, unwrap)}", file=sys.stderr)
    sys.exit(status)


def _raised_by_resflax(error: BaseException) -> bool:
    """Whether the error was raised in resflax's own code (whose messages are written for the
    user) rather than deep inside jax, TensorFlow or orbax."""
    import resflax

    package = os.path.dirname(os.path.abspath(resflax.__file__)) + os.sep
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(package)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, ValueError, OSError) as e:
        _fail(e)
        raise


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_LibraryInfoFilter())
    try:
        config = _CONFIG.value
        config.get("model")  # the file is loaded lazily: load it here, inside the try
    except (KeyError, AttributeError, ValueError, OSError) as e:
        _fail(e)
    from resflax.runtime import apply_cpu_flags, apply_host_malloc, cpu_flags

    try:
        # Before anything starts threads that allocate (XLA's pools, orbax, tf.data).
        apply_host_malloc(config.get("host_malloc", "auto"))
    except ValueError as e:
        _fail(e, unwrap=False)
    from resflax.train.distributed import initialize
    from resflax.train.loop import NonFiniteLossError, train_and_evaluate

    try:
        # Before JAX starts its backends.
        apply_cpu_flags(cpu_flags(config.xla_cpu_flags))
        initialize(config.distributed)  # before any other JAX call
        summary = train_and_evaluate(config, _WORKDIR.value)
    except NonFiniteLossError as e:
        _fail(e, status=2, unwrap=False)
    except ValueError as e:
        if not _raised_by_resflax(e):
            raise  # a library's error: keep its traceback, it is a bug to report
        _fail(e, unwrap=False)
    final = summary["final_eval"] or {}
    logging.info(
        "%s at step %d/%d; test top-1 %.2f%%; summary in %s/summary.json",
        summary["status"], summary["step"], summary["total_steps"],
        100 * final.get("top1", float("nan")), _WORKDIR.value,
    )  # fmt: skip


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
