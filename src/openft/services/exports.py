"""Exporting a fine-tuned model or checkpoint (``GET /models/{model}/export``):
which folder to stream, with what rewritten, and the merge when asked for.
The archive itself is ``openft.export.tar_stream``."""

from __future__ import annotations

import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from openft.config import Settings
from openft.errors import Forbidden, InvalidRequest, NotFound, ServerFailure
from openft.export import adapter_config, tar_stream
from openft.services.capacity import Capacity
from openft.services.chat import ChatService
from openft.store.queries import models as model_queries
from openft.store.queries.reads import Reader


@dataclass
class Export:
    folder: Path
    name: str
    """The archive's top folder (and file name): the model id made path-safe."""
    kind: str
    """``adapter``, ``merged`` or ``full``."""
    rewrite: dict[str, bytes] = field(default_factory=dict)
    temporary: bool = False
    """``folder`` was made for this export and goes when the stream ends."""

    def stream(self) -> Iterator[bytes]:
        try:
            yield from tar_stream(self.folder, self.name, self.rewrite)
        finally:
            if self.temporary:
                shutil.rmtree(self.folder, ignore_errors=True)


def archive_name(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("._") or "model"


async def prepare(settings: Settings, chat: ChatService, reader: Reader, capacity: Capacity, org_id: str,
                  model_id: str, *, merged: bool) -> Export:
    """What to stream for ``model_id`` (a fine-tuned model or checkpoint of the
    organisation). A merge holds a slot of the exports' ``capacity`` (429 past
    the organisation's share) and no database connection."""
    async with reader() as db:
        tuned = await model_queries.read_tuned_weights(db, org_id, model_id, shared=False)
        if tuned is None:
            if await chat.registry.weights(db, model_id) is not None:
                raise InvalidRequest(
                    f"{model_id} is a base model; only fine-tuned models and checkpoints can be exported.",
                    param="model", code="model_not_exportable",
                )
            raise NotFound("model", model_id, param="model")
        if shared := await model_queries.shared_ancestor(db, org_id, tuned.job_id):
            raise Forbidden(f"{model_id} was trained from {shared}, a checkpoint another organisation shared with "
                            "yours: shared weights are used (chat, evals, jobs), never exported.", param="model",
                            code="model_not_exportable")
        ref = await chat.registry.resolve(db, org_id, model_id)
    name = archive_name(model_id)
    if ref.adapter_path is None:
        return Export(ref.base_path, name, "full")
    if not merged:
        return Export(ref.adapter_path, name, "adapter",
                      {"adapter_config.json": adapter_config(ref.adapter_path, tuned.base_model)})
    async with capacity.slot(org_id):
        out = settings.home / "exports" / f"{name}-{secrets.token_hex(4)}"
        out.mkdir(parents=True)
        result = await anyio.run_process(
            [sys.executable, "-m", "openft.export", str(ref.base_path), str(ref.adapter_path), str(out)],
            check=False,
        )
    if result.returncode != 0:
        shutil.rmtree(out, ignore_errors=True)
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ServerFailure(f"Merging {model_id} into its base model failed: {tail[0]}")
    return Export(out, name, "merged", temporary=True)
