"""Warm starts for the local executor: training processes forked from a
zygote that has imported the ML stack once (:mod:`openft.training.zygote`),
instead of a new Python that imports it again for every job.

:class:`Zygote` starts the zygote process (when the worker starts, so the
first job is warm too), talks to it over a ``SOCK_SEQPACKET`` socket pair
from the event loop, and turns its messages into futures: the pid of each
spawned process, and its exit code. :class:`WarmRun` is a
:class:`~openft.scheduler.executors.local.LocalRun` whose process is such a
fork: its records come on a pipe, stop requests are signals to its process
group, its exit code comes from the zygote (the process is the zygote's
child, not the worker's). If the zygote cannot start or dies, jobs start
cold, as ``OPENFT_WARM_START=false`` makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
from pathlib import Path

from openft.scheduler.executors.local import LocalRun

log = logging.getLogger(__name__)

READY_SECONDS = 120.0
"""Longest the zygote may take to import the ML stack."""


class ZygoteUnavailable(RuntimeError):
    """The zygote is not running (it failed to start, or died)."""


class Zygote:
    def __init__(self, log_path: Path):
        self.log_path = log_path
        self._socket: socket.socket | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[int] | None = None
        self._spawned: dict[str, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}

    @property
    def alive(self) -> bool:
        return self._socket is not None

    async def start(self) -> None:
        """Start the zygote (returns at once; :meth:`spawn` waits until it is ready)."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.log_path.open("ab") as log_file:
                self._process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "openft.training.zygote", str(theirs.fileno()),
                    stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file, pass_fds=(theirs.fileno(),),
                    start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", "OPENFT_PARENT_PID": str(os.getpid())},
                )
        finally:
            theirs.close()
        ours.setblocking(False)
        self._socket = ours
        self._ready = loop.create_future()
        loop.add_reader(ours.fileno(), self._receive)

    async def spawn(self, module: str, args: list[str], cwd: Path, env: dict[str, str], stdout: int,
                    stderr: int) -> int:
        """Fork ``python -m module args`` (``openft.training.run`` or
        ``openft.training.estimate``); its pid. ``stdout`` and ``stderr``
        become its own."""
        if self._socket is None or self._ready is None:
            raise ZygoteUnavailable("the zygote is not running")
        try:
            pid = await asyncio.wait_for(asyncio.shield(self._ready), READY_SECONDS)
        except (TimeoutError, ZygoteUnavailable) as exc:
            self.close()
            raise ZygoteUnavailable(f"the zygote did not become ready: {exc}") from None
        request_id = secrets.token_hex(8)
        spawned = self._spawned[request_id] = asyncio.get_running_loop().create_future()
        message = json.dumps({"id": request_id, "module": module, "args": args, "cwd": str(cwd),
                              "env": {**env, "OPENFT_PARENT_PID": str(pid)}}).encode()
        try:
            socket.send_fds(self._socket, [message], [stdout, stderr])
        except OSError as exc:
            self._spawned.pop(request_id, None)
            self.close()
            raise ZygoteUnavailable(f"the zygote is gone ({exc})") from None
        return await spawned

    async def run(self, module: str, args: list[str], cwd: Path, timeout: float) -> tuple[int, bytes, bytes]:
        """Run ``python -m module args`` to its end: exit code, stdout, stderr
        (TimeoutError, with the process killed, past ``timeout``)."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            pid = await self.spawn(module, args, cwd, {**os.environ, "PYTHONUNBUFFERED": "1"},
                                   out.fileno(), err.fileno())
            try:
                code = await asyncio.wait_for(asyncio.shield(self.exit_code(pid)), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                raise
            out.seek(0)
            err.seek(0)
            return code, out.read(), err.read()

    def exit_code(self, pid: int) -> asyncio.Future[int]:
        """Resolves with ``pid``'s exit code (negative: the signal that ended it)."""
        return self._exits.setdefault(pid, asyncio.get_running_loop().create_future())

    def close(self) -> None:
        """Stop the zygote; its children die with it (their parent-death signal)."""
        sock, self._socket = self._socket, None
        if sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        for future in [self._ready, *self._spawned.values()]:
            if future is not None and not future.done():
                future.set_exception(ZygoteUnavailable("the zygote stopped"))
        for future in self._exits.values():
            if not future.done():
                future.set_result(-signal.SIGKILL)  # the parent-death signal ended it
        self._spawned.clear()

    async def wait_closed(self) -> None:
        if self._process is not None:
            await self._process.wait()

    def _receive(self) -> None:
        assert self._socket is not None
        try:
            message = self._socket.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if not message:
            log.warning("the training zygote exited; jobs start cold until the worker restarts it")
            self.close()
            return
        event = json.loads(message)
        if "ready" in event and self._ready is not None and not self._ready.done():
            self._ready.set_result(int(event["ready"]))
        elif "spawned" in event:
            pid = int(event["spawned"])
            self.exit_code(pid)  # before its exit can be reported
            future = self._spawned.pop(str(event["id"]), None)
            if future is not None and not future.done():
                future.set_result(pid)
        elif "exited" in event:
            future = self.exit_code(int(event["exited"]))
            if not future.done():
                future.set_result(int(event["code"]))


class WarmRun(LocalRun):
    """A training process forked by the zygote (see the module docstring)."""

    def __init__(self, pid: int, records: asyncio.StreamReader, exit_code: asyncio.Future[int],
                 log_path: Path):
        self._pid, self._records, self._exit_code = pid, records, exit_code
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._exit_code.result() if self._exit_code.done() else None

    async def _readline(self) -> bytes:
        return await self._records.readline()

    async def wait(self) -> int:
        return await asyncio.shield(self._exit_code)
