"""The root base model of a job that continues a fine-tuned model.

A job may start from a fine-tuned model or checkpoint (``model: "ft:..."``);
``base_model`` is the base model at the root of that lineage (NULL: the job's
``model`` is itself a base model, as for every earlier job).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("base_model", sa.String(256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("base_model")
