"""Models API and the base-model registry against a real server."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from datetime import UTC, datetime

import openai
import pytest

from openft.config import load_settings
from openft.store.db import create_engine, create_session_factory
from openft.store.tables import FineTunedModel

from support import SMOLLM, Server, Tenant, assert_matches_schema, chat_file

pytestmark = pytest.mark.api


def add_fine_tuned_model(server: Server, org_id: str, model_id: str) -> None:
    async def insert() -> None:
        engine = create_engine(load_settings(**server.settings_env()).resolved_database_url)
        async with create_session_factory(engine)() as session, session.begin():
            session.add(FineTunedModel(
                id=model_id, org_id=org_id, job_id="ftjob-x", base_model=SMOLLM,
                storage_key=f"models/{org_id}/x", created_at=datetime.now(UTC)))
        await engine.dispose()

    asyncio.run(insert())


class TestModelsApi:
    def test_bundled_model_is_listed(self, tenant: Tenant) -> None:
        models = tenant.sdk.models.list().data
        assert SMOLLM in [m.id for m in models]
        assert tenant.sdk.models.retrieve(SMOLLM).owned_by == "openft"
        with tenant.http() as http:
            assert_matches_schema(http.get("/models").json(), "ListModelsResponse")
            assert_matches_schema(http.get(f"/models/{SMOLLM}").json(), "Model")

    def test_fine_tuned_models_are_scoped_and_deletable(self, tenant: Tenant, other_tenant: Tenant) -> None:
        org_id = tenant.sdk.fine_tuning.jobs.create(
            model=SMOLLM,
            training_file=tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(10))), purpose="fine-tune").id,
        ).organization_id
        model_id = f"ft:{SMOLLM}:{tenant.org}:demo:abc123"
        add_fine_tuned_model(tenant.server, org_id, model_id)
        assert tenant.sdk.models.retrieve(model_id).owned_by == org_id
        assert model_id in [m.id for m in tenant.sdk.models.list()]
        assert model_id not in [m.id for m in other_tenant.sdk.models.list()]
        with pytest.raises(openai.NotFoundError):
            other_tenant.sdk.models.retrieve(model_id)
        with pytest.raises(openai.NotFoundError):
            other_tenant.sdk.models.delete(model_id)
        with tenant.http() as http:
            deleted = http.delete(f"/models/{model_id}").json()
        assert_matches_schema(deleted, "DeleteModelResponse")
        assert deleted == {"id": model_id, "object": "model", "deleted": True}
        with pytest.raises(openai.NotFoundError):
            tenant.sdk.models.retrieve(model_id)

    def test_base_models_cannot_be_deleted(self, tenant: Tenant) -> None:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            tenant.sdk.models.delete(SMOLLM)
        assert caught.value.body["param"] == "model"
        with pytest.raises(openai.NotFoundError):
            tenant.sdk.models.delete("ft:nothing:here")


class TestRegistry:
    def test_local_folder_can_be_registered_and_trained_on(self, make_server, tiny_model_dir) -> None:
        server: Server = make_server("sqlite")
        result = subprocess.run(
            [sys.executable, "-m", "openft", "models", "add", "local/tiny-llama", str(tiny_model_dir)],
            env=server.env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        tenant = Tenant(server, "default", server.api_key)
        assert "local/tiny-llama" in [m.id for m in tenant.sdk.models.list()]
        training = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(10))), purpose="fine-tune").id
        job = tenant.sdk.fine_tuning.jobs.create(model="local/tiny-llama", training_file=training)
        assert job.model == "local/tiny-llama"

    def test_models_add_rejects_a_folder_without_a_model(self, server: Server, tmp_path) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "openft", "models", "add", "x/y", str(tmp_path)],
            env=server.env, capture_output=True, text=True)
        assert result.returncode != 0
        assert "config.json" in result.stderr

    def test_unknown_model_offline_is_a_fast_400(self, tenant: Tenant) -> None:
        training = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(10))), purpose="fine-tune").id
        started = time.monotonic()
        with pytest.raises(openai.BadRequestError) as caught:
            tenant.sdk.fine_tuning.jobs.create(model="some-org/not-a-real-model-xyz", training_file=training)
        assert time.monotonic() - started < 10  # bounded by OPENFT_HUB_TIMEOUT_SECONDS, never a hang
        assert caught.value.body["param"] == "model"
        assert caught.value.body["code"] == "model_not_found"
        assert SMOLLM in caught.value.body["message"]


@pytest.mark.filterwarnings("ignore:The Evals API is deprecated")
def test_an_openai_model_name_mapped_by_the_operator_works_unchanged(make_training_server) -> None:
    """OPENFT_MODEL_ALIASES: code that names gpt-4o-mini creates jobs, evals and chats on the mapped model."""
    server = make_training_server(OPENFT_WORKER="false",
                                  OPENFT_MODEL_ALIASES='{"gpt-4o-mini-2024-07-18": "local/tiny"}')
    tenant = Tenant(server, "default", server.api_key)
    alias = "gpt-4o-mini-2024-07-18"
    listed = {m.id: m for m in tenant.sdk.models.list().data}
    assert listed[alias].model_dump()["root"] == "local/tiny"
    assert tenant.sdk.models.retrieve(alias).model_dump()["root"] == "local/tiny"

    training = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune").id
    job = tenant.sdk.fine_tuning.jobs.create(model=alias, training_file=training)
    assert job.model == alias and job.status in ("validating_files", "queued")
    answer = tenant.sdk.chat.completions.create(model=alias, messages=[{"role": "user", "content": "Hi"}],
                                                max_completion_tokens=2)
    assert answer.model == alias and answer.usage.completion_tokens > 0  # type: ignore[union-attr]
    evaluation = tenant.sdk.evals.create(
        data_source_config={"type": "custom", "item_schema": {"type": "object"}},
        testing_criteria=[{"type": "string_check", "name": "x", "input": "{{sample.output_text}}",
                           "reference": "x", "operation": "eq"}])
    run = tenant.sdk.evals.runs.create(evaluation.id, data_source={  # type: ignore[arg-type]
        "type": "completions", "model": alias, "source": {"type": "file_content", "content": [{"item": {}}]},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "Hi"}]}})
    assert run.model == alias and run.status == "queued"
    with pytest.raises(openai.BadRequestError) as refused:  # a name that is not mapped stays unknown
        tenant.sdk.fine_tuning.jobs.create(model="gpt-4.1-nano-2025-04-14", training_file=training)
    assert refused.value.body["param"] == "model"  # type: ignore[index]
