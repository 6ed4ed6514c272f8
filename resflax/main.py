"""Command line: train a config in a workdir, resuming from what is there.

    python -m resflax.main --config=experiments/configs/digits.py --workdir=runs/digits
    python -m resflax.main --config=experiments/configs/cifar10.py:resnet56 --workdir=runs/x \\
        --config.num_steps=1000

The config is locked: overriding a key that does not exist is an error. `--config.num_steps`
or `--config.num_epochs` replaces the recipe's length, whichever unit it was written in
(`none` clears one; numbers for both are an error). Needs the `train` extra. Exit status: 0 when
finished or preempted (SIGTERM or Ctrl-C: the current step is saved; run again to resume), 1 on
a bad config or input, 2 on divergence (non-finite loss), 130/143 when SIGINT/SIGTERM arrive
during start-up (nothing to save yet), 130 when a second Ctrl-C cuts a save short. Every
failure is one line on stderr, `resflax: error: ...`, naming the bad value or file and what
would be valid; the config, the workdir and the data are checked before the model is built, so
bad input fails within seconds and prints nothing else.
`RESFLAX_DEBUG=1` re-raises the error instead, with its traceback (resflax/cli.py).
"""

from __future__ import annotations

import logging as std_logging
import os
import signal
import sys
from typing import Any

from resflax import extras


def _stopped_outside_the_steps(signum: int, frame: Any) -> None:
    """SIGTERM or SIGINT while the training loop does not hold them (it saves the current step
    and exits 0): during start-up, or while a finished run writes its summary. Nothing more is
    saved: one line, and the shell's status for the signal (128 + its number).

    The process ends here and now (os._exit): an exception raised from a signal handler can
    surface inside library code that catches it and carries on (a test saw a run ignore its
    SIGINT that way). Nothing is lost: no save is under way outside the steps, and the kernel
    drops the workdir's flock with the process (the next run logs that it took the lock over)."""
    del frame
    name = signal.Signals(signum).name
    print(f"resflax: error: stopped by {name} outside the training steps (start-up or "
          "summary): nothing more was saved; the newest checkpoint, if any, is intact",
          file=sys.stderr, flush=True)  # fmt: skip
    os._exit(128 + signum)


if __name__ == "__main__":
    for _signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_signal, _stopped_outside_the_steps)

# Before absl and ml_collections, which the train extra installs: without it, one line naming
# the extra (exit status 1) rather than a traceback.
extras.require("train", "python -m resflax.main", command_line=__name__ == "__main__")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from resflax import cli, cli_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, with an optional ':argument'.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


class _LibraryInfoFilter(std_logging.Filter):
    """Drops INFO lines from libraries (orbax logs several per checkpoint, jax one for each
    backend it could not start) so the progress lines stay readable and bad input stays one
    line; their warnings and errors still show."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        path = record.pathname
        return record.levelno >= std_logging.WARNING or not (
            "/orbax/" in path or "/jax/" in path or "/jaxlib/" in path
        )


class _ReportedAsError(std_logging.Filter):
    """Drops ml_collections' warning that get_config() returned None: the error line says it."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return "get_config() returned None" not in str(record.msg)


def _parse_flags(argv: list[str]) -> list[str]:
    absl_logger = std_logging.getLogger("absl")
    if not any(isinstance(f, _ReportedAsError) for f in absl_logger.filters):
        absl_logger.addFilter(_ReportedAsError())
    try:
        # Before absl loads it, which defers a missing file's error and prints a bad one's
        # traceback.
        cli_flags.check_config_file(cli_flags.config_argument(argv))
        kept, cleared = cli_flags.take_length_none(argv)
        rest = flags.FLAGS(kept)
    except Exception as e:  # every failure is one line (RESFLAX_DEBUG re-raises)
        if cli.debug():
            raise
        cli.fail(cli_flags.explain(e, argv))
    try:
        # num_epochs or num_steps given on the command line replaces the recipe's length.
        cli_flags.settle_length(_CONFIG.value, cleared)
    except ValueError as e:
        cli.fail(e)
    return rest


def _config() -> Any:
    from ml_collections import ConfigDict

    config = _CONFIG.value
    if not isinstance(config, ConfigDict):
        name = cli_flags.config_argument(sys.argv) or "--config"
        raise ValueError(
            f"config {name!r}: get_config() returned {type(config).__name__}, not a ConfigDict"
        )
    return config


def _train(argv: list[str], workdir: str) -> dict[str, Any]:
    """Checks everything that can be checked before any work, then trains."""
    if len(argv) > 1:
        raise ValueError(
            f"unexpected arguments {argv[1:]}; settings are flags: --config.<key>=<value>"
        )
    config = _config()
    from resflax.runtime import apply_cpu_flags, apply_host_malloc, cpu_flags

    # Before anything starts threads that allocate (XLA's pools, orbax, tf.data).
    apply_host_malloc(config.get("host_malloc", "auto"))
    from resflax.train import config as config_lib

    config_lib.validate(config)
    cli.check_workdir(workdir)
    from resflax.train.distributed import initialize
    from resflax.train.loop import train_and_evaluate
    from resflax.train.parallel import make_parallel

    # Before JAX starts its backends.
    apply_cpu_flags(cpu_flags(config.xla_cpu_flags))
    initialize(config.distributed)  # before any other JAX call
    devices = make_parallel(config.parallel, config.num_devices).global_devices
    config_lib.check_batch_sizes(config, devices)
    return train_and_evaluate(config, workdir)


def main(argv: list[str]) -> None:
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
        handler.addFilter(_LibraryInfoFilter())
    try:
        summary = _train(argv, _WORKDIR.value)
    except KeyboardInterrupt:  # a second Ctrl-C while the first one's save was under way
        cli.fail(
            f"interrupted (SIGINT) twice: the save under way may not have completed; the "
            f"newest complete checkpoint in {_WORKDIR.value} is intact (run again to resume)",
            status=130,
        )
    except Exception as e:  # every failure is one line (RESFLAX_DEBUG re-raises)
        # Not imported up front: the loop's imports would precede the malloc setting.
        loop = sys.modules.get("resflax.train.loop")
        diverged = loop is not None and isinstance(e, loop.NonFiniteLossError)
        cli.fail(e, status=2 if diverged else 1)
    final = summary["final_eval"] or {}
    # Nothing evaluated (no member left, or a stop before any evaluation): say so, not "nan%".
    result = f"test top-1 {100 * final['top1']:.2f}%" if "top1" in final else "not evaluated"
    logging.info(
        "%s at step %d/%d; %s; summary in %s/summary.json",
        summary["status"], summary["step"], summary["total_steps"], result, _WORKDIR.value,
    )  # fmt: skip


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
