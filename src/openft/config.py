"""Settings: one pydantic-settings object read from ``OPENFT_*`` variables.

Build it with :func:`load_settings` and pass it down (``create_app(settings)``);
nothing in openft reads the environment at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUILTIN_PROVIDER = "openft"
"""The provider that trains on this deployment's own executors."""


class Settings(BaseSettings):
    """Every setting openft reads, with its ``OPENFT_`` variable and default."""

    model_config = SettingsConfigDict(env_prefix="OPENFT_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the API server binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port the API server listens on.")
    home: Path = Field(
        Path("~/.openft"),
        description="State folder: SQLite database, blobs, model cache, generated API key.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL. Default: SQLite (WAL) at $OPENFT_HOME/openft.db. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db.",
    )
    sqlite_driver: Literal["openft", "aiosqlite"] = Field(
        "openft",
        description="SQLite driver adapter: 'openft' (one thread hop per statement, "
        "openft.store.sqlite; needs SQLAlchemy 2.1) or 'aiosqlite' (SQLAlchemy's stock adapter).",
    )
    storage_url: str | None = Field(
        None,
        description="fsspec URL of blob storage. Default: the folder $OPENFT_HOME/blobs. "
        "Any fsspec URL works: s3://bucket/prefix (pip install openft[s3]; credentials from "
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION).",
    )
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible store (MinIO, SeaweedFS, R2, ...) for "
        "s3:// storage URLs. Default: AWS S3."
    )
    max_file_bytes: int = Field(
        512 * 1024 * 1024, gt=0, description="Largest accepted upload, in bytes (413 above)."
    )
    max_request_bytes: int = Field(
        4 * 1024 * 1024,
        gt=0,
        description="Largest request body on every route except the file upload, in bytes "
        "(413 above, answered before the body is read).",
    )
    shutdown_timeout_seconds: float = Field(
        10.0, gt=0, description="On SIGTERM, how long the server lets requests in flight finish (a long "
        "chat stream included) before it cancels them and exits."
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest wait for the next piece of a request body (uploads included); "
        "a body that stalls longer is answered 408 and its connection closed."
    )
    db_concurrency: int = Field(
        16, ge=1, description="API requests that use the database at once; the rest wait their "
        "turn first come, first served (keeps tail latency fair under bursts)."
    )
    api_key: SecretStr | None = Field(
        None, description="Extra key accepted for the default organisation (never stored)."
    )
    default_org: str = Field("default", description="Name of the default organisation.")
    auth_cache_seconds: float = Field(
        10.0,
        ge=0,
        description="How long a verified API key is trusted without a database read. "
        "A deleted key stops working after at most this long.",
    )
    log_level: str = Field("info", description="Python logging level of the server.")
    models_file: Path | None = Field(
        None,
        description='JSON file mapping model ids to local Hugging Face folders: {"my/model": "/path"}.',
    )
    providers_file: Path | None = Field(
        None,
        description="JSON file of the provider accounts the gateway routes to (x-tfy-provider-name, "
        "account/model); default $OPENFT_HOME/providers.json. Edited by 'openft providers add|remove'; "
        "a running server re-reads it when it changes.",
    )
    gateway_concurrency: int = Field(
        256, ge=1, description="Requests routed to provider accounts at once (streams included); past it, "
        "429 with Retry-After."
    )
    gateway_concurrency_per_org: int = Field(
        64, ge=1, description="Of gateway_concurrency, the most one organisation may hold at once."
    )
    model_aliases: dict[str, str] = Field(
        default_factory=dict,
        description='Model names that stand for another model, for code written against OpenAI: '
        '{"gpt-4o-mini-2024-07-18": "HuggingFaceTB/SmolLM2-135M-Instruct"}. Jobs, chat completions and '
        "evals that name an alias use its model; jobs keep the alias as their model (and fine-tuned "
        "names start ft:ALIAS:), and /v1/models lists each alias with its model as root.",
    )
    hub: Literal["auto", "off"] = Field(
        "auto",
        description="'auto': model ids that are neither bundled nor local are looked up on the "
        "Hugging Face hub (offline, that fails fast with a 400); 'off': never.",
    )
    hub_timeout_seconds: float = Field(5.0, gt=0, description="Bound on one hub lookup.")
    worker: bool = Field(
        True, description="Run the training worker inside `openft serve` (false: API only)."
    )
    max_concurrent_jobs: int = Field(1, ge=1, description="Jobs one worker trains at once.")
    max_concurrent_eval_runs: int = Field(
        1, ge=0, description="Eval runs one worker executes at once, beside (never instead of) its "
        "max_concurrent_jobs training jobs: a big eval does not hold a job's place. 0: this worker runs no evals."
    )
    warm_start: bool = Field(
        True, description="Local training processes fork from a zygote process that has imported the ML "
        "stack once (started with the worker), instead of importing it again for every job. false: "
        "each job starts a new Python."
    )
    lease_seconds: float = Field(
        30.0, gt=0, description="A running job whose worker sent no heartbeat for this long "
        "is re-queued (and resumes from its last checkpoint)."
    )
    heartbeat_seconds: float = Field(1.0, gt=0, description="Heartbeat and stop-request poll.")
    poll_seconds: float = Field(1.0, gt=0, description="How often an idle worker looks for jobs.")
    stop_grace_seconds: float = Field(
        4.0, ge=0, description="After SIGTERM (cancel) or SIGUSR1 (pause), how long a training "
        "process may take to exit before SIGKILL."
    )
    max_attempts: int = Field(
        3, ge=1, description="Runs a job may start (crashes re-queue it) before it fails."
    )
    executor: Literal["local", "ray"] = Field(
        "local", description="Where workers run jobs: 'local' (a subprocess of the worker) or "
        "'ray' (a Ray cluster, OPENFT_RAY_ADDRESS; pip install openft[ray]). API replicas of a "
        "deployment with Ray workers set 'ray' too: it lets jobs ask for resources."
    )
    ray_address: str = Field(
        "auto", description="Ray cluster to submit jobs to: 'auto' (as Ray reads it: RAY_ADDRESS, "
        "or the cluster started on this machine) or host:port of the head's GCS."
    )
    ray_workers: int = Field(1, ge=1, le=256, description="Default data-parallel workers per job on Ray.")
    ray_cpus_per_worker: float = Field(1.0, gt=0, description="Default CPUs per Ray training worker.")
    ray_gpus_per_worker: float = Field(0.0, ge=0, description="Default GPUs per Ray training worker.")
    ray_placement_timeout_seconds: float = Field(
        600.0, gt=0, description="How long a job may wait queued for the resources it asks for "
        "on the Ray cluster before it fails (resources_unavailable)."
    )
    device: str = Field("auto", description="Training device: auto (GPU if any), cpu, cuda.")
    training_threads: int | None = Field(
        None, ge=1, description="CPU threads of each training process. Default: every core for a "
        "standalone `openft worker`; inside `openft serve`, one core fewer (leaving the API a core)."
    )
    training_nice: int | None = Field(
        None, ge=0, le=19, description="Scheduling niceness of training processes. Default: 0 for "
        "a standalone `openft worker`; 10 inside `openft serve`, so API requests win the CPU."
    )
    generation_timeout_seconds: float = Field(
        120.0, gt=0, description="Longest a chat completion may generate (waiting for the model "
        "included); past it the answer ends with finish_reason 'length'."
    )
    serving_memory_mb: int = Field(
        4096, gt=0, description="Memory budget of the chat-completions model cache (LRU)."
    )
    serving_dtype: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        "auto", description="Precision of the weights chat completions run on: 'auto' is bfloat16 on a GPU "
        "and float32 on the CPU; 'bfloat16' on the CPU halves the bytes a decode step reads (faster where "
        "memory bandwidth is the bound) and 'int8' (CPU only) quarters them (int8 weights per output "
        "channel beside the float32 ones, adapters in float32), each at the cost of answers that may differ "
        "from float32's (docs/serving-profile.md measures both)."
    )
    serving_max_batch: int = Field(
        16, ge=1, le=512, description="Most sequences one base model generates at once (its batch; "
        "a request's n choices count as n). 1 serves one request at a time."
    )
    serving_kv_cache_mb: int = Field(
        8192, gt=0, description="Most memory one base model's key/value cache may take (its running "
        "sequences, each counted at its prompt plus max_tokens); a request that would pass it waits for "
        "running ones to finish, one that could not fit alone generates what fits ('length'), one whose "
        "prompt alone cannot fit is a 400."
    )
    serving_prefix_cache_mb: int = Field(
        256, ge=0, description="Memory one base model may keep of recent prompts' key/value rows, so a "
        "prompt that begins like an earlier one (a system prompt, the earlier turns of a chat) prefills only "
        "the rest; least recently used prompts go first; 0 turns it off."
    )
    serving_max_adapters: int = Field(
        32, ge=1, description="Most fine-tuned (LoRA) models one base keeps loaded for chat; loading one more "
        "unloads the least recently used one no request is using, and when all are in use the request gets "
        "503 server_overloaded (Retry-After)."
    )
    serving_prefill_chunk: int = Field(
        256, ge=0, description="Most prompt tokens one engine step prefills for a long prompt: a longer one "
        "is prefilled in parts, each followed by a decode step of the running answers, so it does not stall "
        "them for its whole prefill; 0 prefills every prompt whole."
    )
    serving_max_queue: int = Field(
        64, ge=0, description="Most chat requests waiting for room in a base model's batch; more are "
        "refused with 503 server_overloaded (and Retry-After)."
    )

    python_grader_timeout_seconds: float = Field(
        60.0, gt=0, description="Longest one call of a python grader's grade() may run; past it the "
        "sample's reward is 0 with python_grader_runtime_error, and the grader's process is restarted."
    )
    python_grader_memory_mb: int = Field(
        2048, ge=64, description="Address-space limit of each process in a python grader's sandbox."
    )
    python_grader_cpu_seconds: float = Field(
        120.0, gt=0, description="CPU time each process in a python grader's sandbox may use over its "
        "life; a sandbox that has spent half of it in grade() calls is replaced before the next call."
    )
    grader_concurrency: int = Field(
        8, ge=1, description="Python grader checks and grader runs (each in its own sandbox) the API "
        "serves at once; past it, 429 with Retry-After."
    )
    grader_concurrency_per_org: int = Field(
        2, ge=1, description="Of grader_concurrency, the most one organisation may hold at once."
    )
    eval_check_concurrency: int = Field(
        2, ge=1, description="Eval run creations whose items are being read and checked at once (each on its own "
        "thread, off the event loop); past it, 429 with Retry-After."
    )
    eval_check_concurrency_per_org: int = Field(
        1, ge=1, description="Of eval_check_concurrency, the most one organisation may hold at once."
    )
    max_queued_eval_runs_per_org: int = Field(
        100, ge=1, description="Eval runs one organisation may have queued or in progress; past it, 429."
    )
    export_concurrency: int = Field(
        2, ge=1, description="Merged exports (each a child process that loads the model) at once; "
        "past it, 429 with Retry-After."
    )
    export_concurrency_per_org: int = Field(
        1, ge=1, description="Of export_concurrency, the most one organisation may hold at once."
    )
    estimate_concurrency: int = Field(
        2, ge=1, description="Job estimates admitted at once (they calibrate one at a time); past it, "
        "429 with Retry-After."
    )
    estimate_concurrency_per_org: int = Field(
        1, ge=1, description="Of estimate_concurrency, the most one organisation may hold at once."
    )
    sandbox_bwrap: str = Field(
        "bwrap", description="The bubblewrap executable (a name on PATH or a path) that builds the "
        "sandboxes python graders run in. Missing or unusable: python graders are refused with a 400."
    )
    sandbox_uid: int = Field(
        61000, ge=1, le=2**32 - 2, description="The uid python graders' sandboxes run as when openft runs "
        "as root (otherwise they run as openft's own user, without capabilities). No other process "
        "on the host may use it."
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="Where jobs with an 'mlflow' integration log (any MLflow tracking URI: "
        "http://mlflow:5000, databricks, sqlite:///path.db). Default: sqlite:///$OPENFT_HOME/mlflow.db."
    )
    webhooks_allow_private: bool = Field(
        False, description="Allow webhook endpoints on loopback, link-local, private and other "
        "non-public addresses (cloud metadata included). Off: such URLs are refused when an "
        "endpoint is created and again before each delivery."
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, description="How long one webhook delivery may take before it counts as failed."
    )
    webhook_retry_base_seconds: float = Field(
        5.0, gt=0, description="Delay before the first retry of a failed webhook delivery; each "
        "further retry waits twice as long (with jitter), at most webhook_retry_max_seconds."
    )
    webhook_retry_max_seconds: float = Field(
        3600.0, gt=0, description="Longest wait between two attempts of one webhook delivery."
    )
    webhook_retry_hours: float = Field(
        72.0, gt=0, description="How long a webhook delivery is retried before it is given up."
    )
    webhook_poll_seconds: float = Field(
        1.0, gt=0, description="How often the webhook dispatcher looks for deliveries that are due."
    )
    grader_embedding_model: Path | None = Field(
        None, description="A local Hugging Face model folder used for text_similarity graders with "
        "evaluation_metric 'cosine' (mean-pooled hidden states). Unset: 'cosine' is refused with a 400."
    )

    @field_validator("model_aliases", mode="after")
    @classmethod
    def _plain_aliases(cls, aliases: dict[str, str]) -> dict[str, str]:
        for alias, target in aliases.items():
            if alias.startswith("ft:") or not alias or not target:
                raise ValueError(f"{alias!r}: an alias is a base model name (not ft:...) with a model to stand for")
            if target in aliases:
                raise ValueError(f"{alias!r} stands for {target!r}, which is an alias itself; name the model")
        return aliases

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        """The async SQLAlchemy URL actually used (driver filled in)."""
        url = self.database_url or f"sqlite:///{self.home / 'openft.db'}"
        return to_async_url(url, self.sqlite_driver)

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str(self.home / "blobs")

    @property
    def resolved_mlflow_tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def storage_options(self) -> dict[str, object]:
        """fsspec options of the blob store (the S3 endpoint, when one is set)."""
        if self.s3_endpoint_url and self.resolved_storage_url.startswith(("s3://", "s3a://")):
            return {"client_kwargs": {"endpoint_url": self.s3_endpoint_url}}
        return {}

    @property
    def models_dir(self) -> Path:
        """Converted and downloaded base models."""
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        """Local copies of model folders kept in a remote blob store (S3),
        fetched once (``BlobStore.folder``); a training process finds the same
        folder beside ``models_dir`` (``RunConfig.cache_dir``)."""
        return self.home / "cache"

    @property
    def resolved_providers_file(self) -> Path:
        return self.providers_file or self.home / "providers.json"

    @property
    def api_key_file(self) -> Path:
        return self.home / "api-key"

    def training_share(self, colocated: bool) -> tuple[int | None, int]:
        """(threads, niceness) of training processes. Next to the API, a
        training process takes one core fewer than the host has and runs at
        niceness 10, so a busy API keeps answering quickly and training keeps
        most of its pace (measured in ``bench/colocated.py``); alone, it takes
        everything (threads None)."""
        cores = os.cpu_count() or 1
        threads = self.training_threads or (max(1, cores - 1) if colocated else None)
        nice = self.training_nice if self.training_nice is not None else (COLOCATED_NICE if colocated else 0)
        return threads, nice


COLOCATED_NICE = 10
"""Niceness of a training process next to the API (unless ``OPENFT_TRAINING_NICE``)."""


def to_async_url(url: str, sqlite_driver: str = "openft") -> str:
    """Map a plain database URL to its asyncio driver (psycopg; for SQLite,
    openft's one-hop aiosqlite adapter, or SQLAlchemy's stock one with
    ``sqlite_driver="aiosqlite"``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: {url!r}")
    sqlite = "sqlite+openft_aiosqlite" if sqlite_driver == "openft" else "sqlite+aiosqlite"
    driver_for = {
        "sqlite": sqlite,  # see openft.store.sqlite
        "sqlite+aiosqlite": sqlite,
        "postgresql": "postgresql+psycopg",
        "postgres": "postgresql+psycopg",
        "postgresql+psycopg2": "postgresql+psycopg",
        "postgresql+asyncpg": "postgresql+psycopg",
    }
    return f"{driver_for.get(scheme, scheme)}://{rest}"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; keyword overrides win (for tests and the CLI)."""
    return Settings(**overrides)  # type: ignore[arg-type]
