"""Only store.queries.jobs.transition_job (and create_job's initial insert)
writes a job's status: no other module in openft assigns it."""

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
