"""Experiment trackers a job logs to (``integrations`` on the job): Weights &
Biases (OpenAI's ``wandb``) and MLflow (an openft extension).

The training process knows nothing of them. The worker forwards the job's
progress records (hyperparameters, every metrics step, checkpoints'
validation results, the outcome and the fine-tuned model's id) to a logger
child process (:mod:`openft.integrations.logger`) through a bounded queue
that never waits (:mod:`openft.integrations.sink`), so a slow, failing or
hanging tracker can neither fail nor slow training; what goes wrong with it
becomes a ``warn`` event of the job.
"""

from __future__ import annotations

import importlib.util

PACKAGES = {"wandb": ("wandb", "openft[wandb]"), "mlflow": ("mlflow", "openft[mlflow]")}
"""Integration type -> (the module it needs, the extra that installs it)."""


def missing_package(kind: str) -> str | None:
    """The extra to install when ``kind``'s client library is not installed,
    else None (also for integrations that are not trackers: ``eval``)."""
    if kind not in PACKAGES:
        return None
    module, extra = PACKAGES[kind]
    return extra if importlib.util.find_spec(module) is None else None
