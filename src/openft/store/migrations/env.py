"""Alembic environment: always run with a connection handed in by openft.store.db."""

from alembic import context

from openft.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("openft migrations run through openft.store.db.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
