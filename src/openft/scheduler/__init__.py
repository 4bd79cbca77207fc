"""The database is the queue: workers claim queued jobs atomically, keep a
lease alive with heartbeats, launch each job through an executor (a local
process today, a Ray task later), turn its progress records into store
writes, pass stop requests on, and re-queue jobs whose worker died."""
