"""One resolver turns a base model id into weights for the jobs API, the
worker, serving and training (``openft.weights.resolve_base``), and one
(``ModelRegistry.resolve``) every model id an organisation uses into folders."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from openft.config import load_settings
from openft.errors import NotFound
from openft.services.models import ModelRegistry
from openft.store.blobs import BlobStore
from openft.store.db import create_engine, create_session_factory, migrate
from openft.weights import BUNDLED_MODEL, BaseWeights

pytestmark = pytest.mark.api


async def _resolve(tmp_path: Path, hub: str) -> dict[str, BaseWeights | None]:
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps({"local/listed": "/models/listed"}))
    settings = load_settings(home=tmp_path, models_file=models_file, hub=hub)
    engine = create_engine(settings.resolved_database_url)
    registry = ModelRegistry(settings, BlobStore(settings.resolved_storage_url))
    try:
        await migrate(engine)
        async with create_session_factory(engine)() as session:
            return {
                "bundled": await registry.weights(session, BUNDLED_MODEL),
                "listed": await registry.weights(session, "local/listed"),
                "hub, asked directly": await registry.weights(session, "someone/model"),
                "hub, base of a fine-tuned model": await registry.weights(
                    session, "someone/model", known_base=True),
            }
    finally:
        await engine.dispose()


def test_one_resolver_for_every_kind_of_base(tmp_path: Path) -> None:
    found = asyncio.run(_resolve(tmp_path, hub="auto"))
    assert found == {
        "bundled": BaseWeights(BUNDLED_MODEL, "bundled"),
        "listed": BaseWeights("local/listed", "local", "/models/listed"),
        "hub, asked directly": None,  # no network lookup on a chat request
        # A LoRA trained on a hub model is served on that hub base.
        "hub, base of a fine-tuned model": BaseWeights("someone/model", "hub"),
    }
    assert found["listed"].local_path(tmp_path) == Path("/models/listed")


def test_hub_off_never_resolves_to_the_hub(tmp_path: Path) -> None:
    assert asyncio.run(_resolve(tmp_path, hub="off"))["hub, base of a fine-tuned model"] is None


async def _resolve_tuned(tmp_path: Path) -> dict[str, object]:
    """Two fine-tuned models in a remote store (fsspec's in-memory one): a
    LoRA adapter of a listed base and a full fine-tune."""
    from datetime import UTC, datetime

    from openft.domain import Method, MethodType
    from openft.services import auth
    from openft.store.queries import models as model_queries
    from openft.store.tables import FineTunedModel
    from openft.training.config import RunConfig

    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps({"local/listed": "/models/listed"}))
    settings = load_settings(home=tmp_path, models_file=models_file, storage_url=f"memory://{tmp_path.name}")
    blobs = BlobStore(settings.resolved_storage_url)
    for key, name in (("models/ftjob-a", "adapter_config.json"), ("models/ftjob-b", "config.json")):
        with blobs.writer(f"{key}/{name}") as out:
            out.write(b"{}")
    fetched: list[str] = []
    get_dir = blobs.get_dir
    blobs.get_dir = lambda key, local: (fetched.append(key), get_dir(key, local))[1]  # type: ignore[method-assign]

    engine = create_engine(settings.resolved_database_url)
    registry = ModelRegistry(settings, blobs)
    try:
        await migrate(engine)
        async with create_session_factory(engine)() as session, session.begin():
            org_id = await auth.ensure_org(session, "acme")
            for model_id, key in (("ft:local/listed:acme::a", "models/ftjob-a"),
                                  ("ft:local/listed:acme::b", "models/ftjob-b")):
                await model_queries.create_fine_tuned_model(session, FineTunedModel(
                    id=model_id, org_id=org_id, job_id=f"ftjob-{model_id[-1]}", base_model="local/listed",
                    storage_key=key, created_at=datetime.now(UTC)))
            lora = await registry.resolve(session, org_id, "ft:local/listed:acme::a")
            again = await registry.resolve(session, org_id, "ft:local/listed:acme::a")
            full = await registry.resolve(session, org_id, "ft:local/listed:acme::b")
            base = await registry.resolve(session, org_id, "local/listed")
            other_org = await auth.ensure_org(session, "other")
            try:
                await registry.resolve(session, other_org, "ft:local/listed:acme::a")
                hidden = False
            except NotFound:
                hidden = True
    finally:
        await engine.dispose()
    run = RunConfig(job_id="ftjob-c", base={"id": "local/listed", "kind": "local", "path": "/models/listed"},
                    models_dir=str(settings.models_dir), storage_url=settings.resolved_storage_url,
                    training_file_key="k", validation_file_key=None, method=Method(MethodType.SUPERVISED), seed=0)
    return {"lora": lora, "again": again, "full": full, "base": base, "hidden": hidden, "fetched": fetched,
            "training": {key: run.model_folder(blobs, key) for key in ("models/ftjob-a", "models/ftjob-b")}}


def test_fine_tuned_ids_resolve_to_one_folder_for_chat_export_judges_and_training(tmp_path: Path) -> None:
    """``ModelRegistry.resolve`` is what chat, export and graders' judges call;
    a training process given the same model's blob key (a job continuing it,
    an RFT judge) finds the same folder, fetched from the store once."""
    found = asyncio.run(_resolve_tuned(tmp_path))
    cache = tmp_path / "cache"
    lora, full, base = found["lora"], found["full"], found["base"]
    assert (lora.base_path, lora.adapter_path) == (Path("/models/listed"), cache / "models/ftjob-a")
    assert found["again"] == lora and found["fetched"] == ["models/ftjob-a", "models/ftjob-b"]  # once each
    assert (full.base_path, full.adapter_path) == (cache / "models/ftjob-b", None)  # full weights, no adapter
    assert (base.base_path, base.adapter_path) == (Path("/models/listed"), None)
    assert found["hidden"]  # another organisation's id resolves to nothing
    assert found["training"] == {"models/ftjob-a": lora.adapter_path, "models/ftjob-b": full.base_path}
