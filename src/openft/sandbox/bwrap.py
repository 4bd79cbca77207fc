"""Starting a command inside a bubblewrap sandbox (see :mod:`openft.sandbox`).

:func:`start` builds bubblewrap's command line from a :class:`SandboxConfig`
and returns a :class:`SandboxProcess` whose ``stdin``/``stdout`` are pipes
to the sandboxed command. The view inside is read-only ``/usr`` (and the
``/bin``, ``/lib`` links or folders), the dynamic linker's cache, Python's
own installation and the virtual environment's (``sys.base_prefix``,
``sys.prefix``), a fresh ``/proc`` of its own PID namespace, a minimal
``/dev`` (with a small ``/dev/shm``), and a size-capped ``/tmp`` that is
its working folder and goes with it; everything else is read-only, so no
write can grow past those sizes. Nothing else of the host exists in there.

Who the sandbox runs as:

* openft runs as an ordinary user: bubblewrap maps that user's uid into a
  new user namespace (the kernel's unprivileged user namespaces), so the
  sandboxed code has the user's uid and no capabilities;
* openft runs as root: bubblewrap is started as ``OPENFT_SANDBOX_UID``
  (no capabilities, no groups), and openft writes the new namespace's uid
  map itself (``--userns-block-fd``): the sandbox uid, plus root mapped to
  root only so that bubblewrap may reach a Python installed in a folder
  only root can open (``/root/.pyenv``). The sandboxed code runs as the
  unprivileged uid, and its process limits are counted in its own
  namespace.

bubblewrap always sets ``no_new_privs`` and drops every capability; the
seccomp filter (:mod:`openft.sandbox.seccomp`) refuses what namespaces do
not already hide.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from openft.sandbox.seccomp import SeccompUnavailable, program_fd

SHM_BYTES = 8 * 2**20
"""Size of ``/dev/shm`` (POSIX semaphores and shared memory of ``multiprocessing``)."""
SETUP_SECONDS = 10.0
"""Longest bubblewrap may take to report its sandbox's process."""


@dataclass(frozen=True)
class SandboxConfig:
    """How sandboxes are built on this host and what one may use.

    The limits apply to the whole sandbox: ``memory_mb`` is the address
    space of each process in it, ``cpu_seconds`` the CPU time of each
    process over its life, ``processes`` the processes and threads it may
    have at once (counted in its own user namespace), ``open_files`` the
    descriptors of each process, ``scratch_mb`` the size of ``/tmp`` and of
    any one file written."""

    bwrap: str = "bwrap"
    uid: int = 61000
    """The uid sandboxes run as when openft itself runs as root."""
    memory_mb: int = 2048
    cpu_seconds: float = 120.0
    processes: int = 32
    open_files: int = 256
    scratch_mb: int = 64
    nice: int = 10
    """Sandboxed code yields the CPU to the API and to training."""

    def rlimits(self) -> dict[str, tuple[int, int]]:
        """The resource limits (soft, hard) the sandboxed command sets on itself
        before it runs anything it was sent; it cannot raise them afterwards.
        CPU time: ``SIGXCPU`` at the limit, ``SIGKILL`` a second later."""
        cpu = max(1, round(self.cpu_seconds))
        single = {
            "RLIMIT_AS": self.memory_mb * 2**20,
            "RLIMIT_NPROC": self.processes,
            "RLIMIT_NOFILE": self.open_files,
            "RLIMIT_FSIZE": self.scratch_mb * 2**20,
            "RLIMIT_CORE": 0,
            "RLIMIT_MEMLOCK": 0,
            "RLIMIT_MSGQUEUE": 0,
        }
        return {"RLIMIT_CPU": (cpu, cpu + 1), **{name: (value, value) for name, value in single.items()}}


class SandboxUnavailable(RuntimeError):
    """This host cannot build the sandbox; the message says why and what to set."""


@dataclass
class SandboxProcess:
    """A running sandbox. :meth:`kill` ends every process in it and returns
    once they are gone."""

    process: subprocess.Popen[bytes]
    pidfd: int | None
    """The sandbox's first process (its PID namespace's init); when it ends, the
    kernel ends every other process of the namespace."""
    errors: IO[bytes]

    @property
    def stdin(self) -> IO[bytes]:
        assert self.process.stdin is not None
        return self.process.stdin

    @property
    def stdout(self) -> IO[bytes]:
        assert self.process.stdout is not None
        return self.process.stdout

    def poll(self) -> int | None:
        return self.process.poll()

    def error_text(self, limit: int = 2000) -> str:
        """What bubblewrap (or Python starting up) wrote before the command ran."""
        self.errors.seek(0)
        return self.errors.read(limit).decode(errors="replace").strip()

    def kill(self) -> None:
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            select.select([self.pidfd], [], [], 5.0)  # readable once the namespace's init has exited
            os.close(self.pidfd)
            self.pidfd = None
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.errors):
            if stream is not None:
                stream.close()


def start(command: list[str], config: SandboxConfig, env: dict[str, str]) -> SandboxProcess:
    """Run ``command`` (paths as seen inside) in a new sandbox; raises
    :class:`SandboxUnavailable` when bubblewrap cannot build it here."""
    bwrap = shutil.which(config.bwrap)
    if bwrap is None:
        raise SandboxUnavailable(
            f"bubblewrap ({config.bwrap!r}) is not installed: install Debian's 'bubblewrap' package "
            "(make run does, as root) or set OPENFT_SANDBOX_BWRAP to its path")
    try:
        program = program_fd()
    except SeccompUnavailable as exc:
        raise SandboxUnavailable(f"{exc}: install libseccomp2 and the pyseccomp package") from exc
    info_read, info_write = os.pipe()
    block_read, block_write = os.pipe()
    as_root = os.geteuid() == 0
    user = ["--info-fd", str(info_write)]
    user += ["--uid", str(config.uid), "--gid", str(config.uid), "--userns-block-fd", str(block_read)] \
        if as_root else ["--disable-userns"]
    argv = [bwrap, "--unshare-all", "--unshare-user", *user, "--die-with-parent", "--new-session",
            "--hostname", "sandbox", "--seccomp", str(program), *_view(config), "--clearenv",
            *[a for key, value in env.items() for a in ("--setenv", key, value)], "--", *command]
    errors = tempfile.TemporaryFile()
    passed = (info_write, block_read, program) if as_root else (info_write, program)
    if not as_root:
        os.close(block_read)
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, pass_fds=passed,
            start_new_session=True, close_fds=True, env={"PATH": "/usr/bin:/bin"}, cwd="/",
            **({"user": config.uid, "group": config.uid, "extra_groups": []} if as_root else {}),
        )
    finally:
        for fd in passed:
            os.close(fd)
    try:
        pid = _sandbox_pid(info_read, process)
        pidfd = _pidfd(pid)
        if as_root:
            _map_ids(pid, config.uid)
            os.write(block_write, b"1")
    except BaseException:
        process.kill()
        process.wait()
        errors.seek(0)
        detail = errors.read(2000).decode(errors="replace").strip()
        errors.close()
        raise SandboxUnavailable(f"bubblewrap could not build the sandbox: {detail or 'no output'}") from None
    finally:
        os.close(info_read)
        os.close(block_write)
    return SandboxProcess(process, pidfd, errors)


def _view(config: SandboxConfig) -> list[str]:
    """The file system inside: read-only system and Python folders, /proc, /dev, /tmp."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    if Path("/etc/ld.so.cache").is_file():
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    bound = ["/usr/"]
    for prefix in sorted({sys.base_prefix, sys.prefix, os.path.realpath(sys.base_prefix)}):
        if not any((prefix + "/").startswith(b) for b in bound):
            args += ["--ro-bind", prefix, prefix]
            bound.append(prefix + "/")
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm",
             "--size", str(config.scratch_mb * 2**20), "--tmpfs", "/tmp", "--chdir", "/tmp",
             # bubblewrap builds / and /dev on unbounded tmpfs: read-only, they cannot be filled
             "--remount-ro", "/dev", "--remount-ro", "/"]
    return args


def _sandbox_pid(info: int, process: subprocess.Popen[bytes]) -> int:
    """The pid of the sandbox's init, from bubblewrap's ``--info-fd`` report."""
    data, deadline = b"", time.monotonic() + SETUP_SECONDS
    while True:
        ready, _, _ = select.select([info], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError("bubblewrap did not start in time")
        chunk = os.read(info, 4096)
        if not chunk:
            break
        data += chunk
    if not data:
        process.wait(SETUP_SECONDS)
        raise RuntimeError("bubblewrap exited")
    return int(json.loads(data)["child-pid"])


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _map_ids(pid: int, uid: int) -> None:
    """Map the sandbox uid to itself and root to root in the new user namespace
    (root's only use: letting bubblewrap reach root-only folders while it sets up)."""
    mapping = f"0 0 1\n{uid} {uid} 1\n"
    Path(f"/proc/{pid}/uid_map").write_text(mapping)
    Path(f"/proc/{pid}/setgroups").write_text("deny")
    Path(f"/proc/{pid}/gid_map").write_text(mapping)
