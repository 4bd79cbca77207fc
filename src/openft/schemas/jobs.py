"""Wire models of the fine-tuning jobs API: the create request (with OpenAI's
limits) and the FineTuningJob, event and checkpoint objects."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, model_validator

from openft import domain
from openft.domain import JobSpec
from openft.errors import InvalidRequest
from openft.schemas.common import (
    ClosedRequestModel,
    RequestModel,
    WireModel,
    _invalid,
    fraction,
    int_in_range,
    number_above,
    number_between,
)

NEpochs = int_in_range(*domain.N_EPOCHS_RANGE, auto=True)
BatchSize = int_in_range(*domain.BATCH_SIZE_RANGE, auto=True)
LearningRateMultiplier = number_above(0, auto=True)
Beta = number_above(0, 2, auto=True)
Seed = int_in_range(*domain.SEED_RANGE)


def _check_suffix(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= domain.SUFFIX_MAX_LENGTH:
        raise _invalid(f"must be a string of 1 to {domain.SUFFIX_MAX_LENGTH} characters")
    if ":" in value or not value.isprintable() or value.strip() != value:
        raise _invalid("must not contain ':', control characters or surrounding spaces")
    return value


def _check_metadata(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid("must be an object of string keys and string values")
    if len(value) > domain.METADATA_MAX_PAIRS:
        raise _invalid(f"must have at most {domain.METADATA_MAX_PAIRS} pairs, got {len(value)}")
    for key, item in value.items():
        if "\x00" in key or (isinstance(item, str) and "\x00" in item):
            where = "a key" if "\x00" in key else f"the value of {key[:20]!r}"
            raise _invalid(f"{where} holds a NUL character (\\u0000), which no database keeps as text")
        if len(key) > domain.METADATA_KEY_MAX_LENGTH:
            raise _invalid(
                f"key {key[:20]!r}... is longer than {domain.METADATA_KEY_MAX_LENGTH} characters"
            )
        if not isinstance(item, str):
            raise _invalid(f"value of {key!r} must be a string")
        if len(item) > domain.METADATA_VALUE_MAX_LENGTH:
            raise _invalid(
                f"value of {key!r} is longer than {domain.METADATA_VALUE_MAX_LENGTH} characters"
            )
    return value


Suffix = Annotated[str | None, PlainValidator(_check_suffix)]
Metadata = Annotated[dict[str, str] | None, PlainValidator(_check_metadata)]


class SupervisedHyperparameters(ClosedRequestModel):
    batch_size: BatchSize = "auto"
    learning_rate_multiplier: LearningRateMultiplier = "auto"
    n_epochs: NEpochs = "auto"
    # openft extensions: omitted (null) means "auto", resolved when the job runs.
    training_type: Literal["lora", "full"] | None = None
    lora_rank: int_in_range(1, 256, nullable=True) = None  # type: ignore[valid-type]
    lora_alpha: number_above(0, nullable=True) = None  # type: ignore[valid-type]
    lora_dropout: fraction(nullable=True) = None  # type: ignore[valid-type]
    max_seq_length: int_in_range(16, 131_072, nullable=True) = None  # type: ignore[valid-type]
    warmup_ratio: fraction(nullable=True) = None  # type: ignore[valid-type]
    # Early stopping and the best checkpoint (supervised and DPO; need a validation file).
    early_stopping_patience: int_in_range(1, 10_000, nullable=True) = None  # type: ignore[valid-type]
    fine_tuned_model_from: Literal["last", "best_valid_loss", "best_eval_pass_rate"] | None = None


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Beta = "auto"
    # openft extension: weight of the NLL of the preferred answer (RPO); 0 is plain DPO.
    rpo_alpha: number_between(0, 10, nullable=True) = None  # type: ignore[valid-type]


class ReinforcementHyperparameters(SupervisedHyperparameters):
    """OpenAI's reinforcement hyperparameters, plus openft's extensions
    (``beta``, ``max_completion_tokens`` and the supervised ones that apply)."""

    reasoning_effort: Literal["default", "low", "medium", "high"] = "default"
    compute_multiplier: number_above(0.00001, 10, auto=True) = "auto"  # type: ignore[valid-type]
    eval_interval: int_in_range(1, 1_000_000, auto=True) = "auto"  # type: ignore[valid-type]
    eval_samples: int_in_range(1, 64, auto=True) = "auto"  # type: ignore[valid-type]
    # openft extensions: weight of the KL penalty to the starting model; completion budget.
    beta: number_between(0, 10, nullable=True) = None  # type: ignore[valid-type]
    max_completion_tokens: int_in_range(1, 4096, nullable=True) = None  # type: ignore[valid-type]


class SupervisedMethod(ClosedRequestModel):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class DpoMethod(ClosedRequestModel):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class ReinforcementMethod(ClosedRequestModel):
    grader: Any = None
    """Checked by the jobs route with :mod:`openft.graders.spec` (errors point into it)."""
    hyperparameters: ReinforcementHyperparameters = Field(default_factory=ReinforcementHyperparameters)


class Method(ClosedRequestModel):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None

    @model_validator(mode="after")
    def _only_the_chosen_method(self) -> Method:
        for other in ("supervised", "dpo", "reinforcement"):
            if other != self.type and getattr(self, other) is not None:
                raise _invalid(f"method.{other} must be omitted when method.type is {self.type!r}")
        return self


Text = Annotated[str, Field(min_length=1, max_length=256)]


class WandbSettings(ClosedRequestModel):
    """OpenAI's Weights & Biases integration."""

    project: Text
    name: Text | None = None
    entity: Text | None = None
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=50)] = Field(
        default_factory=list)


class MlflowSettings(ClosedRequestModel):
    """openft extension: an MLflow run (tracking URI from ``OPENFT_MLFLOW_TRACKING_URI``)."""

    experiment: Text
    run_name: Text | None = None
    tags: Annotated[dict[Annotated[str, Field(max_length=250)], Annotated[str, Field(max_length=5000)]],
                    Field(max_length=50)] = Field(default_factory=dict)


class EvalIntegrationSettings(ClosedRequestModel):
    """openft extension: run an eval (``/evals``) on each checkpoint a
    supervised or DPO job keeps; its pass rate joins the job's metrics."""

    eval_id: Annotated[str, Field(min_length=1, max_length=64)]
    data_source: dict[str, Any]
    """A completions run's data source without its ``model`` (each checkpoint
    is the model): ``source``, ``input_messages``, ``sampling_params``."""


INTEGRATION_TYPES = ("wandb", "mlflow", "eval")


class Integration(RequestModel):
    type: Literal["wandb", "mlflow", "eval"]
    wandb: WandbSettings | None = None
    mlflow: MlflowSettings | None = None
    eval: EvalIntegrationSettings | None = None

    @model_validator(mode="after")
    def _settings_of_its_type(self) -> Integration:
        if getattr(self, self.type) is None:
            raise _invalid(f"an integration of type {self.type!r} needs its settings under {self.type!r}")
        for other in INTEGRATION_TYPES:
            if other != self.type and getattr(self, other) is not None:
                raise _invalid(f"{other!r} must be omitted when type is {self.type!r}")
        return self


class JobResources(ClosedRequestModel):
    """openft extension: what one job runs on (Ray executor only). Omitted
    fields take the server's defaults (``OPENFT_RAY_*``)."""

    workers: int_in_range(1, 256, nullable=True) = None  # type: ignore[valid-type]
    cpus_per_worker: number_above(0, nullable=True) = None  # type: ignore[valid-type]
    gpus_per_worker: number_between(0, 64, nullable=True) = None  # type: ignore[valid-type]


class FineTuningJobCreate(RequestModel):
    """``POST /fine_tuning/jobs``. Field-level limits are checked here; rules
    that need the database (files, model) are checked by the jobs service."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    training_file: Annotated[str, Field(min_length=1)]
    hyperparameters: SupervisedHyperparameters | None = None
    suffix: Suffix = None
    validation_file: str | None = None
    integrations: Annotated[list[Integration] | None, Field(max_length=domain.MAX_INTEGRATIONS)] = (
        None
    )
    seed: Seed | None = None
    method: Method | None = None
    metadata: Metadata = None
    # openft extension (additive; OpenAI SDKs pass it with extra_body).
    resources: JobResources | None = None

    def to_spec(self) -> JobSpec:
        method = self._resolve_method()
        return JobSpec(
            model=self.model,
            training_file=self.training_file,
            validation_file=self.validation_file,
            method=method,
            seed=self.seed if self.seed is not None else secrets.randbelow(domain.SEED_RANGE[1]),
            suffix=self.suffix,
            metadata=self.metadata,
            integrations=(
                [i.model_dump(exclude_none=True) for i in self.integrations] if self.integrations else None
            ),
            resources=(self.resources.model_dump(exclude_none=True) or None) if self.resources else None,
        )

    def _resolve_method(self) -> domain.Method:
        """The method, typed, mapping the deprecated top-level
        ``hyperparameters`` onto ``method.supervised``."""
        method = self.method or Method(type="supervised")
        if self.hyperparameters is not None:
            explicit = method.supervised is not None and (
                "hyperparameters" in method.supervised.model_fields_set
            )
            if method.type != "supervised" or explicit:
                raise InvalidRequest(
                    "The deprecated top-level 'hyperparameters' cannot be combined with "
                    "method hyperparameters; pass them under method only.",
                    param="hyperparameters",
                )
            method = Method(type="supervised", supervised=SupervisedMethod(
                hyperparameters=self.hyperparameters))
        if method.type == "reinforcement":
            if method.reinforcement is None or method.reinforcement.grader is None:
                raise InvalidRequest("A reinforcement job needs a grader: method.reinforcement.grader.",
                                     param="method.reinforcement.grader")
            return domain.Method(
                domain.MethodType.REINFORCEMENT,
                method.reinforcement.hyperparameters.model_dump(exclude_none=True),
                grader=method.reinforcement.grader,
            )
        chosen = getattr(method, method.type) or (
            SupervisedMethod() if method.type == "supervised" else DpoMethod()
        )
        return domain.Method(domain.MethodType(method.type), chosen.hyperparameters.model_dump(exclude_none=True))


class JobError(WireModel):
    code: str
    message: str
    param: str | None


class JobHyperparameters(WireModel):
    batch_size: int | Literal["auto"] | None = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    n_epochs: int | Literal["auto"] = "auto"


class FineTuningJob(WireModel):
    """The spec's FineTuningJob, fields in the spec's order, then extensions."""

    id: str
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: JobHyperparameters
    model: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str
    result_files: list[str]
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    integrations: list[dict[str, Any]] | None
    seed: int
    estimated_finish: int | None
    method: dict[str, Any]
    metadata: dict[str, str] | None
    # Extension, as OpenAI returns it: the suffix the user asked for.
    user_provided_suffix: str | None
    # openft extension: the resources the job asked for (null: the server's defaults).
    resources: dict[str, Any] | None = None


class ListFineTuningJobsResponse(WireModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(WireModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any]


class ListFineTuningJobEventsResponse(WireModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class FineTuningJobCheckpoint(WireModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, float]
    step_number: int


class ListFineTuningJobCheckpointsResponse(WireModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    first_id: str | None
    last_id: str | None
    has_more: bool
