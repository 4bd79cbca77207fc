"""``make test``: the whole suite, every tier, in two phases that fit this
2-core budget.

Phase 1 runs the cluster tier (a Ray cluster on loopback: mostly waiting on
Ray's processes) in its own pytest session beside the API, unit, security
and browser tiers (mostly waiting on servers and a browser); one core each
is enough for both. Phase 2 runs the training tier alone: its stories time
real training (the README quick start checks the job's estimate against the
duration it measures), so nothing else may run beside it. On 2 cores the
suite took 845 s in one session and 718 s in these phases.

Each phase is an ordinary pytest session (``pyproject.toml``'s options
apply), so every tier still reports itself ON or SKIPPED at the top of its
session. The cluster session's output is printed whole once it ends, so the
two never interleave. The exit status is the first non-zero one.

    python tests/run_suite.py [pytest arguments for every session]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
BESIDE = ["tests/cluster"]
FIRST = ["tests/api", "tests/unit", "tests/security", "tests/browser"]
ALONE = ["tests/training"]


def pytest(paths: list[str], extra: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pytest", *paths, *extra], cwd=TESTS.parent, **kwargs)  # type: ignore[call-overload]


def main(extra: list[str]) -> int:
    every = sorted(p.name for p in TESTS.iterdir() if p.is_dir() and p.name[0] not in "._")
    assert every == sorted(Path(p).name for p in BESIDE + FIRST + ALONE), f"a tier is missing a phase: {every}"
    with tempfile.TemporaryFile() as log:
        beside = pytest(BESIDE, extra, stdout=log, stderr=subprocess.STDOUT)
        first = pytest(FIRST, extra).wait()
        cluster = beside.wait()
        log.seek(0)
        sys.stdout.flush()
        sys.stdout.buffer.write(log.read())
        sys.stdout.flush()
    alone = pytest(ALONE, extra).wait()
    return next((code for code in (first, cluster, alone) if code != 0), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
