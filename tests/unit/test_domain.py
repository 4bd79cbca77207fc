"""The job state machine's table, and id generation."""

from __future__ import annotations

from openft.domain import (
    ACTIVE_STATUSES,
    GATEWAY_STATUS,
    TERMINAL_STATUSES,
    TRANSITIONS,
    JobStatus,
    new_id,
    sources_of,
)


class TestTransitionTable:
    def test_terminal_states_have_no_exit(self) -> None:
        for status in TERMINAL_STATUSES:
            assert TRANSITIONS[status] == frozenset()
            for target in JobStatus:
                assert status not in sources_of(target)

    def test_documented_moves(self) -> None:
        assert sources_of(JobStatus.PAUSED) == {JobStatus.QUEUED, JobStatus.RUNNING}
        assert sources_of(JobStatus.CANCELLED) == ACTIVE_STATUSES
        assert JobStatus.PAUSED in sources_of(JobStatus.QUEUED)  # resume
        assert JobStatus.VALIDATING_FILES in sources_of(JobStatus.QUEUED)
        assert JobStatus.QUEUED in sources_of(JobStatus.RUNNING)
        assert sources_of(JobStatus.SUCCEEDED) == {JobStatus.RUNNING}

    def test_gateway_enum(self) -> None:
        shown = {GATEWAY_STATUS.get(s, s).value for s in JobStatus}
        assert shown == {"queued", "running", "succeeded", "failed", "cancelled"}


def test_ids_are_prefixed_and_unique() -> None:
    ids = {new_id("job") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("ftjob-") and len(i) == 30 for i in ids)
    assert new_id("event").startswith("ftevent-")
    assert new_id("checkpoint").startswith("ftckpt-")
    assert new_id("file").startswith("file-")
