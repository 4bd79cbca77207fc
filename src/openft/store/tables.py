"""ORM tables. Wire schemas live in ``openft.schemas``; a service converts.

Portable across SQLite and PostgreSQL: deterministic constraint names,
timezone-aware timestamps, JSON that becomes JSONB on PostgreSQL. Every
listed table has an integer ``seq`` primary key that orders rows by insertion
and backs keyset pagination; the public prefixed ``id`` is a unique column.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from openft.domain import Method

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both databases (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class MethodColumn(TypeDecorator[Method]):
    """A job's :class:`~openft.domain.Method`, stored as its wire JSON."""

    impl = JSONType
    cache_ok = True

    def process_bind_param(self, value: Method | None, dialect: Any) -> dict[str, Any] | None:
        return value.to_wire() if value is not None else None

    def process_result_value(self, value: dict[str, Any] | None, dialect: Any) -> Method | None:
        return Method.from_wire(value) if value is not None else None


SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display_prefix: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class File(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_org_id_seq", "org_id", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger())
    storage_key: Mapped[str] = mapped_column(String(256))
    # Set for validated fine-tune uploads: the line format and example count.
    format: Mapped[str | None] = mapped_column(String(32))
    n_examples: Mapped[int | None] = mapped_column(Integer())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Written by every job creation that uses the file: the row lock serialises
    # "create a job on this file" against "delete this file".
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Job(Base):
    __tablename__ = "fine_tuning_jobs"
    __table_args__ = (
        Index("ix_fine_tuning_jobs_org_id_seq", "org_id", "seq"),
        Index("ix_fine_tuning_jobs_status_seq", "status", "seq"),
    )

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(256))
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(32))
    # The method as requested, hyperparameters still "auto" where not given.
    method: Mapped[Method] = mapped_column(MethodColumn)
    # Hyperparameters resolved by the trainer once the job runs.
    resolved_hyperparameters: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger())
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSONType)
    integrations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512))
    result_files: Mapped[list[str]] = mapped_column(JSONType)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger())
    estimated_finish: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Scheduling: who runs the job, until when the claim holds without a
    # heartbeat, how many runs it took, and the training state to resume from.
    worker_id: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer(), default=0, server_default="0")
    resume_state_key: Mapped[str | None] = mapped_column(String(256))
    resume_step: Mapped[int | None] = mapped_column(Integer())
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    """openft extension: what the job asked to run on (Ray executor); None: the defaults."""
    base_model: Mapped[str | None] = mapped_column(String(256))
    """The base model at the root of the lineage when ``model`` is a fine-tuned
    model or checkpoint the job continues from; None when ``model`` is a base model."""
    shared_start: Mapped[str | None] = mapped_column(String(600))
    """The checkpoint another organisation shared that the job starts from
    (checkpoint permissions): what it trains is used, never exported."""


class JobMetadata(Base):
    """One ``metadata`` pair of a job (a copy of the job's JSON, written with
    it): the index behind ``GET /fine_tuning/jobs?metadata[k]=v``, the same on
    both databases."""

    __tablename__ = "fine_tuning_job_metadata"
    __table_args__ = (Index("ix_fine_tuning_job_metadata_lookup", "org_id", "key", "value", "job_seq"),)

    job_seq: Mapped[int] = mapped_column(
        SeqType, ForeignKey("fine_tuning_jobs.seq", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40))
    value: Mapped[str] = mapped_column(String(512))


class JobEvent(Base):
    __tablename__ = "fine_tuning_job_events"
    __table_args__ = (Index("ix_fine_tuning_job_events_job_id_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(
        ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    level: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text())
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONType)


class Checkpoint(Base):
    __tablename__ = "fine_tuning_job_checkpoints"
    __table_args__ = (Index("ix_fine_tuning_job_checkpoints_job_id_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(
        ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    step_number: Mapped[int] = mapped_column(Integer())
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(600))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    storage_key: Mapped[str | None] = mapped_column(String(256))


class RegisteredModel(Base):
    """A local Hugging Face folder registered with ``openft models add``."""

    __tablename__ = "base_models"

    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class FineTunedModel(Base):
    """A model a job produced (``ft:{base}:{org}:{suffix}:{short id}``)."""

    __tablename__ = "fine_tuned_models"
    __table_args__ = (Index("ix_fine_tuned_models_org_id_seq", "org_id", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(600), unique=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(String(40))
    base_model: Mapped[str] = mapped_column(String(256))
    storage_key: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookEndpoint(Base):
    """Where an organisation wants to hear about its jobs (``/webhook_endpoints``)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_org_id_seq", "org_id", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(256))
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str]] = mapped_column(JSONType)
    secret: Mapped[str] = mapped_column(String(128))
    """``whsec_`` + base64 of the signing key (needed in clear to sign)."""
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """After a rotation that keeps the old secret for 24 hours: deliveries carry both signatures."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """The outbox: one event for one endpoint, written in the transaction that
    ended the job, and delivered (at least once) by the dispatcher."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    """The event's id (``evt_...``): the ``webhook-id`` header, the same on every retry."""
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text())
    """The exact JSON text that is signed and sent."""
    status: Mapped[str] = mapped_column(String(16))
    """``pending``, ``delivered`` or ``failed`` (gave up)."""
    attempts: Mapped[int] = mapped_column(Integer(), default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Eval(Base):
    """An eval (``/evals``): what its data looks like and how it is graded."""

    __tablename__ = "evals"
    __table_args__ = (Index("ix_evals_org_id_seq", "org_id", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(256))
    data_source_config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    """As served: ``{"type": "custom", "schema": {...}}``."""
    testing_criteria: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    """Checked graders with their ``id`` (and ``pass_threshold`` where given)."""
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EvalRun(Base):
    """One run of an eval over a data source; claimed and leased by a worker
    like a job (``worker_id``, ``lease_expires_at``, ``attempts``)."""

    __tablename__ = "eval_runs"
    __table_args__ = (
        Index("ix_eval_runs_eval_id_seq", "eval_id", "seq"),
        Index("ix_eval_runs_status_seq", "status", "seq"),
    )

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(256))
    model: Mapped[str | None] = mapped_column(String(600))
    """The sampled model of a ``completions`` run; None for ``jsonl``."""
    status: Mapped[str] = mapped_column(String(16))
    data_source: Mapped[dict[str, Any]] = mapped_column(JSONType)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSONType)
    items_key: Mapped[str] = mapped_column(String(256))
    """Blob of the run's items, validated and rendered at creation (JSON lines)."""
    total_items: Mapped[int] = mapped_column(Integer())
    result_counts: Mapped[dict[str, int]] = mapped_column(JSONType)
    per_testing_criteria_results: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    per_model_usage: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    worker_id: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer(), default=0)
    fine_tuning_job_id: Mapped[str | None] = mapped_column(String(40))
    """Set by the server only: the job whose checkpoint this run evaluates (its eval integration)."""
    checkpoint_step: Mapped[int | None] = mapped_column(Integer())


class EvalOutputItem(Base):
    """One item of a run, sampled and graded: written once (the unique
    ``(run_id, datasource_item_id)`` makes a second write a no-op)."""

    __tablename__ = "eval_run_output_items"
    __table_args__ = (
        Index("ix_eval_run_output_items_run_id_seq", "run_id", "seq"),
        Index("ix_eval_run_output_items_run_item", "run_id", "datasource_item_id", unique=True),
    )

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"))
    eval_id: Mapped[str] = mapped_column(String(40))
    datasource_item_id: Mapped[int] = mapped_column(Integer())
    status: Mapped[str] = mapped_column(String(8))
    """``pass``, ``fail`` or ``error``."""
    datasource_item: Mapped[dict[str, Any]] = mapped_column(JSONType)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    sample: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CheckpointPermission(Base):
    """An organisation allowed to use another's checkpoint as a model (chat,
    evals, a job that starts from it): OpenAI's checkpoint permissions, with
    organisations in the place of projects."""

    __tablename__ = "checkpoint_permissions"
    __table_args__ = (
        Index("ix_checkpoint_permissions_checkpoint_seq", "checkpoint", "seq"),
        Index("ix_checkpoint_permissions_grant", "checkpoint", "grantee_org_id", unique=True),
    )

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    checkpoint: Mapped[str] = mapped_column(String(600))
    """The ``fine_tuned_model_checkpoint`` id."""
    owner_org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    grantee_org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RoutedObject(Base):
    """An upstream object (file, fine-tuning job) an organisation reached
    through a provider account: later requests naming its id go to that
    account without ``x-tfy-provider-name`` (``openft.gateway``)."""

    __tablename__ = "routed_objects"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    object_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    account: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
