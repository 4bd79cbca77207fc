"""The python grader's sandbox: the user's ``grade(sample, item)`` runs in a
separate process, never in openft's.

One :class:`PythonSandbox` per grader keeps one child process alive across
samples (starting Python for each of thousands of samples would dominate a
training step). The child (:mod:`openft.graders._sandbox_child`):

* starts with ``python -I`` and an empty environment, so it sees none of the
  server's variables (keys, database URLs) and none of its working folder;
* enters new user and network namespaces where the kernel allows (no route
  to any network; no privileges over the host), and refuses sockets
  regardless through an audit hook;
* may open files only under Python's library folders (read-only), openft's
  own package excepted: not the data folder, not ``/etc`` or ``/proc``; no
  subprocesses, signals, ctypes or file changes;
* has an address-space limit (``OPENFT_PYTHON_GRADER_MEMORY_MB``); each call
  has a wall-clock limit (``OPENFT_PYTHON_GRADER_TIMEOUT_SECONDS``) after
  which the process group is killed and a fresh child is started for the
  next sample.

Whatever the code does (raise, loop, exhaust memory, crash), the caller gets
a :class:`SandboxError` with what happened, which the grader turns into a
zero reward with the error recorded.

This is defence in depth for graders written by the members of an
organisation, not a boundary against kernel exploits: deployments that run
graders from untrusted parties should also run workers in a container
(see the README).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_SOURCE_BYTES = 256 * 1024
MAX_REPLY_BYTES = 1 << 20
START_SECONDS = 30.0
"""Time a child has to start and load the source (imports included)."""

_CHILD = Path(__file__).with_name("_sandbox_child.py")


@dataclass(frozen=True)
class SandboxLimits:
    timeout_seconds: float = 60.0
    memory_mb: int = 2048


class SandboxError(Exception):
    """The grader's code failed on one sample: ``kind`` is ``runtime`` (it
    raised or returned a non-number), ``timeout``, ``crash`` (the process died)
    or ``load`` (the source does not run or has no ``grade``)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def read_roots() -> list[str]:
    """Folders the child may read: the standard library and installed packages."""
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if paths.get(k)}
    roots.add(os.path.dirname(os.__file__))
    return sorted(roots)


class PythonSandbox:
    def __init__(self, source: str, limits: SandboxLimits = SandboxLimits()):
        self.source, self.limits = source, limits
        self._process: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self.network_isolated: bool | None = None
        """Whether the kernel gave the child its own network namespace (sockets are refused either way)."""

    def __enter__(self) -> PythonSandbox:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def grade(self, sample: dict[str, Any], item: dict[str, Any]) -> float:
        """The reward ``grade(sample, item)`` returns; SandboxError otherwise."""
        if self._process is None or self._process.poll() is not None:
            self._start()
        reply = self._call({"sample": sample, "item": item}, self.limits.timeout_seconds)
        if "error" in reply:
            raise SandboxError("runtime", reply["error"])
        return float(reply["reward"])

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        if process is not None:
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()

    # ------------------------------------------------------------ internals
    def _start(self) -> None:
        self.close()
        script = _CHILD.read_text()
        config = {
            "script": script,
            "memory_bytes": int(self.limits.memory_mb) * 2**20,
            "read_roots": read_roots(),
            "hidden_roots": [str(Path(__file__).resolve().parents[1])],  # openft itself, wherever installed
        }
        self._buffer = b""
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-c", script, "launch", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={}, cwd="/", start_new_session=True, close_fds=True,
        )
        reply = self._call({"source": self.source}, START_SECONDS)
        if "error" in reply:
            self.close()
            raise SandboxError("load", reply["error"])
        self.network_isolated = bool(reply.get("network_isolated"))

    def _call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            process.stdin.flush()
            line = self._read_line(process, time.monotonic() + timeout)
        except (BrokenPipeError, EOFError):
            code = process.poll()
            self.close()
            raise SandboxError("crash", f"the grader process died (exit status {code})") from None
        except TimeoutError:
            self.close()
            raise SandboxError("timeout", f"grade() did not return within {timeout:g} s") from None
        return dict(json.loads(line))

    def _read_line(self, process: subprocess.Popen[bytes], deadline: float) -> bytes:
        assert process.stdout is not None
        fd = process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError
            self._buffer += chunk
            if len(self._buffer) > MAX_REPLY_BYTES:
                raise EOFError
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line
