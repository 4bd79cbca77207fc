"""Evals, their runs and the runs' output items; checkpoint permissions (and
the jobs that start from a shared checkpoint).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "evals",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("data_source_config", JSON, nullable=False),
        sa.Column("testing_criteria", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_evals"),
        sa.UniqueConstraint("id", name="uq_evals_id"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], name="fk_evals_org_id_organizations",
                                ondelete="CASCADE"),
    )
    op.create_index("ix_evals_org_id_seq", "evals", ["org_id", "seq"])
    op.create_table(
        "eval_runs",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("eval_id", sa.String(40), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("model", sa.String(600), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("data_source", JSON, nullable=False),
        sa.Column("metadata", JSON, nullable=True),
        sa.Column("items_key", sa.String(256), nullable=False),
        sa.Column("total_items", sa.Integer(), nullable=False),
        sa.Column("result_counts", JSON, nullable=False),
        sa.Column("per_testing_criteria_results", JSON, nullable=False),
        sa.Column("per_model_usage", JSON, nullable=False),
        sa.Column("error", JSON, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("worker_id", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", TIME, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("fine_tuning_job_id", sa.String(40), nullable=True),
        sa.Column("checkpoint_step", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_eval_runs"),
        sa.UniqueConstraint("id", name="uq_eval_runs_id"),
        sa.ForeignKeyConstraint(["eval_id"], ["evals.id"], name="fk_eval_runs_eval_id_evals", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], name="fk_eval_runs_org_id_organizations",
                                ondelete="CASCADE"),
    )
    op.create_index("ix_eval_runs_eval_id_seq", "eval_runs", ["eval_id", "seq"])
    op.create_index("ix_eval_runs_status_seq", "eval_runs", ["status", "seq"])
    op.create_table(
        "eval_run_output_items",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("run_id", sa.String(40), nullable=False),
        sa.Column("eval_id", sa.String(40), nullable=False),
        sa.Column("datasource_item_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("datasource_item", JSON, nullable=False),
        sa.Column("results", JSON, nullable=False),
        sa.Column("sample", JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_eval_run_output_items"),
        sa.UniqueConstraint("id", name="uq_eval_run_output_items_id"),
        sa.ForeignKeyConstraint(["run_id"], ["eval_runs.id"], name="fk_eval_run_output_items_run_id_eval_runs",
                                ondelete="CASCADE"),
    )
    op.create_index("ix_eval_run_output_items_run_id_seq", "eval_run_output_items", ["run_id", "seq"])
    op.create_index("ix_eval_run_output_items_run_item", "eval_run_output_items",
                    ["run_id", "datasource_item_id"], unique=True)
    op.create_table(
        "checkpoint_permissions",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("checkpoint", sa.String(600), nullable=False),
        sa.Column("owner_org_id", sa.String(40), nullable=False),
        sa.Column("grantee_org_id", sa.String(40), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_checkpoint_permissions"),
        sa.UniqueConstraint("id", name="uq_checkpoint_permissions_id"),
        sa.ForeignKeyConstraint(["owner_org_id"], ["organizations.id"],
                                name="fk_checkpoint_permissions_owner_org_id_organizations", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["grantee_org_id"], ["organizations.id"],
                                name="fk_checkpoint_permissions_grantee_org_id_organizations", ondelete="CASCADE"),
    )
    op.add_column("fine_tuning_jobs", sa.Column("shared_start", sa.String(600), nullable=True))
    op.create_index("ix_checkpoint_permissions_checkpoint_seq", "checkpoint_permissions", ["checkpoint", "seq"])
    op.create_index("ix_checkpoint_permissions_grant", "checkpoint_permissions", ["checkpoint", "grantee_org_id"],
                    unique=True)


def downgrade() -> None:
    op.drop_column("fine_tuning_jobs", "shared_start")
    op.drop_table("checkpoint_permissions")
    op.drop_table("eval_run_output_items")
    op.drop_table("eval_runs")
    op.drop_table("evals")
