"""The worker's side of a job's integrations: start the logger process,
hand it progress records without ever waiting, and turn what it says into
job events.

:meth:`IntegrationSink.send` puts a record on a bounded queue and returns;
a task writes the queue to the logger's stdin. If the logger falls more
than ``QUEUE`` records behind, records are dropped (and counted in a warning)
rather than held: the training process and the worker's own bookkeeping
never wait for a tracker. Events are written to the job without the lease
fence: they describe the tracker, not the training, and may arrive after the
job has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from openft.training.records import CheckpointRecord, DoneRecord, HyperparametersRecord, MetricsRecord, Record

log = logging.getLogger(__name__)

QUEUE = 10_000
CLOSE_SECONDS = 120.0
"""How long a logger may take to close its runs after the job's process ended."""
FORWARDED = (HyperparametersRecord, MetricsRecord, CheckpointRecord, DoneRecord)
"""The progress records trackers log."""

AddEvent = Callable[[str, str, dict[str, Any]], Awaitable[None]]


class IntegrationSink:
    def __init__(self, header: dict[str, Any], add_event: AddEvent):
        self.header = header
        self.add_event = add_event
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        """Bounded by :meth:`send_raw` (``QUEUE``), so the end of the run always fits."""
        self.dropped = 0
        self.process: asyncio.subprocess.Process | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "openft.integrations.logger",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )
        except OSError as exc:
            await self.add_event(f"Integrations could not start ({exc}); the job trains without them.", "warn", {})
            return
        self.tasks = [asyncio.create_task(self._write(), name="integrations writer"),
                      asyncio.create_task(self._read(), name="integrations reader")]
        self.send_raw(self.header)

    def send(self, record: Record, *, fine_tuned_model: str) -> None:
        """Forward one progress record (if it is one a tracker logs), with the
        model the job makes; never blocks."""
        if isinstance(record, FORWARDED):
            self.send_raw({**record.to_dict(), "fine_tuned_model": fine_tuned_model})

    def send_raw(self, item: dict[str, Any], *, always: bool = False) -> None:
        if self.process is None:
            return
        if self.queue.qsize() >= QUEUE and not always:
            self.dropped += 1
            return
        self.queue.put_nowait(item)

    async def _write(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        stdin = self.process.stdin
        try:
            while (item := await self.queue.get()) is not None:
                stdin.write((json.dumps(item) + "\n").encode())
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with contextlib.suppress(Exception):
                stdin.close()

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        async for line in self.process.stdout:
            try:
                said = json.loads(line)
                await self.add_event(said["message"], said.get("level", "info"), said.get("data") or {})
            except Exception:
                log.exception("integration event not recorded: %r", line[:200])

    async def close(self, outcome: str) -> None:
        """End the runs (``outcome``: succeeded, failed, paused, stopped) and
        wait, bounded, for the logger to finish them."""
        if self.process is None:
            return
        self.send_raw({"type": "end", "outcome": outcome}, always=True)
        self.queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.gather(*self.tasks, self.process.wait()), CLOSE_SECONDS)
        except TimeoutError:
            self.process.kill()
            await self.add_event(f"An integration did not close its run within {CLOSE_SECONDS:g} s and was "
                                 "stopped.", "warn", {})
        if self.dropped:
            await self.add_event(f"Integrations fell behind; {self.dropped} progress records were not logged "
                                 "to them (training was not slowed).", "warn", {"dropped": self.dropped})
