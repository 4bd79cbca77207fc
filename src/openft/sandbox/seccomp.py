"""The seccomp filter every sandbox runs under, compiled by libseccomp.

bubblewrap loads it (``--seccomp FD``) just before it starts the sandboxed
command, so everything that runs inside is filtered. The filter allows by
default and refuses, with ``EPERM``, the system calls a sandboxed process
has no use for and that widen the kernel's attack surface: mounting and
namespaces (no nested user namespace either), tracing and reading other
processes' memory, kernel keyrings, BPF and perf, module loading, clock
and host changes, ``io_uring``, ``userfaultfd``, handle-based opens and
``pidfd`` tricks. ``clone3`` answers ``ENOSYS`` (its flags cannot be
inspected, and C libraries then fall back to ``clone``), and ``clone`` with
any namespace flag is refused. System V shared memory, message queues and
semaphores and ``memfd_create`` are refused: their memory belongs to no
process, so no address-space limit counts it. No socket of any family can
be made (``EAFNOSUPPORT``): a grader has nothing to talk to, and socket
buffers are kernel memory no limit counts either.
System calls of another architecture (32-bit calls on x86-64) kill the
process. The list follows Flatpak's filter (``flatpak-run.c``).

libseccomp is the maintained compiler of such filters; ``pyseccomp`` is its
Python binding (ctypes, the same API as libseccomp's own bindings).
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile

REFUSED = (
    # filesystems and namespaces
    "mount", "umount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "open_by_handle_at", "name_to_handle_at", "fanotify_init", "quotactl", "quotactl_fd",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "process_madvise",
    # kernel interfaces
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "lookup_dcookie", "uselib",
    "personality", "syslog", "acct", "vhangup", "iopl", "ioperm", "modify_ldt",
    "move_pages", "migrate_pages", "mbind", "set_mempolicy", "get_mempolicy",
    # memory no process owns (RLIMIT_AS does not count it; the OOM killer would pick someone else)
    "shmget", "shmat", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop",
    "semctl", "memfd_create", "memfd_secret",
    # per-user kernel objects every sandbox (one uid) would share
    "inotify_init", "inotify_init1", "inotify_add_watch",
    # the host itself
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "nfsservctl",
)
NAMESPACE_FLAGS = 0x7E020080
"""CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET and NEWTIME: a clone
with any of them set is refused (one rule per bit: ``(flags & bit) == bit``)."""


class SeccompUnavailable(RuntimeError):
    """libseccomp (or its Python binding) is missing here."""


@functools.cache
def filter_program() -> bytes:
    """The compiled BPF program (cached: the same for every sandbox)."""
    try:
        import pyseccomp as seccomp
    except (ImportError, RuntimeError) as exc:  # RuntimeError: the binding found no libseccomp.so
        raise SeccompUnavailable(f"libseccomp is not available ({exc})") from exc
    program = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in REFUSED:
        _refuse(program, seccomp.ERRNO(errno.EPERM), name)
    _refuse(program, seccomp.ERRNO(errno.ENOSYS), "clone3")
    for bit in _bits(NAMESPACE_FLAGS):
        _refuse(program, seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, bit, bit))
    for call in ("socket", "socketpair"):
        _refuse(program, seccomp.ERRNO(errno.EAFNOSUPPORT), call)
    with tempfile.TemporaryFile() as handle:
        program.export_bpf(handle)
        handle.seek(0)
        return handle.read()


def _bits(mask: int) -> list[int]:
    return [1 << i for i in range(mask.bit_length()) if mask >> i & 1]


def _refuse(program: object, action: int, name: str, *args: object) -> None:
    try:
        program.add_rule(action, name, *args)  # type: ignore[attr-defined]
    except (ValueError, RuntimeError, OSError):  # a call this architecture does not have
        pass


def program_fd() -> int:
    """A readable file descriptor holding the program, for ``bwrap --seccomp``
    (the caller passes it to the child and closes it)."""
    program = filter_program()
    read, write = os.pipe()
    try:
        os.write(write, program)  # a few KiB: fits the pipe's buffer
    finally:
        os.close(write)
    return read
