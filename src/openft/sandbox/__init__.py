"""Code a user sends runs here: inside an operating-system sandbox built by
bubblewrap (Debian's ``bubblewrap``, the sandbox of Flatpak), never in an
openft process and never behind checks in the same interpreter.

A sandbox has its own user, mount, PID, network, IPC, UTS and cgroup
namespaces: it sees read-only system and Python folders and its own
scratch ``/tmp``, and nothing of the host (no ``$OPENFT_HOME``, blobs,
database, keys, ``/etc`` or other processes), has no network at all, runs
as an unprivileged uid without capabilities under ``no_new_privs`` and a
seccomp filter, and lives within limits on memory, CPU time, processes,
open files and file size. When it is killed, every process in it ends.

* :mod:`~openft.sandbox.bwrap` builds and starts one (:func:`start`);
* :mod:`~openft.sandbox.seccomp` compiles its system-call filter;
* :func:`problem` says, once per process, whether this host can build one.

Where it cannot (bubblewrap missing, user namespaces disabled, libseccomp
missing), features that run user code are refused with a 400 naming the
reason; nothing falls back to weaker isolation. Settings:
``OPENFT_SANDBOX_BWRAP`` (the bubblewrap executable) and
``OPENFT_SANDBOX_UID`` (the uid sandboxes run as when openft runs as root).
"""

from __future__ import annotations

import functools
import subprocess
import sys

from openft.sandbox.bwrap import SandboxConfig, SandboxProcess, SandboxUnavailable, start

__all__ = ["SandboxConfig", "SandboxProcess", "SandboxUnavailable", "problem", "start"]

PROBE_SECONDS = 30.0


@functools.cache
def problem(bwrap: str = "bwrap", uid: int = 61000) -> str | None:
    """Why this host cannot build sandboxes (None when it can), found by
    building one that runs Python once; cached for the life of the process."""
    try:
        box = start([sys.executable, "-I", "-c", "print('ok')"], SandboxConfig(bwrap=bwrap, uid=uid), {})
    except SandboxUnavailable as exc:
        return str(exc)
    try:
        out = box.process.communicate(timeout=PROBE_SECONDS)[0]
        detail = box.error_text()
    except subprocess.TimeoutExpired:
        out, detail = b"", "a test sandbox did not finish in time"
    finally:
        box.kill()
    if out.strip() != b"ok":
        return f"a test sandbox could not run Python: {detail or 'no output'}"
    return None
