"""Persistence: SQLAlchemy tables and queries (db.py, tables.py, queries/),
Alembic migrations, and blob storage over fsspec (blobs.py)."""
