"""The python grader's process: the user's ``grade(sample, item)`` runs in an
operating-system sandbox (:mod:`openft.sandbox`), never in openft's process.

One :class:`PythonSandbox` per grader keeps one sandboxed process alive
across samples (starting a sandbox and Python for each of thousands of
samples would dominate a training step). The process
(:mod:`openft.graders._sandbox_child`) reads one JSON request a line from
its stdin and answers one JSON line on its stdout: first the source, then
samples.

Its replies are the user's to forge (the code can write to the reply pipe
itself), so they are read as hostile: at most ``MAX_REPLY_BYTES`` a line,
strict JSON (no ``NaN``), and anything but ``{"reward": <finite number>}``
or ``{"error": <text>}`` is the sample's runtime error. Each call has a
wall-clock limit (``OPENFT_PYTHON_GRADER_TIMEOUT_SECONDS``), writing the
request included, after which the sandbox is killed and a fresh one serves
the next sample. After every call the sandbox must be back to its one
process and thread, and within half its CPU time
(``OPENFT_PYTHON_GRADER_CPU_SECONDS``, counted over its life with every
child it waited for); otherwise it is killed then, and replaced. So nothing
a call starts outlives it, and nothing runs between calls.

Whatever the code does (raise, loop, exhaust memory, crash, lie), the
caller gets a :class:`SandboxError` with what happened, which the grader
turns into a zero reward with the error recorded.
"""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from openft.config import Settings
from openft.sandbox import SandboxConfig, SandboxProcess, SandboxUnavailable, problem, start

MAX_SOURCE_BYTES = 256 * 1024
MAX_REPLY_BYTES = 1 << 20
START_SECONDS = 30.0
"""Time a sandbox has to start and load the source (imports included)."""

_CHILD = Path(__file__).with_name("_sandbox_child.py")
_ENV = {"HOME": "/tmp", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class SandboxLimits:
    """A python grader's limits: each call's wall clock, and its sandbox."""

    timeout_seconds: float = 60.0
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxLimits:
        return cls(settings.python_grader_timeout_seconds, SandboxConfig(
            bwrap=settings.sandbox_bwrap, uid=settings.sandbox_uid, memory_mb=settings.python_grader_memory_mb,
            cpu_seconds=settings.python_grader_cpu_seconds))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxLimits:
        return cls(float(data["timeout_seconds"]), SandboxConfig(**data["sandbox"]))

    def problem(self) -> str | None:
        """Why python graders cannot run on this host (None: they can)."""
        return problem(self.sandbox.bwrap, self.sandbox.uid)


class SandboxError(Exception):
    """The grader's code failed on one sample: ``kind`` is ``runtime`` (it
    raised, returned a non-number or replied garbage), ``timeout``, ``crash``
    (the process died), ``load`` (the source does not run or has no
    ``grade``) or ``unavailable`` (no sandbox can be built here)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


class PythonSandbox:
    def __init__(self, source: str, limits: SandboxLimits = SandboxLimits()):
        self.source, self.limits = source, limits
        self._box: SandboxProcess | None = None
        self._buffer = b""

    def __enter__(self) -> PythonSandbox:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def grade(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        """The reward ``grade(sample, item)`` returns; SandboxError otherwise."""
        try:
            request = json.dumps({"sample": sample, "item": item}, allow_nan=False)
        except (ValueError, TypeError, RecursionError) as exc:
            raise SandboxError("runtime", f"the sample or item cannot be sent to the grader: {exc}") from None
        if self._box is None or self._box.poll() is not None:
            self._start()
        try:
            reply = self._call(request, self.limits.timeout_seconds)
        finally:
            self._settle()
        reward = reply.get("reward")
        if isinstance(reward, (int, float)) and not isinstance(reward, bool) and set(reply) == {"reward"}:
            try:
                value = float(reward)
            except OverflowError:  # an integer of hundreds of digits
                value = math.inf
            if math.isfinite(value):
                return value
        raise SandboxError("runtime", _error_text(reply, "grade() did not return a finite number"))

    def check(self) -> str | None:
        """Parse the source in a sandbox (nothing of it runs): what is wrong
        with it, or None when it parses and defines a top-level ``grade``."""
        self._open()
        try:
            reply = self._call(json.dumps({"check": self.source}), START_SECONDS)
        finally:
            self.close()
        return None if reply == {"ok": True} else _error_text(reply, "could not be checked")

    def close(self) -> None:
        box, self._box = self._box, None
        if box is not None:
            box.kill()

    # ------------------------------------------------------------ internals
    def _open(self) -> None:
        """A fresh sandboxed process (the source not loaded yet)."""
        self.close()
        config = {"rlimits": self.limits.sandbox.rlimits()}
        command = [sys.executable, "-I", "-c", _CHILD.read_text(), json.dumps(config)]
        try:
            self._box = start(command, self.limits.sandbox, _ENV)
        except SandboxUnavailable as exc:
            raise SandboxError("unavailable", str(exc)) from None
        self._buffer = b""
        os.set_blocking(self._box.stdin.fileno(), False)

    def _start(self) -> None:
        self._open()
        reply = self._call(json.dumps({"source": self.source}), START_SECONDS)
        if reply != {"ok": True}:
            self.close()
            raise SandboxError("load", _error_text(reply, "the source did not load"))

    def _settle(self) -> None:
        """After a call: a sandbox in which something the code started still
        runs, or which has used half its CPU time, is replaced before the next
        call (so nothing outlives a call, and no sandbox runs out mid-sample)."""
        box = self._box
        if box is not None and (not box.only_the_command_runs()
                                or box.cpu_seconds() > self.limits.sandbox.cpu_seconds / 2):
            self.close()

    def _call(self, request: str, timeout: float) -> dict[str, Any]:
        box = self._box
        assert box is not None
        deadline = time.monotonic() + timeout
        try:
            self._write(box, request.encode() + b"\n", deadline)
            line = self._read_line(box, deadline)
        except (BrokenPipeError, EOFError):
            code = box.poll()
            if code is None:
                try:
                    code = box.process.wait(1.0)
                except subprocess.TimeoutExpired:
                    code = None
            self.close()
            raise SandboxError("crash", _exit_reason(code)) from None
        except OverflowError:
            self.close()
            raise SandboxError("runtime", f"the grader wrote a reply larger than {MAX_REPLY_BYTES} bytes") from None
        except TimeoutError:
            self.close()
            raise SandboxError("timeout", f"grade() did not return within {timeout:g} s") from None
        try:
            reply = json.loads(line, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            reply = None
        if not isinstance(reply, dict):
            self.close()
            raise SandboxError("runtime", "the grader's process wrote something that is not a reply")
        return reply

    @staticmethod
    def _write(box: SandboxProcess, data: bytes, deadline: float) -> None:
        """All of ``data`` into the sandbox's stdin, or TimeoutError at the
        deadline (a sandbox that stops reading cannot hold this thread)."""
        fd = box.stdin.fileno()
        view = memoryview(data)
        while view:
            if not _wait(fd, select.POLLOUT, deadline):
                raise TimeoutError
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue

    def _read_line(self, box: SandboxProcess, deadline: float) -> bytes:
        fd = box.stdout.fileno()
        while b"\n" not in self._buffer:
            if not _wait(fd, select.POLLIN, deadline):
                raise TimeoutError
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError
            self._buffer += chunk
            if len(self._buffer) > MAX_REPLY_BYTES:
                raise OverflowError
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


def _wait(fd: int, event: int, deadline: float) -> bool:
    """Whether ``fd`` is ready for ``event`` (or hung up) before the deadline;
    poll, not select, so any fd number works."""
    poller = select.poll()
    poller.register(fd, event | select.POLLHUP | select.POLLERR)
    remaining = deadline - time.monotonic()
    return remaining > 0 and bool(poller.poll(remaining * 1000))


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a reward")


def _error_text(reply: dict[str, Any], fallback: str) -> str:
    error = reply.get("error")
    return error[:2000] if isinstance(error, str) and error else fallback


def _exit_reason(code: int | None) -> str:
    """bubblewrap exits 128 + N when the sandboxed process was killed by signal N."""
    if code == 128 + 24:  # SIGXCPU
        return "the grader's process used up its CPU time limit (OPENFT_PYTHON_GRADER_CPU_SECONDS)"
    if code == 128 + 9:
        return "the grader's process was killed (at its CPU time limit, or out of memory)"
    return f"the grader's process died (exit status {code})"
