"""Stop requests during training: SIGTERM (a scheduler's preemption) and SIGINT (Ctrl-C)
become a flag the loop reads between steps, so that it saves the current step and exits 0."""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
    """Turns SIGTERM and SIGINT (Ctrl-C) alike into a flag the loop checks between steps: the
    run saves the current step and exits 0, resumable (installed only where Python allows
    handlers: the main thread). A second SIGINT while that save is under way interrupts it
    (the previous checkpoint stays intact). With several processes JAX's preemption service
    owns SIGTERM instead, and orbax's `reached_preemption` tells every process to stop at the
    same step."""

    def __init__(self, manager: Any = None) -> None:
        self.requested = False
        self._previous: Any = None
        self._manager = manager if jax.process_count() > 1 else None

    def reached(self, step: int) -> bool:
        if self._manager is not None:
            return bool(self._manager.reached_preemption(step))
        return self.requested

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.requested = True
        logging.warning(
            "%s received: saving the current step, then exiting (run again to resume)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> Preemption:
        if threading.current_thread() is not threading.main_thread():
            return self
        # Several processes: JAX's preemption service owns SIGTERM, and a Ctrl-C reaches one
        # process only, which cannot save alone: it ends that process (main.py says so).
        signals = () if self._manager is not None else SIGNALS
        self._previous = {s: signal.signal(s, self._handle) for s in signals}
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in (self._previous or {}).items():
            signal.signal(signum, previous)
