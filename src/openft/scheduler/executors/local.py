"""Local executor: each job in its own process (own session and process
group, own log file), reporting JSON lines on its stdout.

Stop: SIGUSR1 asks for a pause (the process saves its state and exits),
SIGTERM for a cancel; after the grace period the whole group gets SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from openft.training.config import RunConfig
from openft.training.report import CANCEL_SIGNAL, PAUSE_SIGNAL, StopKind

log = logging.getLogger(__name__)


class LocalRun:
    def __init__(self, process: asyncio.subprocess.Process, log_path: Path):
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def label(self) -> str:
        return f"training process {self.pid}"

    def exit_reason(self, code: int) -> str:
        return f"signal {-code}" if code < 0 else f"exit code {code}"

    async def records(self) -> AsyncIterator[dict[str, Any]]:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                log.warning("unreadable progress record from pid %s: %r", self.pid, line[:200])

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    async def stop(self, kind: StopKind, grace: float) -> None:
        """Ask the process to stop; kill its group if it is still there after ``grace``."""
        if self.process.returncode is not None:
            return
        self._signal(PAUSE_SIGNAL if kind == "pause" else CANCEL_SIGNAL)
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), grace)
        except TimeoutError:
            log.warning("training process %s ignored %s for %.1fs; killing it", self.pid, kind, grace)
            self._signal(signal.SIGKILL)

    async def wait(self) -> int:
        return await self.process.wait()


class LocalExecutor:
    def __init__(self, runs_dir: Path):
        self.runs_dir = runs_dir

    @staticmethod
    def accepts(job: Any) -> bool:
        """Jobs that asked for resources need the Ray executor."""
        return not job.resources

    async def admission(self) -> Callable[[Any], bool]:
        return self.accepts

    async def launch(self, config: RunConfig, attempt: int, requested: dict[str, Any] | None = None) -> LocalRun:
        assert not requested, "the local executor does not place jobs on resources"
        folder = self.runs_dir / config.job_id
        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / f"attempt-{attempt}.json"
        config.dump(config_path)
        log_path = folder / "train.log"
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "openft.training.run", str(config_path),
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                cwd=folder,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "OPENFT_PARENT_PID": str(os.getpid())},
                limit=1 << 20,
            )
        return LocalRun(process, log_path)
