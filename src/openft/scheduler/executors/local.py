"""Local executor: each job in its own process (own session and process
group, own log file), reporting JSON lines on its stdout.

Warm by default (``OPENFT_WARM_START``): the process is forked from a
zygote that has imported the ML stack once (``executors/warm.py``), so a
job skips seconds of imports; otherwise, or when the zygote is not there,
it is a new ``python -m openft.training.run CONFIG``. Either way it is the
same entry point, and it is stopped the same way: SIGUSR1 asks for a pause
(the process saves its state and exits), SIGTERM for a cancel; after the
grace period the whole group gets SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from openft.evals.config import EvalRunConfig
from openft.training import records
from openft.training.config import RunConfig
from openft.training.records import Record
from openft.training.report import CANCEL_SIGNAL, PAUSE_SIGNAL, StopKind

log = logging.getLogger(__name__)

RECORD_LIMIT = 1 << 20
"""Longest progress record line read from a training process."""
RESTART_SECONDS = 60.0
"""Least time between two starts of the zygote (one that keeps dying costs cold starts, not a loop)."""


class LocalRun:
    """A training process on this machine: its records, stop signals and exit."""

    log_path: Path

    @property
    def pid(self) -> int:
        raise NotImplementedError

    @property
    def returncode(self) -> int | None:
        raise NotImplementedError

    async def _readline(self) -> bytes:
        raise NotImplementedError

    async def wait(self) -> int:
        raise NotImplementedError

    @property
    def label(self) -> str:
        return f"training process {self.pid}"

    def exit_reason(self, code: int) -> str:
        return f"signal {-code}" if code < 0 else f"exit code {code}"

    async def records(self) -> AsyncIterator[Record]:
        while line := await self._readline():
            try:
                yield records.parse(json.loads(line))
            except (json.JSONDecodeError, AttributeError, records.UnknownRecord):
                log.warning("unreadable progress record from pid %s: %r", self.pid, line[:200])

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    async def stop(self, kind: StopKind, grace: float) -> None:
        """Ask the process to stop; kill its group if it is still there after ``grace``."""
        if self.returncode is not None:
            return
        self._signal(PAUSE_SIGNAL if kind == "pause" else CANCEL_SIGNAL)
        try:
            await asyncio.wait_for(asyncio.shield(self.wait()), grace)
        except TimeoutError:
            log.warning("training process %s ignored %s for %.1fs; killing it", self.pid, kind, grace)
            self._signal(signal.SIGKILL)


class ColdRun(LocalRun):
    """A training process started as a new Python (a subprocess of the worker)."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path):
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def _readline(self) -> bytes:
        assert self.process.stdout is not None
        return await self.process.stdout.readline()

    async def wait(self) -> int:
        return await self.process.wait()


class LocalExecutor:
    def __init__(self, runs_dir: Path, *, warm: bool = True):
        self.runs_dir = runs_dir
        self._zygote_started = -RESTART_SECONDS
        self.zygote = None
        if warm:
            from openft.scheduler.executors.warm import Zygote

            self.zygote = Zygote(runs_dir / "zygote.log")

    @staticmethod
    def accepts(job: Any) -> bool:
        """Jobs that asked for resources need the Ray executor."""
        return not job.resources

    async def admission(self) -> Callable[[Any], bool]:
        return self.accepts

    async def start(self) -> None:
        """Start the zygote now, so that the first job starts warm too. One that
        died is started again, at most once a minute."""
        if self.zygote is None or self.zygote.alive or time.monotonic() - self._zygote_started < RESTART_SECONDS:
            return
        self._zygote_started = time.monotonic()
        try:
            await self.zygote.start()
        except OSError as exc:
            log.warning("the training zygote did not start (%s); jobs start cold", exc)

    async def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
            await self.zygote.wait_closed()

    async def launch(self, config: RunConfig | EvalRunConfig, attempt: int,
                     requested: dict[str, Any] | None = None) -> LocalRun:
        """Start ``python -m config.entry`` (a training run, an eval run) for ``config``."""
        assert not requested, "the local executor does not place jobs on resources"
        folder = self.runs_dir / config.job_id
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / f"attempt-{attempt}.json"
        config.dump(config_path)
        log_path = folder / "train.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENFT_PARENT_PID": str(os.getpid())}
        if self.zygote is not None:
            from openft.scheduler.executors.warm import ZygoteUnavailable

            await self.start()  # a zygote that died is started again for the next job
            try:
                return await self._fork(config.entry, config_path, folder, env, log_path)
            except ZygoteUnavailable as exc:
                log.warning("starting %s cold: %s", config.job_id, exc)
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", config.entry, str(config_path),
                stdout=asyncio.subprocess.PIPE, stderr=log_file, cwd=folder, start_new_session=True,
                env=env, limit=RECORD_LIMIT,
            )
        return ColdRun(process, log_path)

    async def _fork(self, entry: str, config_path: Path, folder: Path, env: dict[str, str],
                    log_path: Path) -> LocalRun:
        from openft.scheduler.executors.warm import WarmRun

        assert self.zygote is not None
        loop = asyncio.get_running_loop()
        read_end, write_end = os.pipe()
        try:
            with log_path.open("ab") as log_file:
                pid = await self.zygote.spawn(entry, [str(config_path)], folder, env, write_end,
                                              log_file.fileno())
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        reader = asyncio.StreamReader(limit=RECORD_LIMIT)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb"))
        return WarmRun(pid, reader, self.zygote.exit_code(pid), log_path)
