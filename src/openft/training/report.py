"""The one channel from a training process to the world.

A recipe hands the :class:`Reporter` its records (``openft.training.records``:
events, metrics, checkpoints, outcome)
and asks :meth:`Reporter.stop_requested` between steps. :class:`PipeReporter`
writes one JSON object per line to a file descriptor the executor reads
(locally, the process's original stdout; library output goes to stderr and
the job log). Stop requests arrive as signals: SIGUSR1 = pause (save a
checkpoint, then exit), SIGTERM = cancel (exit now).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import IO, Any, Literal

from openft.training.records import EventRecord, Record

StopKind = Literal["pause", "cancel"]

PAUSE_SIGNAL = signal.SIGUSR1
CANCEL_SIGNAL = signal.SIGTERM


class Reporter:
    """Base reporter: subclasses implement :meth:`_emit`."""

    def __init__(self) -> None:
        self._stop: StopKind | None = None

    def _emit(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def emit(self, record: Record) -> None:
        self._emit(record.to_dict())

    def event(self, message: str, *, level: str = "info", data: dict[str, Any] | None = None) -> None:
        self.emit(EventRecord(message, level, data))

    def request_stop(self, kind: StopKind) -> None:
        if self._stop != "cancel":
            self._stop = kind

    def stop_requested(self) -> StopKind | None:
        return self._stop


class PipeReporter(Reporter):
    """JSON lines on a dedicated stream; flushed per record."""

    def __init__(self, stream: IO[str]):
        super().__init__()
        self._stream = stream

    def _emit(self, record: dict[str, Any]) -> None:
        self._stream.write(json.dumps(record) + "\n")
        self._stream.flush()

    @classmethod
    def from_stdout(cls) -> PipeReporter:
        """Keep the real stdout for records; send everything else printed to stderr."""
        channel = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        reporter = cls(channel)
        signal.signal(PAUSE_SIGNAL, lambda *_: reporter.request_stop("pause"))
        signal.signal(CANCEL_SIGNAL, lambda *_: reporter.request_stop("cancel"))
        return reporter


class ListReporter(Reporter):
    """Keeps records in memory: for tests and in-process runs."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    def _emit(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == kind]
