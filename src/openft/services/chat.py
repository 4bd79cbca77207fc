"""Chat completions: which weights a model id names (base, fine-tuned, or
checkpoint, scoped by organisation), fetched from blob storage once into
``$OPENFT_HOME/cache``, and the completion objects built around the engine."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import anyio

from openft.config import Settings
from openft.errors import NotFound
from openft.schemas.chat import AssistantMessage, ChatCompletion, Choice, Usage
from openft.serving.engine import Completion, ModelRef
from openft.services.models import ModelRegistry
from openft.store.blobs import BlobStore
from openft.store.queries import jobs as job_queries
from openft.store.queries import models as model_queries
from openft.store.queries.pagination import Db
from openft.weights import ensure_bundled


async def resolve(
    db: Db, settings: Settings, registry: ModelRegistry, blobs: BlobStore, org_id: str, model_id: str
) -> ModelRef:
    tuned = await model_queries.read_fine_tuned_model(db, org_id, model_id)
    checkpoint = None if tuned else await job_queries.read_checkpoint_model(db, org_id, model_id)
    if tuned is not None or checkpoint is not None:
        storage_key, base_model = (tuned.storage_key, tuned.base_model) if tuned else checkpoint
        folder = await anyio.to_thread.run_sync(_local_copy, settings, blobs, storage_key)
        if not (folder / "adapter_config.json").exists():  # a full fine-tune
            return ModelRef(model_id, folder)
        return ModelRef(model_id, await _base_path(db, settings, registry, base_model, model_id), folder)
    return ModelRef(model_id, await _base_path(db, settings, registry, model_id, model_id))


async def _base_path(db: Db, settings: Settings, registry: ModelRegistry, base: str, asked: str) -> Path:
    source = await registry.find_base(db, base)
    if source is None:
        raise NotFound("model", asked, param="model")
    if source.kind == "bundled":
        return await anyio.to_thread.run_sync(ensure_bundled, settings.models_dir)
    return Path(source.path or "")


def _local_copy(settings: Settings, blobs: BlobStore, key: str) -> Path:
    if (local := blobs.local_path(key)) is not None:
        return local
    target = settings.home / "cache" / key
    if not (target / ".complete").exists():
        target.mkdir(parents=True, exist_ok=True)
        blobs.get_dir(key, str(target))
        (target / ".complete").touch()
    return target


def completion_object(model: str, prompt_tokens: int, completions: list[Completion]) -> ChatCompletion:
    completion_tokens = sum(c.completion_tokens for c in completions)
    return ChatCompletion(
        id=new_completion_id(),
        created=int(time.time()),
        model=model,
        choices=[
            Choice(index=i, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason)  # type: ignore[arg-type]
            for i, c in enumerate(completions)
        ],
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18)
