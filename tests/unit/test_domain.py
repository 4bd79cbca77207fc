"""The job state machine's table, id generation, and the typed contracts
(a job's method, the training progress records)."""

from __future__ import annotations

from openft.domain import (
    ACTIVE_STATUSES,
    GATEWAY_STATUS,
    TERMINAL_STATUSES,
    TRANSITIONS,
    JobStatus,
    Method,
    MethodType,
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


def test_a_method_crosses_the_wire_shape_unchanged() -> None:
    """The wire's nested ``{"type": t, t: {...}}`` is read and written in one
    place; a reinforcement method keeps its grader, the others have none."""
    wire = {"type": "reinforcement", "reinforcement": {
        "grader": {"type": "string_check", "name": "s", "input": "{{sample.output_text}}", "reference": "x",
                   "operation": "eq"},
        "hyperparameters": {"n_epochs": 2, "batch_size": "auto"}}}
    method = Method.from_wire(wire)
    assert method.type is MethodType.REINFORCEMENT and method.hyperparameters["n_epochs"] == 2
    assert method.grader is not None and method.grader["name"] == "s"
    assert method.to_wire() == wire
    tuned = method.with_hyperparameters({"n_epochs": 3})
    assert tuned.to_wire()["reinforcement"]["hyperparameters"] == {"n_epochs": 3} and tuned.grader == method.grader
    assert method.hyperparameters["n_epochs"] == 2  # frozen: the original is untouched
    supervised = Method.from_wire({"type": "supervised", "supervised": {"hyperparameters": {}}})
    assert supervised.grader is None and supervised.where == "method.supervised.hyperparameters"
    assert supervised.to_wire() == {"type": "supervised", "supervised": {"hyperparameters": {}}}


def test_progress_records_parse_back_to_their_type() -> None:
    """Both ends of the training channel share one definition: what the
    training side writes, the worker parses into the same record; a kind it
    does not know, or a record missing a field, is refused."""
    import json

    import pytest

    from openft.training import records

    sent = [records.EventRecord("hello", data={"a": 1}), records.HyperparametersRecord({"n_epochs": 3}, 9),
            records.MetricsRecord("Step 1/9", {"step": 1}, 5.0),
            records.CheckpointRecord(step=3, state_key="s", model_key="m", metrics={"train_loss": 1.0}),
            records.PausedRecord(step=4, state_key="s"), records.DoneRecord("m", "r", 120),
            records.FailedRecord("internal_error", "boom")]
    for record in sent:
        assert records.parse(json.loads(json.dumps(record.to_dict()))) == record
    with pytest.raises(records.UnknownRecord):
        records.parse({"type": "rumour", "time": 0.0})
    with pytest.raises(records.UnknownRecord):
        records.parse({"type": "done", "time": 0.0, "model_key": "m"})
