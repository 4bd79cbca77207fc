"""API keys, organisations and tenant isolation."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys

import httpx
import openai
import pytest

from support import SMOLLM, Server, Tenant, chat_file

pytestmark = pytest.mark.api


class TestKeys:
    @pytest.mark.parametrize(
        "headers",
        [{}, {"Authorization": "Bearer sk-openft-wrong"}, {"Authorization": "Basic abc"},
         {"Authorization": "Bearer"}],
    )
    def test_missing_or_wrong_key_is_401_on_every_prefix(self, server: Server, headers: dict) -> None:
        for path in ("/v1/files", "/api/llm/fine_tuning/jobs", "/v1/fine_tuning/jobs/ftjob-x/events"):
            response = httpx.get(server.url + path, headers=headers)
            assert response.status_code == 401
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error" and error["message"]

    def test_me_names_the_keys_organisation(self, server: Server, tenant: Tenant, other_tenant: Tenant) -> None:
        """openft extension GET /v1/me: the dashboard shows whose key it signed in with."""
        for who in (tenant, other_tenant):
            with who.http() as http:
                me = http.get("/me").json()
            assert me["object"] == "organization" and me["name"] == who.org and me["id"].startswith("org-")
        assert httpx.get(f"{server.url}/v1/me").status_code == 401

    def test_health_needs_no_key(self, server: Server) -> None:
        assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}

    def test_cli_creates_key_on_last_line(self, server: Server) -> None:
        env = dict(server.env)
        result = subprocess.run(
            [sys.executable, "-m", "openft", "keys", "create", "--org", "acme"],
            env=env, capture_output=True, text=True, check=True,
        )
        key = result.stdout.strip().splitlines()[-1]
        assert key.startswith("sk-openft-") and len(key) > 40
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        assert client.files.list().data == []
        # A second key for the same organisation sees the same objects.
        again = subprocess.run(
            [sys.executable, "-m", "openft", "keys", "create", "--org", "acme"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        made = client.files.create(file=("a.jsonl", io.BytesIO(chat_file(1))), purpose="fine-tune")
        other = openai.OpenAI(base_url=f"{server.url}/v1", api_key=again, max_retries=0)
        assert other.files.retrieve(made.id).id == made.id

    def test_env_key_belongs_to_default_org(self, server: Server) -> None:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
        made = client.files.create(file=("a.jsonl", io.BytesIO(chat_file(1))), purpose="fine-tune")
        assert client.files.retrieve(made.id).id == made.id


class TestFirstStart:
    def test_first_start_writes_a_private_key_once(self, tmp_path) -> None:
        server = Server(home=tmp_path / "home", api_key="")
        try:
            server.start()
            key_file = tmp_path / "home" / "api-key"
            key = key_file.read_text().strip()
            assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
            assert key in server.log()
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
            assert client.files.list().data == []
            server.restart()
            assert key_file.read_text().strip() == key
            assert key not in server.log()
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
            assert client.files.list().data == []
        finally:
            server.stop()


class TestIsolation:
    def test_other_org_objects_are_404_everywhere(self, tenant: Tenant, other_tenant: Tenant) -> None:
        file_id = tenant.sdk.files.create(file=("t.jsonl", io.BytesIO(chat_file(12))), purpose="fine-tune").id
        job_id = tenant.sdk.fine_tuning.jobs.create(model=SMOLLM, training_file=file_id).id
        with other_tenant.http() as http:
            for method, path in [
                ("GET", f"/files/{file_id}"),
                ("GET", f"/files/{file_id}/content"),
                ("DELETE", f"/files/{file_id}"),
                ("GET", f"/fine_tuning/jobs/{job_id}"),
                ("POST", f"/fine_tuning/jobs/{job_id}/cancel"),
                ("POST", f"/fine_tuning/jobs/{job_id}/pause"),
                ("POST", f"/fine_tuning/jobs/{job_id}/resume"),
                ("GET", f"/fine_tuning/jobs/{job_id}/events"),
                ("GET", f"/fine_tuning/jobs/{job_id}/checkpoints"),
            ]:
                theirs = http.request(method, path)
                missing = http.request(method, path.replace(file_id, "file-nope").replace(job_id, "ftjob-nope"))
                assert theirs.status_code == 404, (method, path)
                assert theirs.json()["error"]["code"] == missing.json()["error"]["code"]
            assert http.get("/files").json()["data"] == []
            assert http.get("/fine_tuning/jobs").json()["data"] == []
            assert http.get("/files", params={"after": file_id}).json()["error"]["param"] == "after"
            stolen = http.post("/fine_tuning/jobs", json={"model": SMOLLM, "training_file": file_id})
            assert stolen.status_code == 400
            assert stolen.json()["error"]["param"] == "training_file"
        # The owner's objects are untouched by the attempts.
        assert tenant.sdk.fine_tuning.jobs.retrieve(job_id).status == "queued"
        assert tenant.sdk.files.retrieve(file_id).id == file_id
