"""The python grader's process (run as ``python -I -c <this file> PHASE CONFIG``;
it never imports openft). See :mod:`openft.graders.sandbox` for the design.

Phase ``launch``: ask to be killed when the parent dies, enter new user and
network namespaces (no network interfaces but a downed loopback; no
privileges over the host), then exec
this script again as phase ``run``, so nothing of ctypes survives.

Phase ``run``: set resource limits, install an audit hook that refuses
opening files outside Python's own library folders, listing other folders,
sockets, subprocesses, signals and ctypes; then read requests, one JSON line
each, from stdin and answer on the original stdout (user code's prints go to
stderr). The first request carries the source; later ones a sample and item.
"""

import json
import os
import sys


def launch(config_text):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL: die with the process that started us
    clone_newuser, clone_newnet = 0x10000000, 0x40000000
    isolated = libc.unshare(clone_newuser | clone_newnet) == 0
    config = json.loads(config_text)
    config["network_isolated"] = isolated
    os.execv(sys.executable, [sys.executable, "-I", "-c", config["script"], "run", json.dumps(config)])


def run(config_text):
    import math
    import resource
    import traceback

    config = json.loads(config_text)
    memory = int(config["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    requests = sys.stdin
    roots = tuple(os.path.realpath(root) + os.sep for root in config["read_roots"])
    hidden = tuple(os.path.realpath(root) + os.sep for root in config["hidden_roots"])
    writes = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    refused_prefixes = (
        "socket.", "subprocess.", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn",
        "os.system", "os.kill", "os.killpg", "ctypes.", "os.remove", "os.rename", "os.rmdir", "os.mkdir",
        "os.chmod", "os.chown", "os.link", "os.symlink", "os.truncate", "os.unlink", "os.utime",
        "os.chdir", "pty.", "resource.setrlimit", "resource.prlimit",
        "mmap.", "shutil.", "webbrowser.",
        "urllib.", "http.", "ftplib.", "smtplib.", "imaplib.", "poplib.", "nntplib.", "telnetlib.",
    )

    def readable(path):
        real = os.path.realpath(os.fsdecode(path)) + os.sep
        return any(real.startswith(root) for root in roots) and not any(real.startswith(h) for h in hidden)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & writes)
            if writing or not readable(path):
                raise PermissionError(f"the grader sandbox does not allow opening {path}")
        elif event in ("os.listdir", "os.scandir"):
            if args and args[0] not in (None, ".") and not readable(args[0]):
                raise PermissionError(f"the grader sandbox does not allow listing {args[0]}")
        elif event == "ctypes.dlopen":  # an ImportError, so that `try: import ctypes` falls back
            raise ImportError("the grader sandbox does not allow ctypes")
        elif event.startswith(refused_prefixes):
            raise PermissionError(f"the grader sandbox does not allow {event}")

    grade = None
    sys.addaudithook(hook)
    for line in requests:
        try:
            request = json.loads(line)
        except ValueError:
            return
        try:
            if grade is None:
                namespace = {"__name__": "grader"}
                exec(compile(request["source"], "<grader>", "exec"), namespace)
                grade = namespace.get("grade")
                if not callable(grade):
                    raise TypeError("the source defines no function grade(sample, item)")
                reply = {"ok": True, "network_isolated": config.get("network_isolated", False)}
            else:
                value = grade(request["sample"], request["item"])
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise TypeError(f"grade() must return a finite number, got {value!r:.100}")
                reply = {"reward": float(value)}
        except BaseException as exc:  # noqa: BLE001 -- anything the user's code raises is its result
            frames = traceback.format_exception(type(exc), exc, exc.__traceback__)
            reply = {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": "".join(frames)[-4000:]}
        try:
            replies.write(json.dumps(reply) + "\n")
        except BaseException:  # noqa: BLE001 -- e.g. out of memory while encoding
            replies.write('{"error": "MemoryError: the reply could not be encoded"}\n')


if __name__ == "__main__":
    (launch if sys.argv[1] == "launch" else run)(sys.argv[2])
