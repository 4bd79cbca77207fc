"""Objects reached through provider accounts, remembered per organisation.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "routed_objects",
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("object_id", sa.String(256), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "object_id", name="pk_routed_objects"),
        sa.ForeignKeyConstraint(["org_id"], ["organizations.id"], name="fk_routed_objects_org_id_organizations",
                                ondelete="CASCADE"),
    )


def downgrade() -> None:
    op.drop_table("routed_objects")
