"""The logger process of one job run: ``python -m openft.integrations.logger``.

Reads one JSON header line (the job, its integrations, the settings they
need) and then one progress record per line on stdin; writes one JSON line
per thing the job's events should say (``{"level", "message", "data"}``)
on stdout. Libraries that print (W&B does) print to stderr: the protocol's
stdout is kept apart first. A tracker that fails is dropped with a warning;
the others go on. End of input ends the runs (an ``end`` record names the outcome).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from openft.training import records
from openft.training.records import CheckpointRecord, DoneRecord, HyperparametersRecord, MetricsRecord, Record

NOT_METRICS = {"step", "total_steps"}


def numeric(data: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in data.items()
            if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def job_config(job: dict[str, Any]) -> dict[str, Any]:
    """What a tracker records as the run's configuration before hyperparameters are resolved."""
    return {k: job[k] for k in ("job_id", "model", "training_file", "validation_file", "seed", "suffix",
                                "method_type") if job.get(k) is not None}


class WandbLogger:
    name = "Weights & Biases"

    def __init__(self, spec: dict[str, Any], job: dict[str, Any], settings: dict[str, Any]):
        import wandb

        online = bool(os.environ.get("WANDB_API_KEY"))
        folder = Path(settings["wandb_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=spec["project"], entity=spec.get("entity"), name=spec.get("name") or job["job_id"],
            tags=[*spec.get("tags", []), job["job_id"]], id=job["job_id"], resume="allow",
            dir=str(folder), mode="online" if online else "offline", config=job_config(job),
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        run_dir = Path(self.run.dir).parent
        self.started = (
            (f"Logging to Weights & Biases: {self.run.url}", {"mode": "online", "url": self.run.url})
            if online else
            (f"Logging to Weights & Biases offline (the server has no WANDB_API_KEY): the run is in "
             f"{run_dir}; upload it with `wandb sync {run_dir}`.", {"mode": "offline", "dir": str(run_dir)})
        )

    def handle(self, record: Record, fine_tuned_model: str) -> None:
        match record:
            case HyperparametersRecord():
                self.run.config.update(record.resolved, allow_val_change=True)
            case MetricsRecord():
                self.run.log(numeric(record.data), step=int(record.data["step"]))
            case CheckpointRecord():
                self.run.log(numeric(record.metrics), step=int(record.step))
            case DoneRecord():
                self.run.summary.update({"fine_tuned_model": fine_tuned_model,
                                         "trained_tokens": record.trained_tokens})

    def finish(self, outcome: str) -> None:
        self.run.finish(exit_code=0 if outcome in ("succeeded", "paused") else 1)


class MlflowLogger:
    name = "MLflow"

    def __init__(self, spec: dict[str, Any], job: dict[str, Any], settings: dict[str, Any]):
        from mlflow.tracking import MlflowClient

        uri = settings["mlflow_tracking_uri"]
        self.client = client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(spec["experiment"])
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(spec["experiment"])
        # A resumed job (a later attempt, or after a pause) continues its run.
        earlier = client.search_runs([experiment_id], f"tags.`openft.job_id` = '{job['job_id']}'", max_results=1)
        if earlier:
            self.run_id = earlier[0].info.run_id
            client.update_run(self.run_id, "RUNNING")
        else:
            tags = {**spec.get("tags", {}), "openft.job_id": job["job_id"], "openft.model": job["model"]}
            self.run_id = client.create_run(experiment_id, run_name=spec.get("run_name") or job["job_id"],
                                            tags=tags).info.run_id
            self._params(job_config(job))
        self.started = (f"Logging to MLflow experiment {spec['experiment']!r} at {uri} (run {self.run_id}).",
                        {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": self.run_id})

    def _params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, str(v)) for k, v in values.items() if k not in existing]
        if fresh:
            self.client.log_batch(self.run_id, params=fresh)

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def handle(self, record: Record, fine_tuned_model: str) -> None:
        match record:
            case HyperparametersRecord():
                self._params(record.resolved)
            case MetricsRecord():
                self._metrics(numeric(record.data), int(record.data["step"]))
            case CheckpointRecord():
                self._metrics(numeric(record.metrics), int(record.step))
            case DoneRecord():
                self.client.set_tag(self.run_id, "fine_tuned_model", fine_tuned_model)
                self._metrics({"trained_tokens": float(record.trained_tokens)}, 0)

    def finish(self, outcome: str) -> None:
        if outcome != "paused":  # a paused run resumes later
            self.client.set_terminated(self.run_id, {"succeeded": "FINISHED", "failed": "FAILED"}.get(
                outcome, "KILLED"))


LOGGERS = {"wandb": WandbLogger, "mlflow": MlflowLogger}


def say(out: TextIO, message: str, level: str = "info", **data: Any) -> None:
    out.write(json.dumps({"level": level, "message": message, "data": data}) + "\n")
    out.flush()


def main() -> None:
    out = os.fdopen(os.dup(1), "w")  # the protocol's stdout; fd 1 now goes to stderr
    os.dup2(2, 1)
    header = json.loads(sys.stdin.readline())
    job, settings = header["job"], header["settings"]
    loggers: list[Any] = []
    for spec in header["integrations"]:
        cls = LOGGERS[spec["type"]]
        try:
            logger = cls(spec[spec["type"]], job, settings)
        except Exception as exc:
            say(out, f"{cls.name} logging could not start ({type(exc).__name__}: {exc}); the job trains "
                f"without it.", "warn", integration=spec["type"])
            continue
        loggers.append(logger)
        message, data = logger.started
        say(out, message, integration=spec["type"], **data)
    outcome = "stopped"
    for line in sys.stdin:
        data = json.loads(line)
        if data["type"] == "end":
            outcome = data["outcome"]
            break
        record = records.parse(data)
        for logger in list(loggers):
            try:
                logger.handle(record, data["fine_tuned_model"])
            except Exception as exc:
                loggers.remove(logger)
                say(out, f"{logger.name} logging failed ({type(exc).__name__}: {exc}); the job trains on "
                    f"without it.", "warn")
    for logger in loggers:
        try:
            logger.finish(outcome)
        except Exception as exc:
            say(out, f"{logger.name} could not close its run ({type(exc).__name__}: {exc}).", "warn")


if __name__ == "__main__":
    main()
