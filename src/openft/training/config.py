"""What a training process is told, and the hyperparameters it trains with.

:class:`RunConfig` holds everything a run needs and nothing that needs the
database; the executor writes it as JSON and ``training.run`` reads it.
:class:`Hyperparameters` is the resolved set (no ``"auto"`` left), one
documented field each, in the spirit of TRL's ``SFTConfig``; the rules that
resolve ``"auto"`` live in ``training.hyperparameters``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from openft.domain import Method
from openft.weights import BaseWeights

if TYPE_CHECKING:
    from openft.config import Settings
    from openft.store.blobs import BlobStore


@dataclass
class RunConfig:
    entry: ClassVar[str] = "openft.training.run"
    """The module a local executor runs with this config (``python -m entry CONFIG``)."""

    job_id: str
    base: dict[str, Any]
    """The base model's weights (``openft.weights.BaseWeights`` as a dict)."""
    models_dir: str
    """Where bundled conversions and hub downloads are cached."""
    storage_url: str
    training_file_key: str
    validation_file_key: str | None
    method: Method
    """As requested ("auto" kept)."""
    seed: int
    resume_state_key: str | None = None
    """Training state to resume from (a previous run's checkpoint), if any."""
    start_key: str | None = None
    """The fine-tuned model or checkpoint (its model folder) this job continues
    from: a LoRA adapter of ``base`` or full weights. None: start from ``base``."""
    device: str = "auto"
    threads: int | None = None
    """CPU threads for torch (None: every core)."""
    nice: int = 0
    """Scheduling niceness the process gives itself before it starts working."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options of the blob store (an S3 endpoint); credentials are never here."""
    judges: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Reinforcement: the grader's judge models, ``{model: {"base": BaseWeights dict,
    "adapter_key": blob key or None}}``, resolved for the job's organisation."""
    grader_limits: dict[str, Any] = field(default_factory=dict)
    """Reinforcement: ``python``, the python graders' limits and sandbox
    (``openft.graders.sandbox.SandboxLimits.to_dict``), and ``embedding_model``."""

    @property
    def model(self) -> str:
        return str(self.base["id"])

    @property
    def base_weights(self) -> BaseWeights:
        return BaseWeights(**self.base)

    @property
    def cache_dir(self) -> Path:
        """Where fetched model folders are kept: ``Settings.cache_dir`` of the
        deployment (``models_dir`` is its ``home / "models"``)."""
        return Path(self.models_dir).parent / "cache"

    def model_folder(self, blobs: BlobStore, key: str) -> Path:
        """The model folder at blob ``key`` (a fine-tuned model, a checkpoint)
        on this machine, as the API's ``ModelRegistry.resolve`` finds it."""
        return blobs.folder(key, self.cache_dir)

    @property
    def method_type(self) -> str:
        return self.method.type.value

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.method.hyperparameters)

    @classmethod
    def create(
        cls, settings: Settings, *, job_id: str, base: BaseWeights, training_file_key: str,
        validation_file_key: str | None, method: Method, seed: int, start_key: str | None, colocated: bool,
        resume_state_key: str | None = None, judges: dict[str, dict[str, Any]] | None = None,
    ) -> RunConfig:
        """The one builder, for the worker's runs and the estimate's: what the
        deployment decides (storage, device, the training share of the host,
        graders' limits) comes from ``settings``; ``colocated``: the training
        process shares its host with the API (``Settings.training_share``)."""
        from openft.graders.sandbox import SandboxLimits

        threads, nice = settings.training_share(colocated)
        return cls(
            job_id=job_id, base=base.to_dict(), models_dir=str(settings.models_dir),
            storage_url=settings.resolved_storage_url, storage_options=settings.storage_options,
            training_file_key=training_file_key, validation_file_key=validation_file_key,
            method=method, seed=seed, resume_state_key=resume_state_key, start_key=start_key,
            device=settings.device, threads=threads, nice=nice, judges=judges or {},
            grader_limits={
                "python": SandboxLimits.from_settings(settings).to_dict(),
                "embedding_model": str(settings.grader_embedding_model or "") or None,
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the file a local run reads, the payload a Ray run gets)."""
        return {**asdict(self), "method": self.method.to_wire()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return cls(**{**data, "method": Method.from_wire(data["method"])})

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_dict(json.loads(path.read_text()))


def _help(text: str, default: Any = None) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class Hyperparameters:
    """Every hyperparameter of a run, resolved. Shown on the job (its
    ``method.<type>.hyperparameters``) once the run starts."""

    n_epochs: int = _help("Passes over the training file.")
    batch_size: int = _help("Examples (or preference pairs) per optimizer step.")
    learning_rate_multiplier: float = _help("Times the method's base learning rate.")
    training_type: str = _help("'lora' (adapter on every linear layer but the head and MoE routers, and on fused "
                               "expert weights) or 'full'.")
    max_seq_length: int = _help("Longer examples are truncated (with a warning event).")
    warmup_ratio: float = _help("Share of the steps spent warming the rate up linearly.")
    lora_rank: int | None = _help("LoRA rank (LoRA only).")
    lora_alpha: float | None = _help("LoRA scaling (LoRA only).")
    lora_dropout: float | None = _help("Dropout on the LoRA input (LoRA only; 0 on models with fused MoE expert "
                                       "weights, which PEFT trains without dropout).")
    beta: float | None = _help(
        "DPO: strength of the pull towards the reference model. Reinforcement: weight of the KL "
        "penalty that keeps the policy near the starting model."
    )
    rpo_alpha: float | None = _help(
        "DPO only: weight of the negative log-likelihood of the preferred answer added to the "
        "DPO loss (RPO). Keeps the preferred answer's likelihood rising while the margin grows."
    )

    early_stopping_patience: int | None = _help(
        "Supervised and DPO: stop after this many validations in a row without a lower "
        "validation loss (None: train every step).")
    fine_tuned_model_from: str | None = _help(
        "Supervised and DPO: 'last' (the weights after the last step), 'best_valid_loss' "
        "(the weights at the validation with the lowest loss) or 'best_eval_pass_rate' (the checkpoint "
        "whose run of the job's eval integration passed most; the training run itself trains as 'last').")

    reasoning_effort: str | None = _help(
        "Reinforcement only: sets the completion budget (low 64, default/medium 256, high 1024 tokens).")
    compute_multiplier: float | None = _help(
        "Reinforcement only: scales the group size (completions sampled per prompt, 8 x multiplier, at least 2).")
    group_size: int | None = _help("Reinforcement only: completions sampled and graded per prompt.")
    max_completion_tokens: int | None = _help("Reinforcement only: most tokens one sampled completion may have.")
    eval_interval: int | None = _help("Reinforcement only: optimizer steps between validation runs.")
    eval_samples: int | None = _help("Reinforcement only: completions sampled per validation prompt.")

    def to_dict(self) -> dict[str, Any]:
        """The fields that apply to this run (None ones are left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
