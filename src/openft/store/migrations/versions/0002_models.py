"""Model registry: registered local base models and fine-tuned models.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "base_models",
        sa.Column("id", sa.String(256), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_base_models"),
    )
    op.create_table(
        "fine_tuned_models",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(600), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("job_id", sa.String(40), nullable=False),
        sa.Column("base_model", sa.String(256), nullable=False),
        sa.Column("storage_key", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"],
            name="fk_fine_tuned_models_org_id_organizations", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name="pk_fine_tuned_models"),
        sa.UniqueConstraint("id", name="uq_fine_tuned_models_id"),
    )
    op.create_index("ix_fine_tuned_models_org_id_seq", "fine_tuned_models", ["org_id", "seq"])


def downgrade() -> None:
    op.drop_table("fine_tuned_models")
    op.drop_table("base_models")
