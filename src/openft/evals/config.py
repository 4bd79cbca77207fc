"""What an eval run's process is told (``python -m openft.evals.run CONFIG``):
everything it needs and nothing that needs the database, written as JSON by
the worker (``openft.scheduler.evals``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from openft.weights import BaseWeights


@dataclass
class ModelWeights:
    """Where a model's weights are for the process: its base and, for a
    fine-tuned model or checkpoint, the blob key of its folder (a LoRA
    adapter or full weights)."""

    base: BaseWeights
    adapter_key: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelWeights:
        return cls(BaseWeights(**data["base"]), data.get("adapter_key"))


SAMPLING_PARAMS = ("temperature", "top_p", "seed", "max_completion_tokens", "response_format", "tools",
                   "reasoning_effort")
"""A completions run's ``sampling_params`` (OpenAI's), each planned as chat completions plans it."""
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "seed": 42}
"""OpenAI's defaults for a completions run."""


def sampling_fields(given: dict[str, Any]) -> dict[str, Any]:
    """The run's sampling parameters with OpenAI's defaults where not given (``null`` is not given)."""
    return {**SAMPLING_DEFAULTS, **{k: v for k, v in given.items() if k in SAMPLING_PARAMS and v is not None}}


@dataclass(frozen=True)
class JobEval:
    """A fine-tuning job's ``eval`` integration as the job stores it (in its
    ``integrations``): checked and its items stored when the job was created
    (``services.evals.check_job_eval``), read by the worker's recorder to
    queue a run per checkpoint (``scheduler.progress``)."""

    eval_id: str
    data_source: dict[str, Any]
    """A completions data source without ``model`` (wire JSON: source, input_messages, sampling_params)."""
    items_key: str = ""
    """Blob of the checked items ("" until stored: an estimate stores none)."""
    n_items: int = 0

    INTERNAL: ClassVar[tuple[str, ...]] = ("items_key", "n_items")
    """Fields the job keeps for itself: not shown on the job's wire ``integrations``."""

    @classmethod
    def of(cls, integrations: list[dict[str, Any]] | None) -> JobEval | None:
        found = next((i["eval"] for i in integrations or [] if i["type"] == "eval"), None)
        return cls(**found) if found is not None else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalRunConfig:
    entry: ClassVar[str] = "openft.evals.run"

    run_id: str
    eval_id: str
    storage_url: str
    models_dir: str
    items_key: str
    """Blob of the run's items (``openft.evals.items.RunItem`` per line)."""
    criteria: list[dict[str, Any]]
    """The eval's testing criteria as stored (graders with ``id`` and ``pass_threshold``)."""
    done: list[int] = field(default_factory=list)
    """Items already recorded by an earlier attempt: skipped."""
    model: str | None = None
    """A completions run's model id (as the organisation named it); None for jsonl."""
    weights: ModelWeights | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    """A completions run's ``sampling_params``, as checked at creation."""
    judges: dict[str, ModelWeights] = field(default_factory=dict)
    """Model graders' judge models, resolved for the run's organisation."""
    grader_limits: dict[str, Any] = field(default_factory=dict)
    """``python``: the python graders' sandbox limits; ``embedding_model``."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    threads: int | None = None
    nice: int = 0
    max_batch: int = 16
    """Sequences the serving engine decodes together."""
    memory_budget_bytes: int = 4 << 30
    generation_timeout_seconds: float = 600.0

    @property
    def job_id(self) -> str:
        """The executor's folder name for this process's files."""
        return self.run_id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalRunConfig:
        data = dict(data)
        if data.get("weights") is not None:
            data["weights"] = ModelWeights.from_dict(data["weights"])
        data["judges"] = {k: ModelWeights.from_dict(v) for k, v in (data.get("judges") or {}).items()}
        return cls(**data)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> EvalRunConfig:
        return cls.from_dict(json.loads(path.read_text()))
