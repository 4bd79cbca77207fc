"""What a training process is told: everything it needs, nothing that needs
the database. Written by the executor as JSON, read by ``training.run``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunConfig:
    job_id: str
    org_name: str
    model: str
    """Base model id (as the user named it)."""
    model_path: str | None
    """Local folder of the base model; None for the bundled model (converted on demand)."""
    models_dir: str
    storage_url: str
    training_file_key: str
    validation_file_key: str | None
    method: dict[str, Any]
    seed: int
    suffix: str | None
    n_training_examples: int
    resume_state_key: str | None = None
    """Training state to resume from (a previous run's checkpoint), if any."""
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def method_type(self) -> str:
        return str(self.method["type"])

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.method[self.method_type].get("hyperparameters", {}))

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls(**json.loads(path.read_text()))
