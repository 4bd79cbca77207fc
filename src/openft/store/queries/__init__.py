"""Queries with CRUD verbs. They flush but never commit: the caller owns the
unit of work (one transaction per API request or scheduler step)."""
