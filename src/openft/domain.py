"""Pure vocabulary shared by every layer: job states and their transition
table, id prefixes, file formats and the OpenAI limits. No I/O here."""

from __future__ import annotations

import enum
import secrets
import string
from dataclasses import dataclass, field, replace
from typing import Any


class JobStatus(str, enum.Enum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


class EvalRunStatus(str, enum.Enum):
    """An eval run's status, as OpenAI spells it (``canceled``, one l).
    queued -> in_progress -> completed | failed | canceled; in_progress ->
    queued when its worker died (the lease expired) and it runs again."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (EvalRunStatus.COMPLETED, EvalRunStatus.FAILED, EvalRunStatus.CANCELED)


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_STATUSES = frozenset(set(JobStatus) - TERMINAL_STATUSES)

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING_FILES: frozenset(
        {JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    JobStatus.QUEUED: frozenset(
        {JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    # running -> queued: the lease of a dead training process expired; it runs again.
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.PAUSED,
            JobStatus.QUEUED,
        }
    ),
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every status a job may be in to move to ``target``. Never a terminal one."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


# The gateway (/api/llm) documents a narrower status enum; these are shown as queued there.
GATEWAY_STATUS = {
    JobStatus.VALIDATING_FILES: JobStatus.QUEUED,
    JobStatus.PAUSED: JobStatus.QUEUED,
}


class FileFormat(str, enum.Enum):
    """The training-file line formats OpenAI accepts, one per file."""

    CHAT = "chat"
    PREFERENCE = "preference"
    PROMPT_COMPLETION = "prompt_completion"
    REINFORCEMENT = "reinforcement"
    """Chat prompts without the answer (the last message is not the assistant's),
    any other keys being the line's item for graders."""


class MethodType(str, enum.Enum):
    SUPERVISED = "supervised"
    DPO = "dpo"
    REINFORCEMENT = "reinforcement"


@dataclass(frozen=True)
class Method:
    """A job's fine-tuning method, typed. The wire (and the database's JSON
    column, and a run config's file) spell it ``{"type": t, t:
    {"hyperparameters": {...}, "grader": {...}}}``; :meth:`from_wire` and
    :meth:`to_wire` are the only places that read or write that shape.
    """

    type: MethodType
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    """As requested: a hyperparameter not given is absent or ``"auto"``."""
    grader: dict[str, Any] | None = None
    """Reinforcement only: the grader, in the graders API's wire form."""

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Method:
        kind = MethodType(data["type"])
        body = data.get(kind.value) or {}
        return cls(kind, dict(body.get("hyperparameters") or {}), body.get("grader"))

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {} if self.grader is None else {"grader": self.grader}
        body["hyperparameters"] = dict(self.hyperparameters)
        return {"type": self.type.value, self.type.value: body}

    def with_hyperparameters(self, hyperparameters: dict[str, Any]) -> Method:
        return replace(self, hyperparameters=dict(hyperparameters))

    def with_grader(self, grader: dict[str, Any]) -> Method:
        return replace(self, grader=grader)

    @property
    def where(self) -> str:
        """The wire path of the hyperparameters, for errors' ``param``."""
        return f"method.{self.type.value}.hyperparameters"


FORMATS_FOR_METHOD: dict[MethodType, frozenset[FileFormat]] = {
    MethodType.SUPERVISED: frozenset({FileFormat.CHAT, FileFormat.PROMPT_COMPLETION}),
    MethodType.DPO: frozenset({FileFormat.PREFERENCE}),
    MethodType.REINFORCEMENT: frozenset({FileFormat.REINFORCEMENT}),
}

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
"""Purposes a client may upload with; the service itself also writes fine-tune-results."""

# OpenAI's limits, in one place.
MIN_TRAINING_EXAMPLES = 10
N_EPOCHS_RANGE = (1, 50)
BATCH_SIZE_RANGE = (1, 256)
SEED_RANGE = (0, 2_147_483_647)
SUFFIX_MAX_LENGTH = 64
METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX_LENGTH = 64
METADATA_VALUE_MAX_LENGTH = 512
MAX_INTEGRATIONS = 5
FILE_EXPIRY_SECONDS_RANGE = (3600, 2_592_000)

ID_PREFIX = {
    "job": "ftjob-",
    "file": "file-",
    "event": "ftevent-",
    "checkpoint": "ftckpt-",
    "org": "org-",
    "key": "key-",
    "webhook_endpoint": "we_",
    "webhook_event": "evt_",
    "webhook_delivery": "whmsg_",
    "eval": "eval_",
    "eval_run": "evalrun_",
    "eval_output_item": "outputitem_",
    "checkpoint_permission": "cp_",
}

_ALPHABET = string.ascii_letters + string.digits


def new_id(kind: str) -> str:
    """A prefixed, random, URL-safe id such as ``ftjob-3fQ9...`` (24 base62 chars)."""
    return ID_PREFIX[kind] + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def fine_tuned_name(base_model: str, org_name: str, suffix: str | None, job_id: str) -> str:
    """``ft:{base}:{org}:{suffix}:{last 8 characters of the job id}``; a
    checkpoint adds ``:ckpt-step-{N}``."""
    return f"ft:{base_model}:{org_name}:{suffix or ''}:{job_id[-8:]}"


@dataclass(frozen=True)
class JobSpec:
    """A validated job request, independent of the wire format it came in.

    ``method`` holds every standard hyperparameter ("auto" where not given).
    """

    model: str
    training_file: str
    validation_file: str | None
    method: Method
    seed: int
    suffix: str | None
    metadata: dict[str, str] | None
    integrations: list[dict[str, Any]] | None
    resources: dict[str, Any] | None = None
    """openft extension: workers / cpus_per_worker / gpus_per_worker (Ray executor)."""

    @property
    def method_type(self) -> MethodType:
        return self.method.type
