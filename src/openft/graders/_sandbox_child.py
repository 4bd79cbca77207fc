"""The python grader's process, run inside the sandbox as
``python -I -c <this file> CONFIG`` (it never imports openft). See
:mod:`openft.graders.sandbox` for the protocol.

Before it reads anything it was sent it sets its resource limits (the
hard ones cannot be raised later), takes only the CPU time nothing else
wants (``SCHED_IDLE``), volunteers to be the first process the kernel kills
when the host runs out of memory, makes
``SIGXFSZ`` an error instead of a kill, and keeps the original stdout for
its replies while the user's code writes to ``/dev/null``. Then it reads
requests, one JSON line each, from stdin: ``check`` (parse a source, run
nothing), then ``source`` (load it), then samples and items. Each reply is one JSON line. The limits
and the walls are the kernel's (namespaces, seccomp, rlimits): nothing in
here is a security check.
"""

import json
import math
import os
import resource
import signal
import sys
import traceback


def check(source):
    """Whether the source parses and defines a top-level ``grade`` (nothing runs)."""
    import ast

    try:
        tree = ast.parse(source, "<grader>")
    except SyntaxError as exc:
        return {"error": f"is not valid Python: {exc.msg} (line {exc.lineno})"}
    except (MemoryError, RecursionError):
        return {"error": "is nested too deeply for Python's parser"}
    if not any(isinstance(node, ast.FunctionDef) and node.name == "grade" for node in tree.body):
        return {"error": "must define a top-level function grade(sample, item)"}
    return {"ok": True}


def main(config_text):
    config = json.loads(config_text)
    for name, (soft, hard) in config["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # only the CPU nothing else wants
    with open("/proc/self/oom_score_adj", "w") as adj:
        adj.write("1000")  # first to go if the host runs out of memory
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    grade = None
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except ValueError:
            return
        try:
            if "check" in request:
                reply = check(request["check"])
            elif grade is None:
                namespace = {"__name__": "grader"}
                exec(compile(request["source"], "<grader>", "exec"), namespace)
                grade = namespace.get("grade")
                if not callable(grade):
                    raise TypeError("the source defines no function grade(sample, item)")
                reply = {"ok": True}
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
    main(sys.argv[1])
