"""Job metadata as an indexed key/value side table, for ``metadata[k]=v`` filters.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "fine_tuning_job_metadata",
        sa.Column("job_seq", SEQ, nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.String(512), nullable=False),
        sa.PrimaryKeyConstraint("job_seq", "key", name="pk_fine_tuning_job_metadata"),
        sa.ForeignKeyConstraint(
            ["job_seq"], ["fine_tuning_jobs.seq"],
            name="fk_fine_tuning_job_metadata_job_seq_fine_tuning_jobs", ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_fine_tuning_job_metadata_lookup", "fine_tuning_job_metadata",
        ["org_id", "key", "value", "job_seq"],
    )
    # Backfill from the jobs' JSON metadata, in batches.
    bind = op.get_bind()
    jobs = bind.execute(
        sa.text("SELECT seq, org_id, metadata FROM fine_tuning_jobs WHERE metadata IS NOT NULL")
    )
    table = sa.table(
        "fine_tuning_job_metadata",
        sa.column("job_seq"), sa.column("org_id"), sa.column("key"), sa.column("value"),
    )
    batch: list[dict[str, object]] = []
    for seq, org_id, metadata in jobs:
        pairs = json.loads(metadata) if isinstance(metadata, str) else metadata
        for key, value in (pairs or {}).items():
            batch.append({"job_seq": seq, "org_id": org_id, "key": key, "value": value})
        if len(batch) >= 5000:
            bind.execute(table.insert(), batch)
            batch = []
    if batch:
        bind.execute(table.insert(), batch)


def downgrade() -> None:
    op.drop_index("ix_fine_tuning_job_metadata_lookup", table_name="fine_tuning_job_metadata")
    op.drop_table("fine_tuning_job_metadata")
