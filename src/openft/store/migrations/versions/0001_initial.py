"""Initial schema: organisations, API keys, files, jobs, events, checkpoints.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _seq() -> sa.Column:
    return sa.Column("seq", SEQ, primary_key=True, autoincrement=True)


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_organizations"),
        sa.UniqueConstraint("name", name="uq_organizations_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("display_prefix", sa.String(32), nullable=False),
        _ts("created_at"),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"],
            name="fk_api_keys_org_id_organizations", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_table(
        "files",
        _seq(),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("storage_key", sa.String(256), nullable=False),
        sa.Column("format", sa.String(32), nullable=True),
        sa.Column("n_examples", sa.Integer(), nullable=True),
        _ts("created_at"),
        _ts("expires_at", nullable=True),
        _ts("last_used_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"],
            name="fk_files_org_id_organizations", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name="pk_files"),
        sa.UniqueConstraint("id", name="uq_files_id"),
    )
    op.create_index("ix_files_org_id_seq", "files", ["org_id", "seq"])
    op.create_table(
        "fine_tuning_jobs",
        _seq(),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("training_file", sa.String(40), nullable=False),
        sa.Column("validation_file", sa.String(40), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("method", JSON, nullable=False),
        sa.Column("resolved_hyperparameters", JSON, nullable=True),
        sa.Column("suffix", sa.String(64), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("metadata", JSON, nullable=True),
        sa.Column("integrations", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("fine_tuned_model", sa.String(512), nullable=True),
        sa.Column("result_files", JSON, nullable=False),
        sa.Column("trained_tokens", sa.BigInteger(), nullable=True),
        _ts("estimated_finish", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("finished_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"],
            name="fk_fine_tuning_jobs_org_id_organizations", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name="pk_fine_tuning_jobs"),
        sa.UniqueConstraint("id", name="uq_fine_tuning_jobs_id"),
    )
    op.create_index("ix_fine_tuning_jobs_org_id_seq", "fine_tuning_jobs", ["org_id", "seq"])
    op.create_index("ix_fine_tuning_jobs_status_seq", "fine_tuning_jobs", ["status", "seq"])
    op.create_table(
        "fine_tuning_job_events",
        _seq(),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        _ts("created_at"),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", JSON, nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["fine_tuning_jobs.id"],
            name="fk_fine_tuning_job_events_job_id_fine_tuning_jobs", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name="pk_fine_tuning_job_events"),
        sa.UniqueConstraint("id", name="uq_fine_tuning_job_events_id"),
    )
    op.create_index(
        "ix_fine_tuning_job_events_job_id_seq", "fine_tuning_job_events", ["job_id", "seq"]
    )
    op.create_table(
        "fine_tuning_job_checkpoints",
        _seq(),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        _ts("created_at"),
        sa.Column("step_number", sa.Integer(), nullable=False),
        sa.Column("fine_tuned_model_checkpoint", sa.String(600), nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("storage_key", sa.String(256), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["fine_tuning_jobs.id"],
            name="fk_fine_tuning_job_checkpoints_job_id_fine_tuning_jobs", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name="pk_fine_tuning_job_checkpoints"),
        sa.UniqueConstraint("id", name="uq_fine_tuning_job_checkpoints_id"),
    )
    op.create_index(
        "ix_fine_tuning_job_checkpoints_job_id_seq",
        "fine_tuning_job_checkpoints",
        ["job_id", "seq"],
    )


def downgrade() -> None:
    op.drop_table("fine_tuning_job_checkpoints")
    op.drop_table("fine_tuning_job_events")
    op.drop_table("fine_tuning_jobs")
    op.drop_table("files")
    op.drop_table("api_keys")
    op.drop_table("organizations")
