"""Where metrics go: `metrics.jsonl` (one JSON object per line) and TensorBoard event files in
the workdir, and a progress line with speed and ETA. Only the writing process (process 0)
writes; the others get a writer that does nothing."""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from absl import logging


def strict_json(value: Any, **kwargs: Any) -> str:
    """`json.dumps` whose output every JSON parser accepts: a NaN or infinite float (a diverged
    loss) becomes null, where Python's default writes the non-JSON tokens NaN and Infinity."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False, **kwargs)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ (0x82F63B78 if n & 1 else 0)
        table.append(n)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord framing."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventFile:
    """A TensorBoard event file written directly (TFRecord framing around `Event` protos).
    tensorboard's own writer imports all of TensorFlow when it is installed, seconds of start-up
    for a few scalars; this needs only the protos from the tensorboard package."""

    def __init__(self, logdir: str | Path) -> None:
        from tensorboard.compat.proto import event_pb2

        self._event_pb2 = event_pb2
        Path(logdir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.resflax"
        self._file = (Path(logdir) / name).open("ab")
        self.add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add(self, event: Any) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", _masked_crc(header)))
        self._file.write(data + struct.pack("<I", _masked_crc(data)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MetricWriter:
    """Appends to `<workdir>/metrics.jsonl` and `<workdir>/tensorboard/`.

    On resume from step `resume_step`, lines for later steps (written after that checkpoint by
    the interrupted run, and about to be recomputed) are dropped, so the file reads as if the
    run had never stopped; TensorBoard gets a restart marker that makes it discard them too.
    """

    def __init__(self, workdir: str | Path, *, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        self._workdir, self._resume_step = Path(workdir), resume_step
        # A population's members: one TensorBoard run each, tensorboard/member_<k>/.
        self._members: dict[int, EventFile] = {}
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [
                line for line in self.path.read_text().splitlines() if _up_to(line, resume_step)
            ]
            # Replaced in one rename: a kill here leaves the old file or the new, never neither.
            partial = self.path.with_suffix(".jsonl.tmp")
            partial.write_text("".join(f"{line}\n" for line in kept))
            os.replace(partial, self.path)
        self._tb = self._event_file(Path(workdir) / "tensorboard")

    def _event_file(self, logdir: Path) -> EventFile:
        from tensorboard.compat.proto import event_pb2

        events = EventFile(logdir)
        events.add(
            event_pb2.Event(
                wall_time=time.time(),
                # TensorBoard drops earlier events at this step or later: keep resume_step's.
                step=self._resume_step + 1,
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
            )
        )
        return events

    def write(
        self, step: int, split: str, scalars: dict[str, float], member: int | None = None
    ) -> None:
        """One metrics line (tagged `member` for a population's member) and its TensorBoard
        scalars (a member's in its own run, tensorboard/member_<k>/)."""
        if not self.enabled:
            return
        tag = {} if member is None else {"member": member}
        with self.path.open("a") as f:
            f.write(strict_json({"step": step, "split": split, **tag, **scalars}) + "\n")
        from tensorboard.compat.proto import event_pb2, summary_pb2

        values = [
            summary_pb2.Summary.Value(tag=f"{split}/{k}", simple_value=float(v))
            for k, v in scalars.items()
            if isinstance(v, int | float)
        ]
        summary = summary_pb2.Summary(value=values)
        events = self._tb
        if member is not None:
            if member not in self._members:
                logdir = self._workdir / "tensorboard" / f"member_{member}"
                self._members[member] = self._event_file(logdir)
            events = self._members[member]
        events.add(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        events.flush()

    def flush(self) -> None:
        for events in [self._tb, *self._members.values()]:
            if events is not None:
                events.flush()

    def close(self) -> None:
        for events in [self._tb, *self._members.values()]:
            if events is not None:
                events.close()
        self._tb, self._members = None, {}


def _up_to(line: str, step: int) -> bool:
    """Whether a metrics line is complete and at or before `step` (a process killed while
    writing leaves a cut-off last line: it is dropped, and rewritten by the resumed run)."""
    try:
        return json.loads(line)["step"] <= step
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Speed and ETA from the steps since the last report (so compilation and evaluation
    pauses do not distort them)."""

    def __init__(self, total_steps: int, global_batch: int, *, enabled: bool = True):
        self.total_steps, self.global_batch, self.enabled = total_steps, global_batch, enabled
        self._step: int | None = None
        self._time = 0.0

    def start(self, step: int) -> None:
        """Start timing at `step` (call after anything that should not count, like compiling)."""
        self._step, self._time = step, time.perf_counter()

    def report(self, step: int, scalars: dict[str, Any]) -> dict[str, float]:
        """Logs one line; returns {"steps_per_sec", "images_per_sec"} for the window."""
        now = time.perf_counter()
        rates: dict[str, float] = {}
        if self._step is not None and step > self._step and now > self._time:
            steps_per_sec = (step - self._step) / (now - self._time)
            rates = {
                "steps_per_sec": steps_per_sec,
                "images_per_sec": steps_per_sec * self.global_batch,
            }
        self._step, self._time = step, now
        if self.enabled:
            eta = (self.total_steps - step) / rates["steps_per_sec"] if rates else math.nan
            speed = f"{rates['images_per_sec']:,.0f} img/s" if rates else "- img/s"
            shown = "  ".join(f"{k} {_fmt(v)}" for k, v in scalars.items())
            logging.info(
                "step %d/%d  %s  %s  ETA %s",
                step, self.total_steps, shown, speed, format_duration(eta),
            )  # fmt: skip
        return rates


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
