"""The warm start of training processes: ``python -m openft.training.zygote``.

Starting Python and importing torch, transformers, PEFT and TRL takes
several seconds, on every job. The worker keeps one zygote: a process that
has imported all of it (and openft's recipes) once, then forks a training
process per job (and per estimate) on request. The child is what ``python -m
openft.training.run CONFIG`` would be (same entry point, same records on
its stdout, same log on its stderr, its own session and process group, the
environment the worker gives it, that command line as its process title),
minus the imports. Cancel, pause and kill -9 reach it as they reach a cold
one; the zygote reaps it and reports its exit status.

The worker talks to the zygote over a ``SOCK_SEQPACKET`` socket pair whose
descriptor it passes (its number is the one argument): a ``spawn`` message
(JSON) carries the module to run (a job's ``openft.training.run``, or an
estimate's ``openft.training.estimate``), its arguments, folder and
environment, with its stdout and stderr as ``SCM_RIGHTS`` descriptors; the zygote answers ``{"spawned": pid}``,
and ``{"exited": pid, "code": c}`` when that child ends (``c`` negative for
a signal, as ``subprocess`` reports it). The zygote dies with the worker
(``PR_SET_PDEATHSIG``), and its children with it; it stays single-threaded,
so forking it is safe, and it uses no torch operation, so a child starts
with torch's default state, as a cold process would.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import signal
import socket
import sys
import time
import traceback

import setproctitle  # finds the command line's memory when imported: here, before any fork

ENTRY_POINTS = ("openft.training.run", "openft.training.estimate", "openft.evals.run")
"""The modules a zygote runs, as ``python -m MODULE ARGS`` would."""

MAX_MESSAGE = 1 << 20


def warm_up() -> None:
    """Import what every training process imports (nothing runs)."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    import trl  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    import openft.evals.run  # noqa: F401
    import openft.training.common  # noqa: F401
    import openft.training.estimate  # noqa: F401
    import openft.training.recipes.dpo  # noqa: F401
    import openft.training.recipes.rft  # noqa: F401
    import openft.training.recipes.sft  # noqa: F401
    import openft.training.run  # noqa: F401


def serve(control: socket.socket) -> None:
    """Fork a training process per ``spawn`` request until the worker goes."""
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select through the wakeup fd
    while True:
        ready, _, _ = select.select([control, wake_read], [], [])
        if wake_read in ready:
            os.read(wake_read, 4096)
            _reap(control)
        if control in ready:
            message, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 2)
            if not message:  # the worker closed its end: it is gone or stopping
                return
            request = json.loads(message)
            pid = os.fork()
            if pid == 0:
                _child(request, fds, control, (wake_read, wake_write))
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"spawned": pid, "id": request["id"]}).encode())


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        control.send(json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}).encode())


def _child(request: dict[str, object], fds: list[int], control: socket.socket, wake: tuple[int, int]) -> None:
    """In the forked process: become ``python -m MODULE ARGS``; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        control.close()
        for fd in wake:
            os.close(fd)
        os.setsid()
        stdout, stderr = fds
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.close(stdout)
        os.close(stderr)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(str(request["cwd"]))
        name, args = str(request["module"]), [str(a) for a in request["args"]]  # type: ignore[attr-defined]
        if name not in ENTRY_POINTS:
            raise ValueError(f"the zygote does not run {name}")
        setproctitle.setproctitle(" ".join([sys.executable, "-m", name, *args]))
        environment = dict(request["env"])  # type: ignore[call-overload]
        os.environ.clear()
        os.environ.update(environment)
        module = importlib.import_module(name)
        if hasattr(module, "STARTED"):  # a module that times itself from its process's start: now
            module.STARTED = time.monotonic()
        sys.argv = [str(module.__file__), *args]  # as ``python -m`` sets it
        module.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()  # what a cold process runs as it exits
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    from openft.training.run import die_with_parent, reproducible_math

    reproducible_math()  # before warm_up's first matrix product
    die_with_parent()
    control = socket.socket(fileno=int(sys.argv[1]))
    warm_up()
    control.send(json.dumps({"ready": os.getpid()}).encode())
    serve(control)


if __name__ == "__main__":
    main()
