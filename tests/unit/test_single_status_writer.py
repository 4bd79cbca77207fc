"""Only store.queries.jobs.transition_job (and create_job's initial insert)
writes a job's status: no other module in openft assigns it. Likewise an
eval run's status is written by store.queries.evals only (and the inserts
that queue a run)."""

from __future__ import annotations

import re
from pathlib import Path

import openft

SOURCE = Path(openft.__file__).parent
# ORM attribute writes, keyword writes of a JobStatus member or a literal, and
# "status" keys in a values dict: the shapes a status write takes.
WRITES = re.compile(
    r"(\.status\s*=[^=]|\bstatus\s*=\s*(?:JobStatus\.\w+|[\"'])|[\"']status[\"']\s*:\s*(?:JobStatus|to\b))"
)
ALLOWED = {
    ("store/queries/jobs.py", "transition_job"),
    ("services/jobs.py", "create_job"),
}


def test_no_other_status_writer() -> None:
    offenders = []
    for path in SOURCE.rglob("*.py"):
        relative = path.relative_to(SOURCE).as_posix()
        function = "<module>"
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if match := re.match(r"\s*(?:async\s+)?def\s+(\w+)", line):
                function = match.group(1)
            if WRITES.search(line) and (relative, function) not in ALLOWED:
                offenders.append(f"{relative}:{number} in {function}: {line.strip()}")
    assert offenders == []


EVAL_RUN_WRITES = re.compile(
    r"(\.status\s*=[^=]|\bstatus\s*=|[\"']status[\"']\s*:)\s*(?:EvalRunStatus|QUEUED|IN_PROGRESS|to\b)")
EVAL_RUN_ALLOWED = {"store/queries/evals.py", "services/evals.py", "scheduler/progress.py"}
"""The queries; the run inserts (an API request's, a checkpoint's) that start a run queued."""


def test_eval_run_status_is_written_by_its_queries_only() -> None:
    offenders = []
    for path in SOURCE.rglob("*.py"):
        relative = path.relative_to(SOURCE).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if EVAL_RUN_WRITES.search(line) and relative not in EVAL_RUN_ALLOWED \
                    and relative != "store/queries/jobs.py":  # transition_job: the job writer, checked above
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == []
    inserts = [line for name in ("services/evals.py", "scheduler/progress.py")
               for line in (SOURCE / name).read_text().splitlines() if EVAL_RUN_WRITES.search(line)]
    assert inserts and all("EvalRunStatus.QUEUED.value" in line for line in inserts), inserts
