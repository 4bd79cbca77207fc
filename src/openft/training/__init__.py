"""The training island: runs in a job's own process (locally or on a Ray node).

It never opens the database and imports neither ``openft.api`` nor
``openft.services``. It receives a :class:`~openft.training.config.RunConfig`,
reads data and writes weights through blob storage, and reports everything
else (events, metrics, checkpoints, the outcome) through a
:class:`~openft.training.report.Reporter`.
"""
