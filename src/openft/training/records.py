"""The progress records a training process sends its worker: one type per
kind, shared by both ends of the channel.

The training side builds them and hands them to its
:class:`~openft.training.report.Reporter`, which writes :meth:`Record.to_dict`
(one JSON object per line locally, a Ray actor call on a cluster); the worker
turns each line back into a record with :func:`parse` and
:class:`~openft.scheduler.progress.Recorder` acts on it by type. The
integration sink forwards some of them to the trackers' logger process,
which parses them the same way.

No import beyond the standard library: the API process and the logger
process import this module too.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class Record:
    kind: ClassVar[str]
    time: float = field(default_factory=time.time, kw_only=True)
    """When the training process sent it (seconds since the epoch)."""

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, **asdict(self)}


@dataclass(frozen=True)
class EventRecord(Record):
    """A line of the job's event log."""

    kind: ClassVar[str] = "event"
    message: str
    level: str = "info"
    data: dict[str, Any] | None = None


@dataclass(frozen=True)
class HyperparametersRecord(Record):
    """The hyperparameters the run resolved ("auto" decided), once it starts."""

    kind: ClassVar[str] = "hyperparameters"
    resolved: dict[str, Any]
    total_steps: int


@dataclass(frozen=True)
class MetricsRecord(Record):
    """One step: its event message, its metrics (``data["step"]`` included)
    and when the run should end at the pace so far."""

    kind: ClassVar[str] = "metrics"
    message: str
    data: dict[str, Any]
    estimated_finish: float


@dataclass(frozen=True)
class CheckpointRecord(Record):
    """A checkpoint: the training state to resume from and a usable model."""

    kind: ClassVar[str] = "checkpoint"
    step: int
    state_key: str
    model_key: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class PausedRecord(Record):
    """Paused on request: the state saved after ``step``."""

    kind: ClassVar[str] = "paused"
    step: int
    state_key: str


@dataclass(frozen=True)
class DoneRecord(Record):
    """The run finished: the final model and the per-step results file."""

    kind: ClassVar[str] = "done"
    model_key: str
    results_key: str
    trained_tokens: int


@dataclass(frozen=True)
class FailedRecord(Record):
    """The run failed in a way it could name (the job's ``error``)."""

    kind: ClassVar[str] = "failed"
    code: str
    message: str
    param: str | None = None


@dataclass
class ModelUsage:
    """What one item cost one model: its calls and tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    invocations: int = 0

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        """One more call."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.invocations += 1


@dataclass(frozen=True)
class EvalItemRecord(Record):
    """An eval run's process sampled and graded one item (``openft.evals.run``)."""

    kind: ClassVar[str] = "eval_item"
    index: int
    """The item's ``datasource_item_id``."""
    item: dict[str, Any]
    """The item itself (``datasource_item``)."""
    status: str
    """``pass``, ``fail`` or ``error``."""
    sample: dict[str, Any]
    """OpenAI's output item ``sample`` (input, output, finish reason, usage, error, sampling parameters)."""
    results: list[dict[str, Any]]
    """One ``EvalRunOutputItemResult`` per testing criterion, in the eval's order."""
    usage: dict[str, ModelUsage] = field(default_factory=dict)
    """Calls and tokens per model this item cost (the sampled model and judges)."""

    def __post_init__(self) -> None:  # parsed from JSON: the usage arrives as plain objects
        object.__setattr__(self, "usage", {model: u if isinstance(u, ModelUsage) else ModelUsage(**u)
                                           for model, u in self.usage.items()})


@dataclass(frozen=True)
class EvalDoneRecord(Record):
    """An eval run's process went through every item."""

    kind: ClassVar[str] = "eval_done"


KINDS: dict[str, type[Record]] = {
    cls.kind: cls
    for cls in (EventRecord, HyperparametersRecord, MetricsRecord, CheckpointRecord, PausedRecord, DoneRecord,
                FailedRecord, EvalItemRecord, EvalDoneRecord)
}


class UnknownRecord(ValueError):
    """Not a progress record this version knows."""


def parse(data: dict[str, Any]) -> Record:
    """The record a :meth:`Record.to_dict` wrote (fields this version does
    not know are ignored; a missing one is an :class:`UnknownRecord`)."""
    cls = KINDS.get(data.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise UnknownRecord(f"unknown progress record type {data.get('type')!r}")
    known = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise UnknownRecord(f"malformed {cls.kind} record: {exc}") from None
