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

The command is the namespace's first process (``--as-pid-1``): no process
of bubblewrap's stays inside, so every process in the sandbox descends from
the command and inherits the limits it sets on itself before it runs
anything it was sent. When it ends, the kernel ends the rest.

Who the sandbox runs as:

* openft runs as an ordinary user: bubblewrap maps that user's uid into a
  new user namespace (the kernel's unprivileged user namespaces), so the
  sandboxed code has the user's uid and no capabilities;
* openft runs as root: bubblewrap is started as ``OPENFT_SANDBOX_UID``
  (no capabilities, no groups), and openft writes the new namespace's uid
  map itself (``--userns-block-fd``): the sandbox uid to itself. Only if
  Python lies in a folder that uid cannot open (``/root/.pyenv``), root is
  mapped to root too, so that bubblewrap may reach it while it sets up;
  then any host process running as that uid could enter a live sandbox's
  namespace as root there, which is why the uid must be used by nothing
  else (the server logs a warning once).

bubblewrap always sets ``no_new_privs`` and drops every capability; the
seccomp filter (:mod:`openft.sandbox.seccomp`) refuses what namespaces do
not already hide.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from openft.sandbox.seccomp import SeccompUnavailable, program_fd

log = logging.getLogger(__name__)

SHM_BYTES = 8 * 2**20
"""Size of ``/dev/shm`` (POSIX semaphores and shared memory of ``multiprocessing``)."""
SETUP_SECONDS = 10.0
"""Longest bubblewrap may take to report its sandbox's process."""
KILL_SECONDS = 5.0
"""Longest :meth:`SandboxProcess.kill` waits for the sandbox to be gone."""


@dataclass(frozen=True)
class SandboxConfig:
    """How sandboxes are built on this host and what one may use.

    ``memory_mb`` is the address space of each process in the sandbox,
    ``cpu_seconds`` the CPU time of each process, ``processes`` the
    processes and threads it may have at once (counted in its own user
    namespace), ``open_files`` the descriptors of each process,
    ``scratch_mb`` the size of ``/tmp`` and of any one file written."""

    bwrap: str = "bwrap"
    uid: int = 61000
    """The uid sandboxes run as when openft itself runs as root."""
    memory_mb: int = 2048
    cpu_seconds: float = 120.0
    processes: int = 16
    open_files: int = 128
    scratch_mb: int = 64

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
    """bubblewrap, outside the sandbox (it waits for the command)."""
    pid: int
    """The command: the sandbox's first process, every other one's ancestor."""
    pidfd: int | None
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

    def only_the_command_runs(self) -> bool:
        """True when the command is the sandbox's one process, with one thread:
        nothing it started is left running."""
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
            children = "".join(Path(f"/proc/{self.pid}/task/{t}/children").read_text() for t in tasks)
        except OSError:
            return False
        return len(tasks) == 1 and not children.strip()

    def cpu_seconds(self) -> float:
        """CPU time of the command and of every process in the sandbox it has
        waited for (``/proc/<pid>/stat``: utime, stime, cutime, cstime)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("inf")
        return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_readable(self.pidfd, KILL_SECONDS)  # readable once the command (the namespace's init) exited
            os.close(self.pidfd)
            self.pidfd = None
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.errors):
            try:
                if stream is not None:
                    stream.close()
            except OSError:  # a write buffer the dead sandbox will never read
                pass


def wait_readable(fd: int, seconds: float) -> bool:
    """Whether ``fd`` became readable within ``seconds`` (poll: any fd number)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(poller.poll(max(0.0, seconds) * 1000))


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
    argv = [bwrap, "--unshare-all", "--unshare-user", *user, "--as-pid-1", "--die-with-parent", "--new-session",
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
    pidfd = None
    try:
        pid = _sandbox_pid(info_read, process)
        pidfd = _pidfd(pid)
        if as_root:
            _map_ids(pid, config.uid, root=_root_needed(config.uid))
            os.write(block_write, b"1")
    except BaseException:
        if pidfd is not None:
            os.close(pidfd)
        process.kill()
        process.wait()
        errors.seek(0)
        detail = errors.read(2000).decode(errors="replace").strip()
        errors.close()
        raise SandboxUnavailable(f"bubblewrap could not build the sandbox: {detail or 'no output'}") from None
    finally:
        os.close(info_read)
        os.close(block_write)
    return SandboxProcess(process, pid, pidfd, errors)


def _prefixes() -> list[str]:
    """Python's folders to bind (the installation, the virtual environment)."""
    return sorted({sys.base_prefix, sys.prefix, os.path.realpath(sys.base_prefix)})


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
    # The scratch folder first: Python's folders may lie under /tmp, and are bound over it then.
    args += ["--size", str(config.scratch_mb * 2**20), "--tmpfs", "/tmp"]
    bound = ["/usr/"]
    for prefix in _prefixes():
        if not any((prefix + "/").startswith(b) for b in bound):
            args += ["--ro-bind", prefix, prefix]
            bound.append(prefix + "/")
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm", "--chdir", "/tmp",
             # bubblewrap builds / and /dev on unbounded tmpfs: read-only, they cannot be filled
             "--remount-ro", "/dev", "--remount-ro", "/"]
    return args


def _sandbox_pid(info: int, process: subprocess.Popen[bytes]) -> int:
    """The pid of the sandboxed command, from bubblewrap's ``--info-fd`` report."""
    data, deadline = b"", time.monotonic() + SETUP_SECONDS
    while True:
        if not wait_readable(info, deadline - time.monotonic()):
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


@functools.cache
def _root_needed(uid: int) -> bool:
    """Whether ``uid`` cannot open one of Python's folders by itself (so
    bubblewrap needs root mapped to reach it while it sets up)."""
    for prefix in _prefixes():
        path = Path(prefix)
        for folder in [*reversed(path.parents), path]:
            mode = folder.stat()
            bits = stat.S_IXOTH | stat.S_IROTH if folder == path else stat.S_IXOTH
            if mode.st_uid != uid and mode.st_mode & bits != bits:
                log.warning("python graders' sandbox: uid %d cannot open %s, so root is mapped into each "
                            "sandbox's user namespace while bubblewrap sets it up; make sure no other "
                            "process on this host runs as uid %d (OPENFT_SANDBOX_UID)", uid, folder, uid)
                return True
    return False


def _map_ids(pid: int, uid: int, *, root: bool) -> None:
    """Map the sandbox uid (and gid) to itself in the new user namespace, and
    root to root where bubblewrap needs it to reach Python (see the module docstring)."""
    mapping = (f"0 0 1\n{uid} {uid} 1\n" if root else f"{uid} {uid} 1\n")
    Path(f"/proc/{pid}/uid_map").write_text(mapping)
    Path(f"/proc/{pid}/setgroups").write_text("deny")
    Path(f"/proc/{pid}/gid_map").write_text(mapping)
