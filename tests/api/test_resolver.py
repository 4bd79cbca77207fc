"""One resolver turns a base model id into weights for the jobs API, the
worker, serving and training (``openft.weights.resolve_base``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from openft.config import load_settings
from openft.services.models import ModelRegistry
from openft.store.db import create_engine, create_session_factory, migrate
from openft.weights import BUNDLED_MODEL, BaseWeights

pytestmark = pytest.mark.api


async def _resolve(tmp_path: Path, hub: str) -> dict[str, BaseWeights | None]:
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps({"local/listed": "/models/listed"}))
    settings = load_settings(home=tmp_path, models_file=models_file, hub=hub)
    engine = create_engine(settings.resolved_database_url)
    registry = ModelRegistry(settings)
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
