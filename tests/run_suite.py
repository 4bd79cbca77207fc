"""``make test``: the whole suite, every tier, in three phases that fit this
2-core budget.

1. The README quick start alone: it checks the job's estimate against the
   duration it measures, so nothing may run beside it, nor before it in
   the same minute (a Ray cluster's teardown skewed its calibration).
2. The cluster tier (a Ray cluster on loopback: mostly waiting on Ray's
   processes) in its own pytest session beside the API, unit, security and
   browser tiers (mostly waiting on servers and a browser).
3. The rest of the training tier in two sessions side by side: the stories
   driven through a server (jobs, chat, serving, recovery, CLI, webhooks,
   integrations, evals, sharing) beside the recipes and models run mostly
   in-process (families, tool conventions, SFT, DPO, RFT, generator, weights,
   export) and the eval kill -9 story (its own server),
   whose in-process training takes one thread (``support.IN_PROCESS_THREADS``)
   so the two sessions do not oversubscribe the cores. None of them compares
   a duration with an estimate; waits are bounded by deadlines.

On 2 cores the suite took 845 s in one session and 718 s in two phases
(the training tier whole and alone); in these three phases, with evals
added, 11 min 56 s from a fresh clone, set-up included; with the gateway,
719 tests in 9 min 34 s; 734 tests in 12 min 45 s on another 2-core machine
(docs/development.md).

Each session is an ordinary pytest session (``pyproject.toml``'s options
apply), so every tier still reports itself ON or SKIPPED at the top of its
session. The output of a session run beside another is printed whole once
it ends, so two never interleave. The exit status is the first non-zero one.

    python tests/run_suite.py [pytest arguments for every session]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
TRAINING = "tests/training/"
QUICK_START = [TRAINING + "test_e2e_smollm.py"]
SERVED = [TRAINING + f"test_{name}.py" for name in (
    "jobs_train", "chat", "serving", "recovery", "cli", "integrations", "webhook_delivery", "evals", "sharing")]
IN_PROCESS = [TRAINING + f"test_{name}.py" for name in (
    "families", "tool_conventions", "sft", "dpo", "rft", "generator", "weights", "export", "data", "continue",
    "eval_recovery", "gateway",
    "early_stopping", "estimate")]
PHASES: list[list[list[str]]] = [
    [QUICK_START],  # first: nothing else has run yet, not even the teardown of a Ray cluster
    [["tests/cluster"], ["tests/api", "tests/unit", "tests/security", "tests/browser"]],
    [SERVED, IN_PROCESS],
]


def pytest(paths: list[str], extra: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pytest", *paths, *extra], cwd=TESTS.parent, **kwargs)  # type: ignore[call-overload]


def run_side_by_side(sessions: list[list[str]], extra: list[str]) -> list[int]:
    """Run the sessions at once; the last one prints as it goes, the others once they end."""
    *beside, last = sessions
    with tempfile.TemporaryFile() as log:
        started = [pytest(paths, extra, stdout=log, stderr=subprocess.STDOUT) for paths in beside]
        codes = [pytest(last, extra).wait()]
        codes = [process.wait() for process in started] + codes
        log.seek(0)
        sys.stdout.flush()
        sys.stdout.buffer.write(log.read())
        sys.stdout.flush()
    return codes


def check_every_test_has_a_phase() -> None:
    placed = {path for phase in PHASES for session in phase for path in session}
    tiers = sorted(p.name for p in TESTS.iterdir() if p.is_dir() and p.name[0] not in "._")
    training_files = {TRAINING + p.name for p in (TESTS / "training").glob("test_*.py")}
    missing = {f"tests/{t}" for t in tiers if t != "training"} - placed | training_files - placed
    assert not missing, f"tests without a phase in tests/run_suite.py: {sorted(missing)}"


def main(extra: list[str]) -> int:
    check_every_test_has_a_phase()
    codes = [code for phase in PHASES for code in run_side_by_side(phase, extra)]
    return next((code for code in codes if code != 0), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
